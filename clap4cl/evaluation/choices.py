"""Allowed values of the evaluation's string options (no torch: config validation reads them).

See docs/choices.md for what each value means.
"""

# Modality pairs of the violation ranking rate (``eval.reliability_pairs``).
METRIC_PAIRS = ("leave_one_out", "all_nested")
