"""Allowed values of the models' string options (no torch: config validation reads them).

See docs/choices.md for what each value means.
"""

# Context of CLAP's visual-guided attention: the whole batch, or each image alone
# (``ClapModel(train_context=..., eval_context=...)``, ``clap.train_context``).
CONTEXTS = ("batch", "per_image")
# Classes whose text statistics initialise a new CLAP head (``clap.language_init_classes``).
LANGUAGE_INIT_CLASSES = ("all", "new")
# How ``MultiEncoderClassifier`` fuses its modalities, and fills a removed one under concat.
FUSIONS = ("late", "concat")
FILLS = ("zeros", "mean", "learned")
# (superset, subset) modality pairs compared by CML and the modality metrics.
PAIR_POLICIES = ("leave_one_out", "nested_chain", "all_nested")
# How the prompt learner runs the frozen text transformer (``coop.text_pass``): the shared
# prefix once, every prompt to its end-of-text token, or all 77 tokens as the reference.
TEXT_PASSES = ("shared_prefix", "truncated", "full")
