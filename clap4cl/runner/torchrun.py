"""The rules of a run under ``torchrun``: its seed, joining the process group, and what
data-parallel training cannot run (docs/distributed.md)."""
from __future__ import annotations

from clap4cl import distributed
from clap4cl.errors import UserError
from clap4cl.runner.assemble import TRAINING_SECTION
from strategies.plugins.registry import plugin_name


def run_seed(config) -> int:
    """The run's seed: ``seed``, or the run index when it is null."""
    return config["run"] if config["seed"] is None else config["seed"]


def start_distributed(config, seed: int) -> None:
    """Join torchrun's process group if launched by it, refusing what DDP cannot run:
    the regularising plugins (per-rank state and extra forward passes that DDP does not
    synchronise) and ``multi_encoder`` (trained by Avalanche's Naive, not data-parallel)."""
    if not distributed.init_from_env(seed, config["backbone"]["device"]):
        return
    if config["plugins"]:
        raise UserError(f"plugins {[plugin_name(p) for p in config['plugins']]} are not "
                        f"supported in data-parallel runs: run them without torchrun")
    if config["method"] == "multi_encoder":
        raise UserError("method multi_encoder does not train data-parallel: run it without torchrun")
    section = TRAINING_SECTION.get(config["method"])
    batch = config[section]["batch_size"] if section else None
    if batch is not None and batch % distributed.world_size():
        raise UserError(f"{section}.batch_size {batch} is the global batch: it must be divisible "
                        f"by the {distributed.world_size()} processes (nodes x processes per node)")
