"""One class-incremental experiment from a resolved config: the engine of ``clap4cl run``.

The loop only: inputs (``runner.inputs``), the strategy (``runner.assemble``), evaluation
(``runner.evaluate``), results.json (``runner.results``), the run directory and resume
(``runner.rundir``, ``runner.checkpoint``), logs (``runner.logs``), threads
(``runner.threads``) and torchrun rules (``runner.torchrun``) each live in their own module.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Optional

from avalanche.training.determinism.rng_manager import RNGManager

from clap4cl import distributed
from clap4cl.features.cache import FeatureCache
from clap4cl.runner.assemble import build_strategy
from clap4cl.runner.evaluate import LogitsCollector, evaluate_step
from clap4cl.runner.inputs import (SYNTHETIC_LOGIT_SCALE, build_benchmark, cache_dir,
                                   check_cache_dir, check_device, check_novelty_dataset,
                                   load_backbone, load_external_ood, null_image_embedding,
                                   stream_text_features)
from clap4cl.runner.logs import (RunProgress, log_step_scalars, make_evaluator, tensorboard_logger,
                                 write_plots)
from clap4cl.runner.results import Timer, summarise
from clap4cl.runner.threads import (phase_threads, run_eval_is_heavy, run_training_is_heavy,
                                    single_interop_thread)
from clap4cl.runner.torchrun import run_seed, start_distributed
from clap4cl.runner.rundir import (check_run_dir, record_changes, release_freed_memory,
                                   restore_results, resume, save_run_checkpoint,
                                   write_json_atomic, write_run_config)
from strategies.plugins.registry import plugin_name


def run_experiment(config: Dict[str, Any], output, *, progress: Optional[bool] = None) -> Dict[str, Any]:
    """Run one class-incremental experiment and write the run directory.

    Returns the ``results.json`` document. After every experience the run directory gets
    ``results.json`` and a checkpoint (model, memory, plugin, RNG and clock states and the
    results so far, as plain data: ``runner.checkpoint``); running again on the same
    directory with the same config resumes after the last finished experience and ends
    with the same results as an uninterrupted run.

    Under ``torchrun`` every rank calls this: extraction is sharded over the ranks,
    training is data-parallel (``strategies.ReplayTemplate``), and rank 0 alone evaluates
    and writes the run directory; the other ranks return an empty dict.
    """
    output = Path(output)
    seed = run_seed(config)
    check_device(config)
    start_distributed(config, seed)
    main = distributed.is_main()
    progress = (config["logging"]["progress"] if progress is None else progress) and main
    # Every check before anything is written: config.yaml comes once the inputs are built.
    changes = check_run_dir(output, config) if main else []
    check_cache_dir(config)
    check_novelty_dataset(config)
    distributed.barrier()
    timer = Timer()
    cache = FeatureCache(cache_dir(config))
    threads = config["threads"]
    single_interop_thread(threads)
    with timer.phase("extract"), phase_threads("extract", threads):
        backbone = load_backbone(config)
        benchmark = build_benchmark(config, backbone, cache, progress)
        text = stream_text_features(config, benchmark, backbone, cache)
    heavy = run_training_is_heavy(config, len(benchmark.class_names), text)
    heavy_eval = run_eval_is_heavy(config, len(benchmark.class_names), text)
    logit_scale = backbone.logit_scale if backbone is not None else SYNTHETIC_LOGIT_SCALE
    # Seeded after extraction, so results do not depend on whether the cache was warm.
    RNGManager.set_random_seeds(seed)
    if main:
        write_run_config(output, config)
    evaluator, _ = make_evaluator(output, config, write_tensorboard=main)
    strategy = build_strategy(config, text, logit_scale, evaluator,
                              plugins=[LogitsCollector(config["eval"]["mc_samples"],
                                                       config["eval"]["mean_only"])],
                              benchmark=benchmark, backbone=backbone)
    null_image = null_image_embedding(backbone, benchmark)
    if null_image is not None and hasattr(strategy.model, "set_null_image"):
        strategy.model.set_null_image(null_image)
    with phase_threads("extract", threads):
        external_ood = load_external_ood(config, backbone, cache, progress)
    strategy, start = resume(strategy, output, timer, benchmark.train_stream)
    state = strategy.run_state
    record_changes(state, changes, start)
    collector = next(p for p in strategy.plugins if isinstance(p, LogitsCollector))
    tensorboard = tensorboard_logger(strategy)
    results = state["results"]
    bar = RunProgress(len(benchmark.train_stream), start, enabled=progress)
    for step in range(start, len(benchmark.train_stream)):
        bar.start(step, "train")
        with timer.phase("train"), phase_threads("train", threads, heavy=heavy):
            strategy.train(benchmark.train_stream[step])
        release_freed_memory()
        bar.finish(step, "train")
        if not main:
            continue
        bar.start(step, "eval")
        with timer.phase("eval"), phase_threads("eval", threads, heavy=heavy_eval):
            evaluated = evaluate_step(strategy, collector, benchmark, step, config, seed,
                                      external_ood)
        release_freed_memory()
        bar.finish(step, "eval")
        latest = evaluated.pop("plot_data")
        state["plot_data"]["reliability"] = latest["reliability"]
        for key in ("roc", "roc_external"):   # the last step that has them
            state["plot_data"][key] = latest[key] or state["plot_data"].get(key)
        state["rows"].append(evaluated["row"])
        state["steps"].append(evaluated)
        results = summarise(config, benchmark, state["rows"], state["steps"], timer,
                            completed=step + 1)
        if state.get("config_changes"):
            results["config_changes_on_resume"] = state["config_changes"]
        log_step_scalars(tensorboard, step, results)
        state["results"] = results
        state["timer"] = dict(timer.seconds)
        save_run_checkpoint(strategy, output)
        write_json_atomic(output / "results.json", results)
    bar.close()
    if not main:
        return {}
    restore_results(output, results)
    write_plots(output, results, state["plot_data"], tensorboard)
    if tensorboard is not None:
        tensorboard.writer.flush()
    regularizers = [p for p in config["plugins"] if plugin_name(p) != "modality_dropout"]
    if config["eval"]["baseline_without_regularizers"] and regularizers:
        results = add_baseline(config, output, results, progress)
        write_json_atomic(output / "results.json", results)
    return results


def add_baseline(config, output: Path, results: Dict[str, Any], progress: bool) -> Dict[str, Any]:
    """Run the same experiment without the regularising plugins (modality dropout kept, so
    subset predictions stay in distribution) into ``output/baseline`` and put its
    reliability and accuracy beside the run's: the plugins' "before" and "after"."""
    plain = copy.deepcopy(config)
    plain["plugins"] = [p for p in config["plugins"] if plugin_name(p) == "modality_dropout"]
    base = run_experiment(plain, output / "baseline", progress=progress)
    last = lambda r: (r["reliability"] or [None])[-1]  # noqa: E731
    results = dict(results)
    results["baseline"] = {k: base[k] for k in ("step_accuracy", "last_accuracy",
                                                "avg_incremental_accuracy", "ece", "reliability")}
    results["plugin_effect"] = {
        "baseline_plugins": [plugin_name(p) for p in plain["plugins"]],
        "vrr_before": last(base) and last(base)["VRR"],
        "vrr_after": last(results) and last(results)["VRR"],
        "last_accuracy_before": base["last_accuracy"],
        "last_accuracy_after": results["last_accuracy"],
    }
    return results
