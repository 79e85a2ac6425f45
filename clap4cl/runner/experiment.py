"""One class-incremental experiment from a resolved config: the engine of ``clap4cl run``."""
from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import io
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.determinism.rng_manager import RNGManager
from torch.utils.data import ConcatDataset, DataLoader, Subset

from clap4cl import distributed
from clap4cl.evaluation import metrics, scores as uncertainty
from clap4cl.runner.config import dump
from clap4cl.errors import UserError
from clap4cl.features.cache import FeatureCache
from clap4cl.encoders.prompts import class_text_features
from clap4cl.paths import default_cache_dir

SYNTHETIC_LOGIT_SCALE = 100.0


class Timer:
    """Accumulates wall-clock seconds per phase."""

    def __init__(self):
        self.seconds = {"extract": 0.0, "train": 0.0, "eval": 0.0}

    def phase(self, name):
        timer = self

        class _Phase:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[name] += time.perf_counter() - self.start

        return _Phase()


def prepare_run_dir(output: Path, config: Dict[str, Any]) -> None:
    """Create the run directory, refusing one that holds a different config."""
    output.mkdir(parents=True, exist_ok=True)
    saved = output / "config.yaml"
    text = dump(config)
    if saved.is_file() and saved.read_text() != text:
        raise UserError(f"run directory {str(output)!r} holds a run with a different config: "
                        f"choose another --output or delete that directory")
    saved.write_text(text)


def build_benchmark(config: Dict[str, Any], backbone, cache: FeatureCache, progress: bool):
    """The feature-level class-incremental benchmark the config describes."""
    import scenarios

    ds = config["dataset"]
    return scenarios.class_incremental(
        ds["name"], n_experiences=ds["n_experiences"], run=config["run"], root=ds["root"],
        class_order=ds["class_order"], first_experience_classes=ds["first_experience_classes"],
        level="features", backbone=backbone, cache=cache, download=ds["download"],
        progress=progress, batch_size=config["cache"]["batch_size"],
        num_workers=config["cache"]["num_workers"], **ds["options"])


def load_backbone(config: Dict[str, Any]):
    """The frozen CLIP of the config, or None for feature-only streams (synthetic, two_modality)."""
    from clap4cl.encoders.backbones import load_clip

    if _feature_only(config):
        return None
    bb = config["backbone"]
    return load_clip(bb["arch"], bb["pretrained"], precision=bb["precision"], device=bb["device"])


def stream_text_features(config, benchmark, backbone, cache: FeatureCache):
    """Class text statistics of every class of the stream, in label order (None for
    streams without class text, such as two_modality)."""
    if getattr(benchmark, "input_dims", None) is not None:
        return None
    if getattr(benchmark, "text_features", None) is not None:
        return benchmark.text_features
    templates = config["dataset"]["templates"] or benchmark.templates
    return class_text_features(backbone, benchmark.class_names, templates, cache_dir=cache.root)


def build_strategy(config, text_features, logit_scale, evaluator, plugins, benchmark=None):
    """The Avalanche strategy of ``config['method']`` (see ``strategies.build_from_config``)
    with the config's ``plugins`` (CML, MAR, ...) before ``plugins``."""
    import strategies

    input_dims = getattr(benchmark, "input_dims", None)
    n_classes = len(benchmark.class_names) if benchmark is not None else None
    strategy = strategies.build_from_config(
        config, text_features=text_features, logit_scale=logit_scale, evaluator=evaluator,
        plugins=[*strategies.build_plugins(config["plugins"]), *plugins],
        input_dims=input_dims, n_classes=n_classes)
    return strategy


def null_image_embedding(backbone, benchmark) -> Optional[torch.Tensor]:
    """The embedding that stands for "no image" when a modality subset removes it: a
    mid-grey image through the frozen encoder (data-independent, no class prior), or the
    synthetic stream's content-free gap direction."""
    if getattr(benchmark, "null_image", None) is not None:
        return benchmark.null_image
    if backbone is None:
        return None
    from PIL import Image

    grey = Image.new("RGB", (224, 224), (128, 128, 128))
    with torch.no_grad():
        return backbone.encode_images(backbone.preprocess_test(grey)[None])[0].float()


