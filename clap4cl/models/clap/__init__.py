"""CLAP4CLIP: ``layers`` (VGA, task heads), ``model`` (ClapModel, ClapOutput), ``losses``."""
from clap4cl.models.clap.layers import (CONTEXTS, SIGMA_FLOOR, SIGMA_SCALE, GaussianTaskHeads,
                                        VisualGuidedAttention, task_block_mask)
from clap4cl.models.clap.losses import (kl_loss, kl_to_standard_normal, language_init,
                                        language_loss)
from clap4cl.models.clap.model import LANGUAGE_INIT_CLASSES, ClapModel, ClapOutput

__all__ = ["CONTEXTS", "LANGUAGE_INIT_CLASSES", "SIGMA_FLOOR", "SIGMA_SCALE", "ClapModel",
           "ClapOutput", "GaussianTaskHeads", "VisualGuidedAttention", "kl_loss",
           "kl_to_standard_normal", "language_init", "language_loss", "task_block_mask"]
