"""The learned-prompt methods of a resolved config: ``coop`` and ``clap_coop``."""
from __future__ import annotations

from typing import Any, Dict

from clap4cl.encoders.text_features import ClassTextFeatures
from clap4cl.errors import UserError

PROMPT_METHODS = ("coop", "clap_coop")
DEFAULT_N_CTX = {"coop": 16, "clap_coop": 12}


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
    from clap4cl.runner.assemble import model_eval_context

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
