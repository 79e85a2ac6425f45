"""Allowed values of the encoders' string options (no torch: config validation reads them).

See docs/choices.md for what each value means.
"""

# Precision of the frozen CLIP encoders (``load_clip(precision=...)``, ``backbone.precision``).
PRECISIONS = ("fp32", "fp16", "bf16")
