"""Plugins usable with any Avalanche strategy: CML, MAR, MAD, attribution regularisation
and modality dropout (one file each), and the ``plugins:`` config registry."""
from clap4cl._lazy import lazy_exports

_EXPORTS = {
    "AttributionRegPlugin": "strategies.plugins.attribution",
    "CMLPlugin": "strategies.plugins.cml",
    "MADPlugin": "strategies.plugins.mad",
    "MARPlugin": "strategies.plugins.mar",
    "ModalityDropoutPlugin": "strategies.plugins.modality_dropout",
    "RegularizerPlugin": "strategies.plugins.regularizer",
    "PLUGINS": "strategies.plugins.registry",
    "build_plugins": "strategies.plugins.registry",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
