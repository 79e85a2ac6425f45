"""The run checkpoint: everything a run needs to continue after a finished experience, as
plain data that ``torch.load(path, weights_only=True)`` reads. One file: writing and
reading are the two halves of one format and change together.

The file holds tensors, lists, tuples, dicts, numbers, strings, booleans and None only;
no class and no function is ever loaded from it, so a planted file cannot run code. The
strategy is not in the file: the run rebuilds it from the config (as a fresh run does)
and this module puts the saved state into it:

- the model's ``state_dict``, loaded after replaying the model adaptation of the
  experiences already trained (the model grows per experience);
- the replay memory as index lists into the experiences' training datasets;
- the state of every stateful plugin and evaluation metric and of the strategy itself
  (e.g. an optimizer kept across experiences), through the hooks below;
- the strategy clock's counters, the random number generators (torch, torch.cuda,
  NumPy, Python's ``random`` and any other generator registered with Avalanche's
  ``RNGManager``) and the run's results so far (JSON; plot arrays as tensors).

Hooks: an object (the strategy, its ``memory``, a plugin or a metric of its evaluator)
with state that carries over from one experience to the next defines

    def checkpoint_state(self) -> dict: ...                 # plain data, see above
    def load_checkpoint_state(self, state, datasets): ...

``datasets`` maps experience index -> training dataset of each experience trained so far
(for objects that keep samples of them). Objects without hooks have no such state.
"""
from __future__ import annotations

import json
import os
import pickletools
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

from clap4cl.errors import UserError

FORMAT = "clap4cl-run-checkpoint"
VERSION = 2
OLD_FORMAT_MESSAGE = ("run directories from before 0.2 are refused: delete checkpoint.pkl to "
                      "start again")

_PLAIN_SCALARS = (bool, int, float, str, bytes, type(None))


# ---------------------------------------------------------------------------- writing
def save_checkpoint(strategy, run_state: Dict[str, Any], path: Path) -> None:
    """Write the checkpoint of ``strategy`` between two experiences to ``path`` atomically
    (a temporary file renamed into place)."""
    document = checkpoint_document(strategy, run_state)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    torch.save(document, tmp)
    os.replace(tmp, path)


def checkpoint_document(strategy, run_state: Dict[str, Any]) -> Dict[str, Any]:
    """The checkpoint as one dict of plain data (see the module docstring)."""
    memory = getattr(strategy, "memory", None)
    document = {
        "format": FORMAT,
        "version": VERSION,
        "next_experience": int(strategy.clock.train_exp_counter),
        "model": {k: v.detach().cpu() if torch.is_tensor(v) else v
                  for k, v in strategy.model.state_dict().items()},
        "strategy": strategy.checkpoint_state() if hasattr(strategy, "checkpoint_state") else None,
        "memory": memory.checkpoint_state() if hasattr(memory, "checkpoint_state") else None,
        "objects": {key: state_of(obj) for key, obj in stateful_objects(strategy)},
        "clock": clock_state(strategy.clock),
        "rng": rng_state(),
        "run_state": json.dumps({k: v for k, v in run_state.items() if k != "plot_data"}),
        "plot_data": plot_data_to_tensors(run_state.get("plot_data", {})),
    }
    check_plain(document, "checkpoint")
    return document


def check_plain(value, where: str) -> None:
    """Raise TypeError if ``value`` holds anything but plain data (a bug in a hook)."""
    if torch.is_tensor(value) or isinstance(value, _PLAIN_SCALARS):
        return
    if isinstance(value, (list, tuple, set)):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            check_plain(key, f"{where} key {key!r}")
            check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(f"{where} is a {type(value).__name__}: a checkpoint holds plain data only")


