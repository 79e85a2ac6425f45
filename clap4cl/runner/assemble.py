"""Strategy factory: the Avalanche strategy a resolved config's ``method`` names.

Like open_clip's ``create_model``, one function maps a name plus settings to a ready
object, so experiment scripts and the CLI never repeat the wiring.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence

from clap4cl.errors import UserError

if TYPE_CHECKING:
    from clap4cl.encoders.text_features import ClassTextFeatures
    from clap4cl.models.clap import ClapModel
    from strategies.exemplars import ClassBalancedMemory

# The choices this module builds. It imports the models and strategies inside the
# functions, so reading these names (config validation, the CLI help) loads no torch.
METHODS = ("zeroshot", "clap", "clap_deterministic", "clip_adapter", "multi_encoder",
           "coop", "clap_coop")
EVAL_CONTEXTS = ("per_image", "mixed", "reference")
# Learned context length per method when ``coop.n_ctx`` is null (the reference's values).
DEFAULT_N_CTX = {"coop": 16, "clap_coop": 12}
# The config section holding each training method's ``batch_size``, epochs and learning rate
# (CLAP + CoOp trains with the ``clap`` section's; zeroshot does not train).
TRAINING_SECTION = {"clap": "clap", "clap_deterministic": "clap", "clap_coop": "clap",
                    "coop": "coop", "clip_adapter": "clip_adapter",
                    "multi_encoder": "multi_encoder"}


def model_eval_context(eval_context: str) -> str:
    """The model's VGA context for the experiment's ``eval.context``.

    ``reference`` and ``mixed`` both use the test batch as context; they differ in how
    the experiment forms the batches (task-homogeneous vs shuffled across tasks).
    """
    return "per_image" if eval_context == "per_image" else "batch"


def build_memory(memory: Dict[str, Any]) -> ClassBalancedMemory:
    """The replay memory of a config's ``memory`` section."""
    from strategies.exemplars import ClassBalancedMemory
    from strategies.selectors import make_selector

    return ClassBalancedMemory(policy=memory["policy"], size=memory["size"],
                               per_class=memory["per_class"],
                               selector=make_selector(memory["selector"]))


def build_clap_model(config: Dict[str, Any], text: ClassTextFeatures, logit_scale: float,
                     image_encoder=None) -> ClapModel:
    """The ``ClapModel`` of a config (variational unless method is clap_deterministic)."""
    from clap4cl.models.clap import ClapModel

    c = config["clap"]
    return ClapModel(
        text, logit_scale, vga=c["vga"], vga_heads=c["vga_heads"], vga_ffn_dim=c["vga_ffn_dim"],
        vga_dropout=c["vga_dropout"], mc_samples=c["mc_samples"],
        variational=config["method"] != "clap_deterministic",
        init_from_language=c["init_from_language"],
        language_init_classes=c["language_init_classes"], train_context=c["train_context"],
        eval_context=model_eval_context(config["eval"]["context"]), image_encoder=image_encoder)


def build_multi_encoder(config: Dict[str, Any], input_dims, n_classes, *, eval_mb_size, device,
                        plugins, evaluator):
    """Avalanche ``Naive`` (Adam, cross-entropy) on a ``MultiEncoderClassifier``, with
    Avalanche's ``ReplayPlugin`` when ``memory.size`` > 0."""
    import torch

    from clap4cl.models.multi_encoder import MultiEncoderClassifier
    from strategies.multi_encoder import AdamNaive, QuietReplayPlugin

    if not input_dims or not n_classes:
        raise ValueError("multi_encoder needs input_dims and n_classes (a two_modality stream)")
    m = config["multi_encoder"]
    model = MultiEncoderClassifier(input_dims, n_classes, fusion=m["fusion"], fill=m["fill"],
                                   hidden=m["hidden"], fused_hidden=m["fused_hidden"])
    plugins = list(plugins)
    if config["memory"]["size"]:
        plugins.append(QuietReplayPlugin(mem_size=config["memory"]["size"]))
    return AdamNaive(model=model, lr=m["lr"], criterion=torch.nn.CrossEntropyLoss(),
                     train_mb_size=m["batch_size"], train_epochs=m["epochs"],
                     eval_mb_size=eval_mb_size, device=device, plugins=plugins, evaluator=evaluator)


