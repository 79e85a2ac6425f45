"""Aggregate run directories into a Markdown table (mean ± std over the seeds of one setting).

Runs are grouped by their whole resolved config (``config.yaml`` in the run directory)
except the keys that only choose the seed or do not change results (``run``, ``seed``,
``threads``, ``logging``, ``cache``), so runs that differ in any hyperparameter are never
averaged together; when several groups are shown, each row names the keys that set it apart.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import yaml

from clap4cl.errors import UserError

COLUMNS = (
    ("Avg", "avg_incremental_accuracy", 100.0),
    ("Last", "last_accuracy", 100.0),
    ("BWT", "bwt", 100.0),
    ("ECE", "ece_last", 100.0),
    ("AUROC", "auroc_mean", 100.0),
    ("FPR95", "fpr95_mean", 100.0),
)
# Keys of results.json the table reads, with the types they must have.
REQUIRED = {"method": str, "dataset": str, "run": int, "avg_incremental_accuracy": (float, int),
            "last_accuracy": (float, int), "ece": list}
NOT_A_SETTING = ("run", "seed", "threads", "logging", "cache")


def load_results(run_dir: Path) -> Dict:
    """``run_dir/results.json``, checked to be a complete clap4cl results document."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise UserError(f"{str(run_dir)!r} has no results.json: pass run directories written by clap4cl run")
    try:
        results = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = "it is empty" if not path.stat().st_size else f"it is not valid JSON ({exc.__class__.__name__})"
        raise UserError(f"cannot read {str(path)!r}: {reason}; rerun clap4cl run into that directory") from None
    if not isinstance(results, dict):
        raise UserError(f"{str(path)!r} is not a clap4cl results file (a JSON object is expected)")
    for key, kind in REQUIRED.items():
        if not isinstance(results.get(key), kind) or isinstance(results.get(key), bool):
            raise UserError(f"{str(path)!r} is not a complete clap4cl results file: key {key!r} "
                            f"is missing or not a {getattr(kind, '__name__', 'number')}; "
                            f"rerun clap4cl run into that directory")
    return results


def read_run_config(run_dir: Path) -> Dict[str, Any]:
    """``run_dir/config.yaml`` as a dict ({} when there is none)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return {}
    try:
        config = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        raise UserError(f"cannot read {str(path)!r}: it is not valid YAML; "
                        f"rerun clap4cl run into that directory") from None
    return config if isinstance(config, dict) else {}


def run_setting(config: Dict[str, Any], results: Dict) -> Dict[str, Any]:
    """The run's config as dotted keys minus the seed-only keys; from results.json for run
    directories without a config.yaml."""
    if not config:
        config = {"method": results["method"], "dataset": {"name": results["dataset"]},
                  "backbone": {"arch": results.get("backbone")},
                  "eval": {"context": results.get("eval_context")},
                  "n_experiences": results.get("n_experiences")}
    return {k: v for k, v in _flatten(config).items() if k.split(".")[0] not in NOT_A_SETTING}


def _flatten(config: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _row_values(results: Dict) -> Dict[str, float]:
    novelty = results.get("novelty") or []
    values = dict(results)
    values["ece_last"] = results["ece"][-1] if results.get("ece") else None
    values["auroc_mean"] = float(np.mean([n["auroc"] for n in novelty])) if novelty else None
    values["fpr95_mean"] = float(np.mean([n["fpr95"] for n in novelty])) if novelty else None
    return values


def _cell(values: List[float], scale: float) -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def group_runs(run_dirs: Sequence[Path]) -> List[Tuple[Dict[str, Any], List[Dict]]]:
    """[(setting, [results of its runs])], refusing two runs of one setting with the same seed."""
    groups: Dict[str, Tuple[Dict[str, Any], list]] = defaultdict(lambda: ({}, []))
    for d in run_dirs:
        results = load_results(d)
        config = read_run_config(d)
        setting = run_setting(config, results)
        key = json.dumps(setting, sort_keys=True, default=str)
        groups[key][0].update(setting)
        groups[key][1].append((Path(d), results, (results["run"], config.get("seed"))))
    for setting, runs in groups.values():
        seen: Dict[Any, Path] = {}
        for d, results, seed in runs:
            if seed in seen:
                raise UserError(f"{str(seen[seed])!r} and {str(d)!r} are the same setting with the "
                                f"same run {results['run']}: pass each seed once")
            seen[seed] = d
    return [(setting, [r for _, r, _ in runs]) for setting, runs in groups.values()]


def markdown_report(run_dirs: Sequence[Path]) -> str:
    """One row per setting; values in percent, mean ± std over its runs.

    With several settings, the last column names the config keys whose values set this
    row apart from the others (e.g. ``clap.lr=0.001``).
    """
    groups = group_runs(run_dirs)
    differing = sorted({k for s, _ in groups for k in s
                        if len({json.dumps(g.get(k), default=str) for g, _ in groups}) > 1})
    header = ("| method | dataset | backbone | context | runs | "
              + " | ".join(c[0] for c in COLUMNS) + " | differs |")
    lines = [header, "|" + "---|" * (6 + len(COLUMNS))]
    for setting, runs in sorted(groups, key=lambda g: json.dumps(g[0], sort_keys=True, default=str)):
        first = runs[0]
        rows = [_row_values(r) for r in runs]
        cells = [_cell([r.get(key) for r in rows], scale) for _, key, scale in COLUMNS]
        apart = ", ".join(f"{k}={setting.get(k)}" for k in differing
                          if k not in ("method", "dataset.name")) or "–"
        lines.append(f"| {first['method']} | {first['dataset']} | {first.get('backbone') or '–'} | "
                     f"{first.get('eval_context') or '–'} | {len(runs)} | "
                     + " | ".join(cells) + f" | {apart} |")
    return "\n".join(lines)