# ---------------------------------------------------------------------------- reading
def read_checkpoint(path: Path) -> Dict[str, Any]:
    """The checkpoint document at ``path``, loaded with ``weights_only=True``; UserError
    (one line) for anything that is not a checkpoint of this version."""
    try:
        if not zipfile.is_zipfile(path):          # torch.save's format; never a bare pickle
            raise ValueError("not a zip archive")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            document = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever the file is, it is not ours
        if written_by_old_version(path):
            raise UserError(f"checkpoint {str(path)!r} was written by an older version of "
                            f"clap4cl: {OLD_FORMAT_MESSAGE}") from None
        raise UserError(f"checkpoint {str(path)!r} is not a clap4cl checkpoint "
                        f"({type(exc).__name__}); it was not loaded: delete it to start the "
                        f"run again") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise UserError(f"checkpoint {str(path)!r} is not a clap4cl checkpoint; it was not "
                        f"loaded: delete it to start the run again")
    if document.get("version") != VERSION:
        raise UserError(f"checkpoint {str(path)!r} has format version "
                        f"{document.get('version')!r}, this clap4cl reads version {VERSION}: "
                        f"resume with the version that wrote it, or delete it to start again")
    return document


def written_by_old_version(path: Path) -> bool:
    """True for Avalanche's dill checkpoints (what clap4cl wrote before 0.2), recognised
    from the names in the pickle without unpickling anything."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            member = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
            if member is None:
                return False
            data = archive.read(member)
        names = [arg for _, arg, _ in pickletools.genops(data) if isinstance(arg, str)]
    except Exception:  # noqa: BLE001 - unreadable: not an old checkpoint either
        return False
    # Avalanche's save_checkpoint writes {"strategy": ..., "rng_manager": ..., "exp_counter": ...}
    return "exp_counter" in names and any(n.startswith("avalanche.") for n in names)


def load_checkpoint(strategy, path: Path, train_stream) -> Tuple[int, Dict[str, Any]]:
    """Put the checkpoint at ``path`` into the freshly built ``strategy``.

    Returns (index of the next experience to train, the run state). ``train_stream`` is
    the run's training stream: the experiences already trained are replayed through the
    strategy's model adaptation, and the memory's indices point into their datasets.
    """
    document = read_checkpoint(path)
    try:
        return _restore(strategy, document, train_stream)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a checkpoint that does not fit this run
        raise UserError(f"checkpoint {str(path)!r} does not fit this run ({type(exc).__name__}: "
                        f"{_first_line(exc)}): delete it to start the run again") from exc


def _restore(strategy, document, train_stream) -> Tuple[int, Dict[str, Any]]:
    start = int(document["next_experience"])
    if not 0 <= start <= len(train_stream):
        raise ValueError(f"next experience {start} is outside the stream of {len(train_stream)}")
    datasets = {k: train_stream[k].dataset for k in range(start)}
    replay_model_adaptation(strategy, [train_stream[k] for k in range(start)])
    strategy.model.load_state_dict(document["model"])
    memory = getattr(strategy, "memory", None)
    if document["memory"] is not None:
        memory.load_checkpoint_state(document["memory"], datasets)
    objects = dict(stateful_objects(strategy))
    if set(objects) != set(document["objects"]):
        raise ValueError(f"the checkpoint has state of {sorted(document['objects'])}, the run "
                         f"builds {sorted(objects)}")
    for key, obj in objects.items():
        load_state_of(obj, document["objects"][key], datasets)
    if document["strategy"] is not None:
        strategy.load_checkpoint_state(document["strategy"], datasets)
    load_clock_state(strategy.clock, document["clock"])
    run_state = json.loads(document["run_state"])
    run_state["plot_data"] = plot_data_from_tensors(document["plot_data"])
    load_rng_state(document["rng"])
    return start, run_state


def replay_model_adaptation(strategy, experiences: Sequence) -> None:
    """Grow ``strategy.model`` as training ``experiences`` did, through the strategy's
    own model adaptation (the weights are loaded afterwards)."""
    was_training = strategy.model.training
    strategy.model.train()
    for experience in experiences:
        strategy.experience = experience
        strategy.model = strategy.model_adaptation()
    strategy.experience = None
    strategy.model.train(was_training)


# ---------------------------------------------------------------------------- stateful objects
def stateful_objects(strategy) -> List[Tuple[str, Any]]:
    """(key, object) of the plugins and evaluation metrics whose state is checkpointed."""
    found = []
    for i, plugin in enumerate(strategy.plugins):
        if has_state(plugin):
            found.append((f"plugin{i}:{type(plugin).__name__}", plugin))
    metrics = getattr(getattr(strategy, "evaluator", None), "metrics", None) or []
    for i, metric in enumerate(metrics):
        if has_state(metric):
            found.append((f"metric{i}:{type(metric).__name__}", metric))
    return found


def _forgetting_family():
    from avalanche.evaluation.metrics.forgetting_bwt import GenericExperienceForgetting

    return GenericExperienceForgetting


def has_state(obj) -> bool:
    return hasattr(obj, "checkpoint_state") or isinstance(obj, _forgetting_family())


def state_of(obj) -> Any:
    if hasattr(obj, "checkpoint_state"):
        return obj.checkpoint_state()
    # Avalanche's forgetting / BWT metrics: first and latest accuracy per experience.
    return {"initial": dict(obj.forgetting.initial), "last": dict(obj.forgetting.last),
            "train_exp_id": obj.train_exp_id}


def load_state_of(obj, state, datasets) -> None:
    if hasattr(obj, "load_checkpoint_state"):
        obj.load_checkpoint_state(state, datasets)
        return
    obj.forgetting.initial = dict(state["initial"])
    obj.forgetting.last = dict(state["last"])
    obj.train_exp_id = state["train_exp_id"]


def clock_state(clock) -> Dict[str, int]:
    return {k: v for k, v in vars(clock).items() if type(v) is int}


def load_clock_state(clock, state: Dict[str, int]) -> None:
    for key, value in state.items():
        setattr(clock, key, int(value))


# ---------------------------------------------------------------------------- RNG states
def rng_state() -> Dict[str, Any]:
    """The state of every generator registered with Avalanche's ``RNGManager``, as tensors."""
    from avalanche.training.determinism.rng_manager import RNGManager

    return {name: _encode_rng(name, gen["save_state"]())
            for name, gen in RNGManager.random_generators.items()}


