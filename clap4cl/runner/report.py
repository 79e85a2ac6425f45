"""Aggregate run directories (mean ± std over seeds) into a Markdown table."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from clap4cl.errors import UserError

COLUMNS = (
    ("Avg", "avg_incremental_accuracy", 100.0),
    ("Last", "last_accuracy", 100.0),
    ("BWT", "bwt", 100.0),
    ("ECE", "ece_last", 100.0),
    ("AUROC", "auroc_mean", 100.0),
    ("FPR95", "fpr95_mean", 100.0),
)


def load_results(run_dir: Path) -> Dict:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise UserError(f"{str(run_dir)!r} has no results.json: pass run directories written by clap4cl run")
    return json.loads(path.read_text())


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


def markdown_report(run_dirs: Sequence[Path]) -> str:
    """One row per (method, dataset, backbone, eval context); values in percent, mean ± std over runs."""
    groups = defaultdict(list)
    for d in run_dirs:
        r = load_results(d)
        groups[(r["method"], r["dataset"], r.get("backbone"), r.get("eval_context"))].append(_row_values(r))
    header = "| method | dataset | backbone | context | runs | " + " | ".join(c[0] for c in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (5 + len(COLUMNS))]
    for (method, dataset, backbone, context), rows in sorted(groups.items(), key=lambda kv: str(kv[0])):
        cells = [_cell([r[key] for r in rows], scale) for _, key, scale in COLUMNS]
        lines.append(f"| {method} | {dataset} | {backbone or '–'} | {context or '–'} | {len(rows)} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)
