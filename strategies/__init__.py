"""Avalanche strategies and plugins of clap4cl."""
from .zeroshot import ZeroShotCLIP, ZeroShotClassifier

__all__ = ["ZeroShotCLIP", "ZeroShotClassifier"]