def make_evaluator(output: Path, config: Dict[str, Any], progress: bool,
                   write_tensorboard: bool = True):
    """Avalanche EvaluationPlugin with accuracy/loss metrics and the configured loggers
    (TensorBoard only if the config and ``write_tensorboard`` both want it)."""
    from avalanche.logging import InteractiveLogger, TensorboardLogger
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics

    from clap4cl.evaluation.plugin_metrics import calibration_plugin_metrics, continual_metrics

    loggers = []
    tensorboard = None
    if progress:
        loggers.append(InteractiveLogger())
    if config["logging"]["tensorboard"] and write_tensorboard:
        tensorboard = TensorboardLogger(tb_log_dir=str(output / "tensorboard"))
        loggers.append(tensorboard)
    with warnings.catch_warnings():  # no loggers is a deliberate choice (--quiet, no TensorBoard)
        warnings.filterwarnings("ignore", message="No loggers specified")
        evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True),
                                     loss_metrics(stream=True),
                                     *calibration_plugin_metrics(experience=False),
                                     *continual_metrics(), loggers=loggers)
    return evaluator, tensorboard


@torch.no_grad()
def predict_logits(model, datasets, batch_size: int, device: str = "cpu",
                   mix_seed: Optional[int] = None) -> List[Tuple[np.ndarray, np.ndarray]]:
    """(sample logits (N, M, C), targets) of ``model`` on each dataset, in dataset order.

    M is the model's Monte-Carlo sample count (1 for deterministic models). Batches are
    task-homogeneous (one loader per dataset, as the reference evaluates) unless
    ``mix_seed`` is given: then all samples are shuffled together into mixed batches
    (the ``mixed`` context) and the outputs are split back per dataset.
    """
    model.eval()
    if mix_seed is None:
        return [_predict(model, DataLoader(d, batch_size=batch_size), device) for d in datasets]
    order = torch.randperm(sum(len(d) for d in datasets),
                           generator=torch.Generator().manual_seed(mix_seed))
    loader = DataLoader(Subset(ConcatDataset(datasets), order.tolist()), batch_size=batch_size)
    logits, targets = _predict(model, loader, device)
    inverse = torch.argsort(order).numpy()
    logits, targets = logits[inverse], targets[inverse]
    bounds = np.cumsum([0] + [len(d) for d in datasets])
    return [(logits[a:b], targets[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _predict(model, loader, device):
    outs, ys = [], []
    for batch in loader:
        outs.append(uncertainty.sample_logits(model, batch[0].to(device)).float().cpu())
        ys.append(torch.as_tensor(batch[1]))
    return torch.cat(outs).numpy(), torch.cat(ys).numpy()


class LogitsCollector(SupervisedPlugin, supports_distributed=True):
    """Keeps every evaluation mini-batch's sample logits (B, M, C) and targets, per experience.

    The experiment's accuracy, calibration and novelty numbers come from the same
    forward passes as Avalanche's own metrics: one evaluation pass per step. Strategies
    that sample (CLAP) leave their samples in ``mb_sample_logits``; for the others the
    output is one sample. Safe in data-parallel runs: only rank 0 evaluates.
    """

    def __init__(self):
        super().__init__()
        self.outputs: Dict[int, list] = {}

    def before_eval(self, strategy, **kwargs):
        self.outputs = {}

    def after_eval_iteration(self, strategy, **kwargs):
        samples = getattr(strategy, "mb_sample_logits", None)
        if samples is None or len(samples) != len(strategy.mb_output):
            samples = strategy.mb_output[:, None, :]
        batches = self.outputs.setdefault(strategy.experience.current_experience, [])
        batches.append((samples.detach().float().cpu(), strategy.mb_y.cpu()))

    def __getstate__(self):
        state = self.__dict__.copy()
        state["outputs"] = {}                # refilled by every evaluation: not checkpointed
        return state

    def logits_and_targets(self, experience: int):
        logits, targets = zip(*self.outputs[experience])
        return torch.cat(logits).numpy(), torch.cat(targets).numpy()


def evaluate_step(strategy, collector: LogitsCollector, benchmark, step: int, config,
                  seed: int, external_ood=None) -> Dict[str, Any]:
    """Per-experience accuracy, step accuracy, ECE and novelty after training ``step``.

    ``reference`` and ``per_image`` contexts evaluate through Avalanche (one
    task-homogeneous loader per experience); ``mixed`` shuffles the seen test data (and
    the novel data, for novelty detection) together into cross-task batches.
    ``external_ood``: a test dataset of another dataset, novel at every step.
    """
    test_stream = benchmark.test_stream
    batch_size = config["eval"]["batch_size"]
    device = str(strategy.device)
    with_novelty = config["eval"]["novelty"] and step < len(test_stream) - 1
    n_eval = len(test_stream) if with_novelty else step + 1
    if config["eval"]["context"] == "mixed":
        datasets = [test_stream[k].dataset.eval() for k in range(n_eval)]
        outputs = predict_logits(strategy.model, datasets, batch_size, device,
                                 mix_seed=seed * 1000 + step)
        per_exp, novel = outputs[: step + 1], outputs[step + 1:]
    else:
        strategy.eval(test_stream[: step + 1])
        per_exp = [collector.logits_and_targets(k) for k in range(step + 1)]
        collector.outputs = {}               # the batches are concatenated: free them now
        future = [test_stream[k].dataset.eval() for k in range(step + 1, n_eval)]
        novel = predict_logits(strategy.model, future, batch_size, device)
    seen_samples = np.concatenate([l for l, _ in per_exp])
    seen_logits = seen_samples.mean(1)
    seen_y = np.concatenate([y for _, y in per_exp])
    out = {
        "row": [float((l.mean(1).argmax(1) == y).mean()) for l, y in per_exp],
        "step_accuracy": float((seen_logits.argmax(1) == seen_y).mean()),
        "ece": metrics.expected_calibration_error(seen_logits, seen_y),
        "calibration": metrics.calibration_metrics(seen_logits, seen_y, batch_size),
        "task_aware_accuracy": float(np.mean(np.concatenate([
            metrics.task_aware_hits(l.mean(1), y, benchmark.classes_per_experience[k])
            for k, (l, y) in enumerate(per_exp)]))),
        "novelty": None,
        "novelty_external": None,
        "plot_data": {"reliability": (seen_logits, seen_y), "roc": None},
    }
    if with_novelty:
        novel_samples = np.concatenate([l for l, _ in novel])
        out["novelty"] = _novelty_entry(step, seen_samples, novel_samples)
        out["plot_data"]["roc"] = {
            name: (uncertainty.novelty_score(name, seen_samples).numpy(),
                   uncertainty.novelty_score(name, novel_samples).numpy())
            for name in uncertainty.NOVELTY_SCORES}
    if external_ood is not None:
        (ood_samples, _), = predict_logits(strategy.model, [external_ood], batch_size, device)
        out["novelty_external"] = _novelty_entry(step, seen_samples, ood_samples)
    out["reliability"] = reliability_entry(strategy.model, test_stream, step, config, device)
    return out


def reliability_entry(model, test_stream, step: int, config, device) -> Optional[Dict[str, Any]]:
    """VRR, per-removed-modality VRR, mean violation and per-subset accuracy on the seen
    test data (multimodal models; CLAP only once it has a null image), plus CLAP's class
    prior probe."""
    from clap4cl.evaluation.modality_metrics import class_prior_probe, reliability_report
    from clap4cl.models.multimodal import MultimodalModule

    if not isinstance(model, MultimodalModule):
        return None
    if hasattr(model, "null_image") and not model.null_image.any():
        return None
    report = reliability_report(model, [test_stream[k].dataset.eval() for k in range(step + 1)],
                                batch_size=config["eval"]["batch_size"], device=device,
                                pairs=config["eval"]["reliability_pairs"])
    entry = {"step": step, **report}
    if model.allow_empty:
        entry.update(class_prior_probe(model))
    return entry


def _novelty_entry(step: int, id_samples: np.ndarray, ood_samples: np.ndarray) -> Dict[str, Any]:
    """Energy metrics at the top level (the paper's score) and every score under ``scores``."""
    scores = metrics.novelty_scores_metrics(id_samples, ood_samples)
    return {"step": step, "score": "energy", **scores["energy"], "scores": scores}


def novelty_summary(entries: List[Dict[str, Any]]) -> Optional[Dict[str, Dict[str, float]]]:
    """Per score, each metric averaged over the steps (None without entries)."""
    if not entries:
        return None
    names = entries[0]["scores"]
    return {name: {m: float(np.mean([e["scores"][name][m] for e in entries]))
                   for m in ("auroc", "aupr", "fpr95")} for name in names}


def summarise(config, benchmark, rows: List[List[float]], steps: List[Dict[str, Any]],
              timer: Timer, completed: int) -> Dict[str, Any]:
    """The results.json document (DESIGN.md contract)."""
    n_exp = len(benchmark.train_stream)
    matrix = [row + [None] * (n_exp - len(row)) for row in rows]
    novelty = [s["novelty"] for s in steps if s["novelty"] is not None]
    external = [s["novelty_external"] for s in steps if s["novelty_external"] is not None]
    step_acc = [s["step_accuracy"] for s in steps]
    task_mean = [metrics.task_mean_accuracy(row) for row in rows]
    return {
        "method": config["method"],
        "dataset": config["dataset"]["name"],
        "backbone": None if _feature_only(config) else config["backbone"]["arch"],
        "run": config["run"],
        "n_experiences": n_exp,
        "completed_experiences": completed,
        "class_order": [int(c) for c in benchmark.class_order],
        "classes_per_experience": [[int(c) for c in cls] for cls in benchmark.classes_per_experience],
        "eval_context": config["eval"]["context"],
        "accuracy_matrix": matrix,
        "step_accuracy": step_acc,
        "avg_incremental_accuracy": metrics.average_incremental_accuracy(step_acc) if step_acc else None,
        "last_accuracy": step_acc[-1] if step_acc else None,
        "step_accuracy_task_mean": task_mean,
        "last_accuracy_task_mean": task_mean[-1] if task_mean else None,
        "task_aware_accuracy": [s["task_aware_accuracy"] for s in steps],
        "bwt": metrics.backward_transfer(rows),
        "forgetting": metrics.forgetting(rows),
        "ece": [s["ece"] for s in steps],
        "calibration": [s["calibration"] for s in steps],
        "novelty": novelty,
        "novelty_mean": novelty_summary(novelty),
        "novelty_external": external,
        "novelty_external_dataset": config["eval"]["novelty_dataset"],
        "novelty_external_mean": novelty_summary(external),
        "plugins": [_plugin_name(p) for p in config["plugins"]],
        "reliability": [s.get("reliability") for s in steps] if any(s.get("reliability") for s in steps) else None,
        "timing": {k: round(v, 3) for k, v in timer.seconds.items()},
    }


def _feature_only(config) -> bool:
    from scenarios.registry import is_feature_dataset

    return is_feature_dataset(config["dataset"]["name"])


def write_json_atomic(path: Path, data: Dict[str, Any]) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


CHECKPOINT = "checkpoint.pkl"


def run_experiment(config: Dict[str, Any], output, *, progress: Optional[bool] = None) -> Dict[str, Any]:
    """Run one class-incremental experiment and write the run directory.

    Returns the ``results.json`` document. After every experience the run directory gets
    ``results.json`` and an Avalanche checkpoint (strategy, model, memory, RNG states and
    the results so far); running again on the same directory with the same config resumes
    after the last finished experience and ends with the same results as an
    uninterrupted run.

    Under ``torchrun`` every rank calls this: extraction is sharded over the ranks,
    training is data-parallel (``strategies.ReplayTemplate``), and rank 0 alone evaluates
    and writes the run directory; the other ranks return an empty dict.
    """
    output = Path(output)
    seed = run_seed(config)
    start_distributed(config, seed)
    main = distributed.is_main()
    progress = (config["logging"]["progress"] if progress is None else progress) and main
    if main:
        prepare_run_dir(output, config)
    distributed.barrier()
    timer = Timer()
    cache = FeatureCache(config["cache"]["dir"] or default_cache_dir())
    check_novelty_dataset(config)
    with timer.phase("extract"):
        backbone = load_backbone(config)
        benchmark = build_benchmark(config, backbone, cache, progress)
        text = stream_text_features(config, benchmark, backbone, cache)
    logit_scale = backbone.logit_scale if backbone is not None else SYNTHETIC_LOGIT_SCALE
    # Seeded after extraction, so results do not depend on whether the cache was warm.
    RNGManager.set_random_seeds(seed)
    evaluator, _ = make_evaluator(output, config, progress, write_tensorboard=main)
    strategy = build_strategy(config, text, logit_scale, evaluator,
                              plugins=[LogitsCollector(), _loss_guard()], benchmark=benchmark)
    null_image = null_image_embedding(backbone, benchmark)
    if null_image is not None and hasattr(strategy.model, "set_null_image"):
        strategy.model.set_null_image(null_image)
    external_ood = load_external_ood(config, backbone, cache, progress)
    strategy, start = resume(strategy, output, timer)
    state = strategy.run_state
    collector = next(p for p in strategy.plugins if isinstance(p, LogitsCollector))
    tensorboard = _tensorboard_logger(strategy)
    results = state["results"]
    for step in range(start, len(benchmark.train_stream)):
        with timer.phase("train"):
            strategy.train(benchmark.train_stream[step])
        release_freed_memory()
        if not main:
            continue
        with timer.phase("eval"):
            evaluated = evaluate_step(strategy, collector, benchmark, step, config, seed,
                                      external_ood)
        release_freed_memory()
        latest = evaluated.pop("plot_data")
        state["plot_data"]["reliability"] = latest["reliability"]
        state["plot_data"]["roc"] = latest["roc"] or state["plot_data"].get("roc")
        state["rows"].append(evaluated["row"])
        state["steps"].append(evaluated)
        _log_step(tensorboard, step, evaluated)
        results = summarise(config, benchmark, state["rows"], state["steps"], timer,
                            completed=step + 1)
        state["results"] = results
        state["timer"] = dict(timer.seconds)
        save_run_checkpoint(strategy, output)
        write_json_atomic(output / "results.json", results)
    if not main:
        return {}
    write_plots(output, results, state["plot_data"], tensorboard)
    if tensorboard is not None:
        tensorboard.writer.flush()
    regularizers = [p for p in config["plugins"] if _plugin_name(p) != "modality_dropout"]
    if config["eval"]["baseline_without_regularizers"] and regularizers:
        results = add_baseline(config, output, results, progress)
        write_json_atomic(output / "results.json", results)
    return results


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_freed_memory() -> None:
    """Give the memory that glibc keeps after large temporaries are freed back to the OS.

    Evaluation allocates (samples × M × classes) arrays that grow with every experience;
    glibc keeps the freed space fragmented in its heap, so without this the resident size
    rises by about 100 MB per experience at CIFAR-100 size. A no-op without glibc.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


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
        raise UserError(f"plugins {[_plugin_name(p) for p in config['plugins']]} are not "
                        f"supported in data-parallel runs: run them without torchrun")
    if config["method"] == "multi_encoder":
        raise UserError("method multi_encoder does not train data-parallel: run it without torchrun")
    section = {"clap": "clap", "clap_deterministic": "clap"}.get(config["method"], config["method"])
    batch = config.get(section, {}).get("batch_size")
    if batch is not None and batch % distributed.world_size():
        raise UserError(f"{section}.batch_size {batch} is the global batch: it must be divisible "
                        f"by the {distributed.world_size()} processes (nodes x processes per node)")


def add_baseline(config, output: Path, results: Dict[str, Any], progress: bool) -> Dict[str, Any]:
    """Run the same experiment without the regularising plugins (modality dropout kept, so
    subset predictions stay in distribution) into ``output/baseline`` and put its
    reliability and accuracy beside the run's: the plugins' "before" and "after"."""
    plain = copy.deepcopy(config)
    plain["plugins"] = [p for p in config["plugins"] if _plugin_name(p) == "modality_dropout"]
    base = run_experiment(plain, output / "baseline", progress=progress)
    last = lambda r: (r["reliability"] or [None])[-1]  # noqa: E731
    results = dict(results)
    results["baseline"] = {k: base[k] for k in ("step_accuracy", "last_accuracy",
                                                "avg_incremental_accuracy", "ece", "reliability")}
    results["plugin_effect"] = {
        "baseline_plugins": [_plugin_name(p) for p in plain["plugins"]],
        "vrr_before": last(base) and last(base)["VRR"],
        "vrr_after": last(results) and last(results)["VRR"],
        "last_accuracy_before": base["last_accuracy"],
        "last_accuracy_after": results["last_accuracy"],
    }
    return results


def _plugin_name(spec) -> str:
    return spec if isinstance(spec, str) else spec.get("name")


def resume(strategy, output: Path, timer: Timer):
    """(strategy, first experience to train): restored from ``output/checkpoint.pkl`` if
    there is one, else the fresh strategy with an empty ``run_state``."""
    from avalanche.checkpointing import maybe_load_checkpoint

    path = output / CHECKPOINT
    if path.is_file():
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # Avalanche prints its device map
                strategy, start = maybe_load_checkpoint(strategy, str(path))
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is the same problem
            raise UserError(f"checkpoint {str(path)!r} cannot be read ({type(exc).__name__}): "
                            f"delete it to start the run again") from exc
        timer.seconds.update({k: v for k, v in strategy.run_state["timer"].items() if k != "extract"})
        return strategy, start
    strategy.run_state = {"rows": [], "steps": [], "plot_data": {}, "results": {}, "timer": {}}
    return strategy, 0


def save_run_checkpoint(strategy, output: Path) -> None:
    """Avalanche checkpoint of the strategy (with ``run_state``), written atomically."""
    from avalanche.checkpointing import save_checkpoint

    tmp = output / f"{CHECKPOINT}.tmp{os.getpid()}"
    save_checkpoint(strategy, str(tmp))
    os.replace(tmp, output / CHECKPOINT)


def _loss_guard():
    import strategies

    return strategies.NonFiniteLossGuard()


def _tensorboard_logger(strategy):
    from avalanche.logging import TensorboardLogger

    loggers = getattr(strategy.evaluator, "loggers", [])
    return next((lg for lg in loggers if isinstance(lg, TensorboardLogger)), None)


def check_novelty_dataset(config) -> None:
    """Fail before any extraction if ``eval.novelty_dataset`` cannot pair with the stream."""
    import scenarios

    name = config["eval"]["novelty_dataset"]
    if name is None:
        return
    novel_is_synthetic = scenarios.canonical_name(name) == "synthetic"
    if novel_is_synthetic != (config["dataset"]["name"] == "synthetic"):
        raise UserError(f"eval.novelty_dataset = {name!r} cannot be compared with "
                        f"dataset.name = {config['dataset']['name']!r}: synthetic features only "
                        f"pair with synthetic features, images only with images")


def load_external_ood(config, backbone, cache: FeatureCache, progress: bool):
    """The test split of ``eval.novelty_dataset`` at feature level, or None."""
    name = config["eval"]["novelty_dataset"]
    if name is None:
        return None
    import scenarios

    external = scenarios.class_incremental(
        name, n_experiences=1, root=config["eval"]["novelty_root"], level="features",
        backbone=backbone, cache=cache, progress=progress,
        batch_size=config["cache"]["batch_size"], num_workers=config["cache"]["num_workers"])
    return external.test_stream[0].dataset.eval()


def write_plots(output: Path, results: Dict[str, Any], plot_data: Dict[str, Any], tensorboard) -> None:
    """The run's four PNG plots in ``output/plots`` (and as TensorBoard figures)."""
    from clap4cl.runner import plots

    figures = plots.run_figures(results, plot_data["reliability"], plot_data.get("roc"))
    if tensorboard is not None:
        step = results["completed_experiences"] - 1
        for file_name, fig in figures.items():
            tensorboard.writer.add_figure(f"plots/{file_name[:-4]}", fig, step, close=False)
    plots.save_figures(figures, output / "plots")


def _log_step(tensorboard, step: int, evaluated: Dict[str, Any]) -> None:
    if tensorboard is None:
        return
    writer = tensorboard.writer
    writer.add_scalar("summary/step_accuracy", evaluated["step_accuracy"], step)
    writer.add_scalar("summary/ece", evaluated["ece"], step)
    for kind in ("novelty", "novelty_external"):
        if evaluated[kind]:
            for score, values in evaluated[kind]["scores"].items():
                for name in ("auroc", "aupr", "fpr95"):
                    writer.add_scalar(f"{kind}/{score}_{name}", values[name], step)
