"""Avalanche strategies (``CLAP``, ``CLIPAdapter``, ``ZeroShotCLIP``, replay) and the
regulariser plugins (``strategies.plugins``). Names are imported on first use.

Strategies never read the run config: ``clap4cl.runner.assemble`` builds them from it.
"""
from clap4cl._lazy import lazy_exports

_EXPORTS = {
    "CLAP": "strategies.clap",
    "clap_loss": "strategies.clap",
    "CLIPAdapter": "strategies.clip_adapter",
    "CoOp": "strategies.coop",
    "ClapCoop": "strategies.coop",
    "ClassBalancedMemory": "strategies.exemplars",
    "NonFiniteLossGuard": "strategies.guards",
    "ReplayTemplate": "strategies.replay_template",
    "warmup_cosine": "strategies.replay_template",
    "SELECTORS": "strategies.selectors",
    "FirstKExemplarsSelection": "strategies.selectors",
    "HerdingSelection": "strategies.selectors",
    "UncertaintySelection": "strategies.selectors",
    "herding_order": "strategies.selectors",
    "make_selector": "strategies.selectors",
    "ZeroShotCLIP": "strategies.zeroshot",
    "MultimodalStep": "strategies.multimodal_step",
    "MultimodalNaive": "strategies.multimodal_step",
    "multimodal": "strategies.multimodal_step",
    "ZeroShotClassifier": "clap4cl.models.zeroshot",
    "AttributionRegPlugin": "strategies.plugins.attribution",
    "CMLPlugin": "strategies.plugins.cml",
    "MADPlugin": "strategies.plugins.mad",
    "MARPlugin": "strategies.plugins.mar",
    "ModalityDropoutPlugin": "strategies.plugins.modality_dropout",
    "PLUGINS": "strategies.plugins.registry",
    "build_plugins": "strategies.plugins.registry",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
