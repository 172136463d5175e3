"""ROC curves and reliability diagrams of an evaluation, written as PNG for the model card.

    report = evaluate(scorer, cases)
    write_roc_png(report, out / "roc.png")
    write_reliability_png(report, out / "reliability.png")

Uses matplotlib's non-interactive Agg backend; nothing opens a window.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_curve

from fusion.errors import TrainingDataError
from fusion.evaluate import EvaluationReport

__all__ = ["reliability_bins", "write_reliability_png", "write_roc_png"]


def write_roc_png(report: EvaluationReport, path: Path) -> Path:
    """ROC of ``overall`` for each manipulation kind against the clean cases, and all together."""
    clean = [p.overall for p in report.points if p.kind == "clean"]
    if not clean or len(clean) == len(report.points):
        raise TrainingDataError("ROC curves need both clean and manipulated cases")
    kinds = sorted({p.kind for p in report.points} - {"clean"})
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=110)
    for kind in [*kinds, "all"]:
        positives = [
            p.overall for p in report.points if p.kind == kind or (kind == "all" and p.kind != "clean")
        ]
        if not positives:
            continue
        labels = np.r_[np.zeros(len(clean)), np.ones(len(positives))]
        fpr, tpr, _ = roc_curve(labels, np.r_[clean, positives])
        auc = report.auroc_overall.get(kind)
        label = f"{kind} (n={len(positives)}, AUROC {auc:.3f})" if auc is not None else kind
        ax.plot(
            fpr, tpr, lw=2.2 if kind == "all" else 1.3, color="black" if kind == "all" else None, label=label
        )
    fpr_at = report.false_positive_rate
    if fpr_at is not None:
        ax.axvline(fpr_at, color="grey", ls=":", lw=1, label=f"threshold: FPR {fpr_at:.3f}")
    ax.plot([0, 1], [0, 1], color="lightgrey", lw=1, ls="--")
    ax.set(
        xlabel="false positive rate (clean cases flagged)",
        ylabel="true positive rate",
        title=f"{report.model}: overall score, each kind vs clean",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower right", fontsize=7.5)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def reliability_bins(
    probabilities: list[float], targets: list[float], bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean predicted, observed frequency, count) per equal-width bin; empty bins are NaN."""
    p, y = np.asarray(probabilities, float), np.asarray(targets, float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    mean_p, freq, count = np.full(bins, np.nan), np.full(bins, np.nan), np.zeros(bins)
    for b in range(bins):
        sel = index == b
        count[b] = sel.sum()
        if sel.any():
            mean_p[b], freq[b] = p[sel].mean(), y[sel].mean()
    return mean_p, freq, count


def write_reliability_png(report: EvaluationReport, path: Path, bins: int = 10) -> Path:
    """Reliability diagrams of the consistency and synthetic heads and of ``overall``."""
    heads = {
        "consistency": (
            [
                p.consistency
                for p in report.points
                if p.consistency is not None and p.consistency_target is not None
            ],
            [
                p.consistency_target
                for p in report.points
                if p.consistency is not None and p.consistency_target is not None
            ],
            report.ece_consistency,
        ),
        "synthetic": (
            [p.synthetic for p in report.points if p.synthetic is not None],
            [p.synthetic_target for p in report.points if p.synthetic is not None],
            report.ece_synthetic,
        ),
        "overall (manipulated)": (
            [p.overall for p in report.points],
            [0.0 if p.kind == "clean" else 1.0 for p in report.points],
            report.ece_overall,
        ),
    }
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2), dpi=110)
    for ax, (name, (probs, targets, ece)) in zip(axes, heads.items(), strict=True):
        ax.plot([0, 1], [0, 1], color="lightgrey", ls="--", lw=1)
        if probs:
            mean_p, freq, count = reliability_bins(
                [float(x) for x in probs], [float(t) for t in targets if t is not None], bins
            )
            ok = count > 0
            ax.plot(mean_p[ok], freq[ok], marker="o", lw=1.5)
            ax2 = ax.twinx()
            ax2.bar((np.arange(bins) + 0.5) / bins, count, width=1 / bins, alpha=0.15, color="grey")
            ax2.set_yticks([])
        ece_text = "n/a" if ece is None else f"{ece:.3f}"
        ax.set(
            title=f"{name}: ECE {ece_text}",
            xlabel="predicted probability",
            ylabel="observed frequency",
            xlim=(0, 1),
            ylim=(0, 1),
        )
    fig.suptitle(f"{report.model}: calibration ({len(report.points)} cases)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
