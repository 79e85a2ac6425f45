"""clap4cl: continual learning for vision-language models on Avalanche and open_clip.

Core library (no training loops): CLIP loading, prompts and class text features, the
frozen-feature cache, model modules, metrics, configuration and the CLI.
"""
import warnings as _warnings

# Avalanche imports qpsolvers (for GEM, unused here), which warns at import time when pip
# picked no solver wheel; that line would also break the CLI's one-line error contract.
_warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning)

from .adapter_model import CLIPAdapterModel  # noqa: E402
from .backbones import FrozenCLIP, load_clip
from .clap_model import ClapModel, ClapOutput
from .errors import ConfigError, DataNotFoundError, UserError
from .feature_cache import FeatureCache
from .multi_encoder_model import MultiEncoderClassifier
from .multimodal import MultimodalClassifier, MultimodalModule
from .prompts import class_text_features
from .text_features import ClassTextFeatures

__version__ = "0.1.0"

__all__ = ["CLIPAdapterModel", "ClapModel", "ClapOutput", "ClassTextFeatures", "ConfigError",
           "DataNotFoundError", "FeatureCache", "FrozenCLIP", "MultiEncoderClassifier",
           "MultimodalClassifier", "MultimodalModule", "UserError", "class_text_features",
           "load_clip"]
