"""Avalanche strategies and plugins of clap4cl."""
from .attribution import AttributionRegPlugin
from .build import METHODS, build_clap_model, build_from_config, build_memory
from .clap import CLAP, clap_loss
from .clip_adapter import CLIPAdapter
from .cml import CMLPlugin
from .exemplars import ClassBalancedMemory
from .guards import NonFiniteLossGuard
from .mad import MADPlugin
from .mar import MARPlugin
from .modality_dropout import ModalityDropoutPlugin
from .plugins import PLUGINS, build_plugins
from .selectors import (SELECTORS, FirstKExemplarsSelection, HerdingSelection,
                        UncertaintySelection, herding_order, make_selector)
from .replay_template import ReplayTemplate, warmup_cosine
from .zeroshot import ZeroShotCLIP, ZeroShotClassifier

__all__ = ["AttributionRegPlugin", "CLAP", "CLIPAdapter", "CMLPlugin", "ClassBalancedMemory",
           "FirstKExemplarsSelection", "HerdingSelection", "MADPlugin", "MARPlugin", "METHODS",
           "ModalityDropoutPlugin", "NonFiniteLossGuard", "PLUGINS", "UncertaintySelection",
           "herding_order", "ReplayTemplate", "SELECTORS", "ZeroShotCLIP", "ZeroShotClassifier",
           "build_clap_model", "build_from_config", "build_memory", "build_plugins", "clap_loss",
           "make_selector", "warmup_cosine"]
