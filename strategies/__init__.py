"""Avalanche strategies and plugins of clap4cl."""
from .build import METHODS, build_clap_model, build_from_config, build_memory
from .clap import CLAP, clap_loss
from .clip_adapter import CLIPAdapter
from .exemplars import ClassBalancedMemory
from .guards import NonFiniteLossGuard
from .selectors import (SELECTORS, FirstKExemplarsSelection, HerdingSelection,
                        UncertaintySelection, herding_order, make_selector)
from .replay_template import ReplayTemplate, warmup_cosine
from .zeroshot import ZeroShotCLIP, ZeroShotClassifier

__all__ = ["CLAP", "CLIPAdapter", "ClassBalancedMemory", "FirstKExemplarsSelection",
           "HerdingSelection", "METHODS", "NonFiniteLossGuard", "UncertaintySelection", "herding_order",
           "ReplayTemplate", "SELECTORS", "ZeroShotCLIP", "ZeroShotClassifier",
           "build_clap_model", "build_from_config", "build_memory", "clap_loss", "make_selector",
           "warmup_cosine"]