def build_from_config(config: Dict[str, Any], *, text_features: ClassTextFeatures,
                      logit_scale: float, evaluator=None, plugins: Sequence = (),
                      image_encoder=None, device: Optional[str] = None,
                      input_dims: Optional[Dict[str, int]] = None, n_classes: Optional[int] = None,
                      backbone=None):
    """The strategy of ``config['method']`` with every hyperparameter from ``config``.

    Args:
        config: a resolved config (``clap4cl.runner.config.load_config``).
        text_features: text statistics of every class of the stream, label order.
        logit_scale: CLIP's temperature τ.
        evaluator: an Avalanche ``EvaluationPlugin`` (None: Avalanche's default).
        plugins: extra Avalanche plugins.
        image_encoder: a frozen encoder, for streams of images rather than features.
        device: training device (default: ``backbone.device``).
        input_dims, n_classes: the modalities' widths and the stream's classes
            (``multi_encoder`` only; ``benchmark.info.input_dims`` of the two_modality stream).
        backbone: the frozen ``FrozenCLIP`` whose text tower learned prompts run through
            (``coop`` and ``clap_coop`` only).
    """
    from clap4cl.models.adapter import CLIPAdapterModel
    from strategies.clap import CLAP
    from strategies.clip_adapter import CLIPAdapter
    from strategies.zeroshot import ZeroShotCLIP

    method = config["method"]
    device = device or config["backbone"]["device"]
    eval_mb = config["eval"]["batch_size"]
    common = dict(eval_mb_size=eval_mb, device=device, plugins=plugins, evaluator=evaluator)
    if method == "zeroshot":
        return ZeroShotCLIP(class_features=text_features.normalized, logit_scale=logit_scale,
                            image_encoder=image_encoder, **common)
    if method == "multi_encoder":
        return build_multi_encoder(config, input_dims, n_classes, **common)
    memory = build_memory(config["memory"])
    if method in ("coop", "clap_coop"):
        return build_prompt_strategy(config, text_features=text_features, logit_scale=logit_scale,
                                     backbone=backbone, memory=memory,
                                     image_encoder=image_encoder, **common)
    if method in ("clap", "clap_deterministic"):
        c = config["clap"]
        model = build_clap_model(config, text_features, logit_scale, image_encoder)
        return CLAP(model=model, memory=memory, train_epochs=c["epochs"],
                    finetune_epochs=c["finetune_epochs"], lr=c["lr"],
                    finetune_lr_factor=c["finetune_lr_factor"],
                    warmup_fraction=c["warmup_fraction"], min_lr_factor=c["min_lr_factor"],
                    beta=c["beta"], kl_weight=c["kl_weight"],
                    regularize_all_tasks=c["regularize_all_tasks"],
                    train_mb_size=c["batch_size"], **common)
    if method == "clip_adapter":
        a = config["clip_adapter"]
        model = CLIPAdapterModel(text_features.normalized, logit_scale, ratio=a["ratio"],
                                 reduction=a["reduction"],
                                 reinit_each_experience=a["reinit_each_experience"],
                                 image_encoder=image_encoder)
        return CLIPAdapter(model=model, memory=memory, train_epochs=a["epochs"], lr=a["lr"],
                           min_lr_factor=config["clap"]["min_lr_factor"],
                           train_mb_size=a["batch_size"], **common)
    raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")


def build_strategy(config, text_features, logit_scale, evaluator, plugins, benchmark=None,
                   backbone=None):
    """The Avalanche strategy of ``config['method']`` (see :func:`build_from_config`) with
    the config's ``plugins`` (CML, MAR, ...) before ``plugins``, and the non-finite loss guard."""
    from strategies.guards import NonFiniteLossGuard
    from strategies.plugins.registry import build_plugins

    info = benchmark.info if benchmark is not None else None
    return build_from_config(
        config, text_features=text_features, logit_scale=logit_scale, evaluator=evaluator,
        plugins=[*build_plugins(config["plugins"]), *plugins, NonFiniteLossGuard()],
        input_dims=None if info is None else info.input_dims,
        n_classes=None if info is None else info.n_classes, backbone=backbone)


def build_prompt_learner(config: Dict[str, Any], backbone, class_names):
    """The :class:`~clap4cl.models.prompt_learner.PromptLearner` of ``config['coop']``."""
    from clap4cl.models.prompt_learner import PromptLearner

    c = config["coop"]
    n_ctx = c["n_ctx"] if c["n_ctx"] is not None else DEFAULT_N_CTX[config["method"]]
    return PromptLearner(backbone, class_names, n_ctx=n_ctx, init=c["init"],
                         init_std=c["init_std"], expandable=c["expandable"],
                         text_pass=c["text_pass"], text_batch=c["text_batch"])


def build_prompt_strategy(config: Dict[str, Any], *, text_features: ClassTextFeatures,
                          logit_scale: float, backbone, memory, image_encoder=None, **common):
    """The ``CoOp`` or ``ClapCoop`` strategy of a config (``common``: eval batch size,
    device, plugins, evaluator)."""
    from clap4cl.models.coop import ClapCoopModel, CoOpModel
    from strategies.coop import ClapCoop, CoOp

    method = config["method"]
    if backbone is None:
        raise UserError(f"method {method!r} needs the CLIP text encoder: run it on an image "
                        f"dataset with a backbone")
    prompts = build_prompt_learner(config, backbone, text_features.class_names)
    c = config["coop"]
    if method == "coop":
        model = CoOpModel(prompts, logit_scale, image_encoder=image_encoder)
        return CoOp(model=model, memory=memory, train_epochs=c["epochs"],
                    finetune_epochs=c["finetune_epochs"], lr=c["lr"],
                    finetune_lr_factor=c["finetune_lr_factor"],
                    warmup_fraction=c["warmup_fraction"], min_lr_factor=c["min_lr_factor"],
                    train_mb_size=c["batch_size"], **common)
    k = config["clap"]
    model = ClapCoopModel(
        prompts, text_features, logit_scale, head_layernorm=c["head_layernorm"],
        vga_heads=c["vga_heads"], vga=k["vga"], vga_ffn_dim=k["vga_ffn_dim"],
        vga_dropout=k["vga_dropout"], mc_samples=k["mc_samples"],
        init_from_language=k["init_from_language"],
        language_init_classes=k["language_init_classes"], train_context=k["train_context"],
        eval_context=model_eval_context(config["eval"]["context"]), image_encoder=image_encoder)
    return ClapCoop(model=model, memory=memory, finetune_context=c["finetune_context"],
                    train_epochs=k["epochs"], finetune_epochs=k["finetune_epochs"], lr=k["lr"],
                    finetune_lr_factor=k["finetune_lr_factor"],
                    warmup_fraction=k["warmup_fraction"], min_lr_factor=k["min_lr_factor"],
                    beta=k["beta"], kl_weight=k["kl_weight"],
                    regularize_all_tasks=k["regularize_all_tasks"],
                    train_mb_size=k["batch_size"], **common)