def load_rng_state(state: Dict[str, Any]) -> None:
    from avalanche.training.determinism.rng_manager import RNGManager

    generators = RNGManager.random_generators
    if set(state) != set(generators):
        raise ValueError(f"the checkpoint has generators {sorted(state)}, the run {sorted(generators)}")
    for name, gen in generators.items():
        gen["load_state"](_decode_rng(name, state[name]))


def _encode_rng(name: str, value):
    if name == "numpy":
        kind, keys, pos, has_gauss, cached = value
        return {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    if name == "random":
        version, internal, gauss_next = value
        return {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                "gauss_next": gauss_next}
    if torch.is_tensor(value):
        return value.clone()
    if isinstance(value, (list, tuple)) and all(torch.is_tensor(v) for v in value):
        return [v.clone() for v in value]         # torch.cuda: one state per device
    raise TypeError(f"random generator {name!r} has a state of type {type(value).__name__}: "
                    f"only tensor states can be checkpointed")


def _decode_rng(name: str, value):
    if name == "numpy":
        return (value["kind"], value["keys"].numpy().astype(np.uint32), value["pos"],
                value["has_gauss"], value["cached_gaussian"])
    if name == "random":
        return (value["version"], tuple(int(v) for v in value["internal"].tolist()),
                value["gauss_next"])
    return value


# ---------------------------------------------------------------------------- plot data
def plot_data_to_tensors(plot_data: Dict[str, Any]) -> Dict[str, Any]:
    """The plots' arrays ((logits, targets) for reliability, per-score (id, ood) scores
    for ROC) as tensors."""
    def pair(p):
        return None if p is None else [torch.from_numpy(np.ascontiguousarray(a)) for a in p]

    out = {}
    if "reliability" in plot_data:
        out["reliability"] = pair(plot_data["reliability"])
    for key in ("roc", "roc_external"):
        if key in plot_data:
            roc = plot_data[key]
            out[key] = None if roc is None else {name: pair(p) for name, p in roc.items()}
    return out


def plot_data_from_tensors(saved: Dict[str, Any]) -> Dict[str, Any]:
    def pair(p):
        return None if p is None else tuple(t.numpy() for t in p)

    out = {}
    if "reliability" in saved:
        out["reliability"] = pair(saved["reliability"])
    for key in ("roc", "roc_external"):
        if key in saved:
            out[key] = None if saved[key] is None else {n: pair(p) for n, p in saved[key].items()}
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
