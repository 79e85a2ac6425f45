"""clap4cl: continual learning for vision-language models on Avalanche and open_clip.

The core library, in the order data flows through it: ``encoders`` (CLIP loading,
prompts, class text features), ``features`` (the frozen-feature cache), ``models``
(CLAP, CLIP-Adapter, zero-shot, multi-encoder, the multimodal protocol) and
``evaluation`` (scores, metrics, Avalanche plugin metrics). ``runner`` assembles runs
from a config and is the only layer above ``strategies`` and ``scenarios``.
Public names are imported on first use, so ``import clap4cl`` is cheap.
"""
import warnings as _warnings

from clap4cl._lazy import lazy_exports

# Avalanche imports qpsolvers (for GEM, unused here), which warns at import time when pip
# picked no solver wheel; that line would also break the CLI's one-line error contract.
_warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning)

__version__ = "0.2.0"

_EXPORTS = {
    "CLIPAdapterModel": "clap4cl.models.adapter",
    "ClapModel": "clap4cl.models.clap",
    "ClapOutput": "clap4cl.models.clap",
    "ClassTextFeatures": "clap4cl.encoders.text_features",
    "ConfigError": "clap4cl.errors",
    "DataNotFoundError": "clap4cl.errors",
    "FeatureCache": "clap4cl.features.cache",
    "FrozenCLIP": "clap4cl.encoders.backbones",
    "MultiEncoderClassifier": "clap4cl.models.multi_encoder",
    "MultimodalClassifier": "clap4cl.models.multimodal",
    "MultimodalModule": "clap4cl.models.multimodal",
    "UserError": "clap4cl.errors",
    "ZeroShotClassifier": "clap4cl.models.zeroshot",
    "class_text_features": "clap4cl.encoders.prompts",
    "load_clip": "clap4cl.encoders.backbones",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
