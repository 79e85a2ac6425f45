"""Allowed values of the strategies' string options (no torch: config validation reads them).

See docs/choices.md for what each value means.
"""

# Budget policy of ``ClassBalancedMemory`` (``memory.policy``).
MEMORY_POLICIES = ("fixed_total", "per_class")

# Exemplar selectors (``memory.selector``): name -> the "module:factory" that builds one
# (``strategies.selectors.make_selector``).
SELECTORS = {
    "random": "avalanche.training.storage_policy:RandomExemplarsSelectionStrategy",
    "reference_first_k": "strategies.selectors:FirstKExemplarsSelection",
    "herding": "strategies.selectors:HerdingSelection",
    "herding_logits": "strategies.selectors:herding_logits_selection",
    "entropy": "strategies.selectors:entropy_selection",
    "energy": "strategies.selectors:energy_selection",
    "variance": "strategies.selectors:variance_selection",
    "var_entropy": "strategies.selectors:var_entropy_selection",
    "distance": "strategies.selectors:distance_selection",
}
