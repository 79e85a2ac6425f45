"""PNG plots of a run: accuracy per step, the accuracy matrix, reliability and novelty ROC.

Every function returns a matplotlib Figure (for TensorBoard's ``add_figure``);
``run_figures`` makes the four figures of a run and ``save_figures`` writes them as PNGs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from clap4cl.evaluation.metrics import CalibrationBins, calibration_bins  # noqa: E402

PLOT_FILES = ("accuracy_per_step.png", "accuracy_matrix.png", "reliability.png", "novelty_roc.png")


def accuracy_per_step(step_accuracy: Sequence[float], title: str = "") -> plt.Figure:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    steps = np.arange(1, len(step_accuracy) + 1)
    ax.plot(steps, 100 * np.asarray(step_accuracy), marker="o")
    ax.set(xlabel="experiences learned", ylabel="accuracy on seen classes (%)", ylim=(0, 100),
           xticks=steps, title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def accuracy_matrix(matrix: List[List[Optional[float]]], title: str = "") -> plt.Figure:
    values = np.array([[np.nan if v is None else 100 * v for v in row] for row in matrix])
    fig, ax = plt.subplots(figsize=(5, 4))
    image = ax.imshow(values, vmin=0, vmax=100, cmap="viridis")
    for (t, k), v in np.ndenumerate(values):
        if not np.isnan(v):
            ax.text(k, t, f"{v:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if v < 60 else "black")
    ax.set(xlabel="test data of experience", ylabel="after training experience", title=title)
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    fig.tight_layout()
    return fig


def reliability_diagram(bins: CalibrationBins, title: str = "") -> plt.Figure:
    """Accuracy and the gap to mean confidence per bin of :func:`calibration_bins` (the
    bins the reported ECE sums over); the bin of confidences of exactly 1.0 is drawn as
    a narrow bar just right of 1."""
    n = bins.n_bins
    width = 1.0 / n
    centres = np.append((np.arange(n) + 0.5) * width, 1.0 + width / 4)
    widths = np.append(np.full(n, width), width / 2)
    filled = bins.counts > 0
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.bar(centres[filled], bins.accuracy[filled], width=widths[filled], edgecolor="black",
           label="accuracy")
    ax.bar(centres[filled], (bins.confidence - bins.accuracy)[filled],
           bottom=bins.accuracy[filled], width=widths[filled], color="tab:red", alpha=0.35,
           label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1 + width / 2), ylim=(0, 1),
           title=f"{title} (ECE {100 * bins.ece:.2f} %)" if title else f"ECE {100 * bins.ece:.2f} %")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def novelty_roc(curves: Dict[str, Tuple[np.ndarray, np.ndarray]],
                auroc_per_step: Optional[Dict[str, List[Tuple[int, float]]]] = None,
                title: str = "", external: Optional[Dict[str, Tuple[np.ndarray, np.ndarray]]] = None,
                external_auroc_per_step: Optional[Dict[str, List[Tuple[int, float]]]] = None,
                external_name: str = "external") -> plt.Figure:
    """ROC curves at the last step with future classes, ``curves[name] = (in-distribution
    scores, novel scores)``; with ``external`` (the ``eval.novelty_dataset`` scores at the
    last step) a second panel of its ROC curves; last, the AUROC of each score per step
    (future classes solid, the external dataset dashed)."""
    panels = 3 if external else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 4.2))
    ax, ax_steps = axes[0], axes[-1]
    _roc_panel(ax, curves, f"{title}: future classes, last step" if title else
               "future classes, last step")
    if external:
        _roc_panel(axes[1], external, f"{external_name}, last step")
    for points_by_score, style, suffix in ((auroc_per_step, "-", ""),
                                           (external_auroc_per_step, "--", f" ({external_name})")):
        for name, points in (points_by_score or {}).items():
            steps, values = zip(*points)
            ax_steps.plot(np.asarray(steps) + 1, 100 * np.asarray(values), style, marker="o",
                          label=name + suffix)
            ax_steps.set_xticks(np.asarray(steps) + 1)
    ax_steps.axhline(50, color="k", linestyle=":", linewidth=1)
    ax_steps.set(xlabel="experiences learned", ylabel="AUROC (%)", ylim=(0, 100), title="per step")
    for axis in axes:
        if axis.get_legend_handles_labels()[0]:
            axis.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig


def _roc_panel(ax, curves, title: str) -> None:
    for name, (id_scores, ood_scores) in curves.items():
        y = np.concatenate([np.ones(len(id_scores)), np.zeros(len(ood_scores))])
        fpr, tpr, _ = roc_curve(y, np.concatenate([id_scores, ood_scores]))
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "k:", linewidth=1)
    ax.set(xlabel="false positive rate (novel accepted)", ylabel="true positive rate (seen kept)",
           title=title)


def run_figures(results: Dict, reliability: Tuple[np.ndarray, np.ndarray],
                roc_curves: Optional[Dict], roc_external: Optional[Dict] = None) -> Dict[str, plt.Figure]:
    """The four figures of a run, keyed by file name (``novelty_roc.png`` has a panel for
    the external novelty dataset when the run has one)."""
    name = f"{results['method']} on {results['dataset']}"
    figures = {
        "accuracy_per_step.png": accuracy_per_step(results["step_accuracy"], name),
        "accuracy_matrix.png": accuracy_matrix(results["accuracy_matrix"], name),
        "reliability.png": reliability_diagram(calibration_bins(*reliability), f"{name}, last step"),
        "novelty_roc.png": novelty_roc(
            roc_curves or {}, _auroc_per_step(results["novelty"]), f"{name}: novelty",
            external=roc_external, external_auroc_per_step=_auroc_per_step(results["novelty_external"]),
            external_name=results.get("novelty_external_dataset") or "external"),
    }
    return figures


def _auroc_per_step(entries: List[Dict]) -> Dict[str, List[Tuple[int, float]]]:
    if not entries:
        return {}
    return {score: [(e["step"], e["scores"][score]["auroc"]) for e in entries]
            for score in entries[0]["scores"]}


def save_figures(figures: Dict[str, plt.Figure], directory: Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for file_name, fig in figures.items():
        fig.savefig(directory / file_name, dpi=100)
        plt.close(fig)
