"""Evaluation on labelled cases: ``evaluate(scorer_or_model, cases) -> EvaluationReport``.

Figures, all from the results the ``Scorer`` returns:

- AUROC of ``overall`` for each manipulation kind against the clean cases,
  and for all manipulated cases together;
- AUROC of each head: ``1 - consistency`` for the inconsistent kinds
  (wrong-patient, finding-injected, finding-removed) against clean, and
  ``synthetic`` for the pixel kinds (synthetic, finding-injected, finding-removed);
- false-positive rate on clean cases at the bundle threshold (``flagged``),
  and the detection rate per kind at that threshold;
- expected calibration error (15 equal-width bins) of each head against its
  target and of ``overall`` against "manipulated".

A ``LoadedModel`` is scored with the model alone (``Scorer(checks=False)``);
pass a ``Scorer`` to include the rule-based checks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from fusion.errors import TrainingDataError
from fusion.features import CaseFeatures
from fusion.model.bundle import LoadedModel
from fusion.result import CrossCheckResult

if TYPE_CHECKING:
    from fusion.scorer import Scorer
    from fusion.train import LabelledCase

__all__ = [
    "DetectionFigures",
    "EvaluationReport",
    "KindFigures",
    "ScorePoint",
    "auroc",
    "detection_figures",
    "evaluate",
    "expected_calibration_error",
]


@dataclass(frozen=True)
class EvaluationReport:
    model: str
    sha256: str
    threshold: float
    counts: dict[str, int]  # "clean" and each manipulation kind
    auroc_overall: dict[str, float | None]  # per kind, and "all"
    auroc_consistency: float | None
    auroc_synthetic: float | None
    detection_rate: dict[str, float]  # per kind: flagged fraction
    false_positive_rate: float | None  # flagged clean cases
    ece_consistency: float | None
    ece_synthetic: float | None
    ece_overall: float | None
    counts_by_family: dict[str, int] = field(default_factory=dict)  # manipulated cases per generator family
    auroc_by_family: dict[str, float | None] = field(default_factory=dict)  # overall, family vs clean
    #: clean cases whose image is also filed under another patient (a wrong-patient case's donor):
    #: the duplicate check rightly flags them, so the false-positive rate is also given without them
    reused_clean: int = 0
    false_positive_rate_unreused: float | None = None
    #: one per case, for plots: (kind or "clean", family, overall, consistency, synthetic, consistency target)
    points: tuple[ScorePoint, ...] = field(default=(), repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("points")
        return data

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)

    def to_markdown(self) -> str:
        def f(x: float | None) -> str:
            return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"

        lines = [
            f"Model `{self.model}` (sha256 `{self.sha256[:12]}`), threshold {self.threshold:.4f}.",
            "",
            "| cases | n | AUROC overall vs clean | flagged |",
            "|---|---:|---:|---:|",
        ]
        for kind, n in sorted(self.counts.items(), key=lambda kv: (kv[0] != "clean", kv[0])):
            if kind == "clean":
                lines.append(f"| clean | {n} | - | {f(self.false_positive_rate)} (false positives) |")
            else:
                lines.append(
                    f"| {kind} | {n} | {f(self.auroc_overall.get(kind))} "
                    f"| {f(self.detection_rate.get(kind))} |"
                )
        if self.counts_by_family:
            family_rows = [
                f"| {family} | {n} | {f(self.auroc_by_family.get(family))} |"
                for family, n in sorted(self.counts_by_family.items())
            ]
            lines_family = [
                "",
                "| generator family | n | AUROC overall vs clean |",
                "|---|---:|---:|",
                *family_rows,
            ]
        else:
            lines_family = []
        lines += [
            f"| all manipulated | {sum(n for k, n in self.counts.items() if k != 'clean')} | "
            f"{f(self.auroc_overall.get('all'))} | - |",
            "",
            *(
                [
                    f"- false-positive rate without the {self.reused_clean} clean studies whose image is "
                    f"also filed under another patient (flagged by the duplicate check, as they should be): "
                    f"{f(self.false_positive_rate_unreused)}"
                ]
                if self.reused_clean
                else []
            ),
            f"- AUROC consistency head (inconsistent kinds vs clean): {f(self.auroc_consistency)}",
            f"- AUROC synthetic head (pixel kinds vs clean): {f(self.auroc_synthetic)}",
            f"- expected calibration error (15 bins): consistency {f(self.ece_consistency)}, "
            f"synthetic {f(self.ece_synthetic)}, overall {f(self.ece_overall)}",
            *lines_family,
        ]
        return "\n".join(lines)


@dataclass(frozen=True)
class ScorePoint:
    """One scored case, as the plots need it."""

    kind: str  # "clean" or the manipulation
    family: str | None
    overall: float
    consistency: float | None
    synthetic: float | None
    consistency_target: float | None
    synthetic_target: float


@dataclass(frozen=True)
class KindFigures:
    """One manipulation kind: how many, AUROC of ``overall`` against clean, how many flagged."""

    kind: str
    count: int
    auroc: float | None
    flagged: int


@dataclass(frozen=True)
class DetectionFigures:
    """Detection against a manifest, from results alone (the demo's and the CLI's table)."""

    per_kind: tuple[KindFigures, ...]
    clean_count: int
    clean_flagged: int
    false_positive_rate: float | None
    manipulated_count: int
    manipulated_flagged: int
    auroc_all: float | None


def detection_figures(
    results: Sequence[CrossCheckResult], manipulations: Sequence[str | None]
) -> DetectionFigures:
    """Per manipulation kind (``None`` = clean): AUROC of ``overall`` vs clean and flagged counts."""
    if len(results) != len(manipulations):
        raise ValueError("one manipulation (or None) per result")
    kinds = np.array([m or "clean" for m in manipulations])
    overall = np.array([r.scores.overall for r in results], float)
    flagged = np.array([r.flagged for r in results], bool)
    clean = kinds == "clean"
    per_kind = []
    for kind in sorted(set(kinds.tolist()) - {"clean"}):
        this = kinds == kind
        sel = clean | this
        per_kind.append(
            KindFigures(kind, int(this.sum()), auroc(this[sel], overall[sel]), int(flagged[this].sum()))
        )
    return DetectionFigures(
        per_kind=tuple(per_kind),
        clean_count=int(clean.sum()),
        clean_flagged=int(flagged[clean].sum()),
        false_positive_rate=float(flagged[clean].mean()) if clean.any() else None,
        manipulated_count=int((~clean).sum()),
        manipulated_flagged=int(flagged[~clean].sum()),
        auroc_all=auroc(~clean, overall),
    )


def auroc(labels: ArrayLike, scores: ArrayLike) -> float | None:
    """``roc_auc_score``, or None when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels, float)
    s = np.asarray(scores, float)
    if y.size == 0 or y.min() == y.max():
        return None
    return float(roc_auc_score(y, s))


def expected_calibration_error(probabilities: ArrayLike, labels: ArrayLike, bins: int = 15) -> float | None:
    p = np.asarray(probabilities, float)
    y = np.asarray(labels, float)
    if p.size == 0:
        return None
    which = np.minimum((p * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(p[sel].mean() - y[sel].mean())
    return float(ece)


def evaluate(
    scorer_or_model: Scorer | LoadedModel,
    labelled_cases: Sequence[LabelledCase],
    *,
    features: Sequence[CaseFeatures] | None = None,
    batch_size: int = 32,
) -> EvaluationReport:
    """Score ``labelled_cases`` (reusing ``features`` when given) and compute the figures."""
    from fusion.scorer import Scorer

    if not labelled_cases:
        raise TrainingDataError("no cases to evaluate")
    scorer = scorer_or_model if isinstance(scorer_or_model, Scorer) else Scorer(scorer_or_model, checks=False)
    cases = [lc.case for lc in labelled_cases]
    if features is None:
        results = scorer.score_many(cases, batch_size=batch_size)
    else:
        results = []
        for s in range(0, len(cases), batch_size):
            results += scorer.score_features(cases[s : s + batch_size], features[s : s + batch_size])
    kinds = [lc.manipulation or "clean" for lc in labelled_cases]
    counts: dict[str, int] = {}
    for k in kinds:
        counts[k] = counts.get(k, 0) + 1
    overall = np.array([r.scores.overall for r in results])
    clean = np.array([k == "clean" for k in kinds])
    figures = detection_figures(results, [lc.manipulation for lc in labelled_cases])
    auroc_overall: dict[str, float | None] = {k.kind: k.auroc for k in figures.per_kind}
    auroc_overall["all"] = figures.auroc_all
    detection = {k.kind: k.flagged / k.count for k in figures.per_kind}

    c_scores, c_labels, s_scores, s_labels = [], [], [], []
    c_auc: tuple[list[float], list[float]] = ([], [])  # clean vs inconsistent kinds only
    s_auc: tuple[list[float], list[float]] = ([], [])  # clean vs pixel kinds only
    for lc, r in zip(labelled_cases, results, strict=True):
        target = lc.consistency_target
        if target is not None and r.scores.consistency is not None:
            c_scores.append(r.scores.consistency)
            c_labels.append(target)
            if lc.manipulation is None or target == 0.0:
                c_auc[0].append(1.0 - target)
                c_auc[1].append(1.0 - r.scores.consistency)
        if r.scores.synthetic is not None:
            s_scores.append(r.scores.synthetic)
            s_labels.append(lc.synthetic_target)
            if lc.manipulation is None or lc.synthetic_target == 1.0:
                s_auc[0].append(lc.synthetic_target)
                s_auc[1].append(r.scores.synthetic)
    by_family: dict[str, list[float]] = {}
    for lc, r in zip(labelled_cases, results, strict=True):
        if lc.family is not None and lc.manipulation is not None:
            by_family.setdefault(lc.family, []).append(r.scores.overall)
    clean_overall = list(overall[clean])
    reused = np.array([lc.image_reused for lc in labelled_cases], bool)
    unreused_clean = clean & ~reused
    flagged = np.array([r.flagged for r in results], bool)
    points = tuple(
        ScorePoint(
            kind=lc.manipulation or "clean",
            family=lc.family,
            overall=r.scores.overall,
            consistency=r.scores.consistency,
            synthetic=r.scores.synthetic,
            consistency_target=lc.consistency_target,
            synthetic_target=lc.synthetic_target,
        )
        for lc, r in zip(labelled_cases, results, strict=True)
    )
    return EvaluationReport(
        model=scorer.model_info.name,
        sha256=scorer.model_info.sha256,
        threshold=scorer.threshold,
        counts=counts,
        auroc_overall=auroc_overall,
        auroc_consistency=auroc(*c_auc),
        auroc_synthetic=auroc(*s_auc),
        detection_rate=detection,
        false_positive_rate=figures.false_positive_rate,
        ece_consistency=expected_calibration_error(c_scores, c_labels),
        ece_synthetic=expected_calibration_error(s_scores, s_labels),
        ece_overall=expected_calibration_error(overall, ~clean),
        counts_by_family={k: len(v) for k, v in by_family.items()},
        reused_clean=int((clean & reused).sum()),
        false_positive_rate_unreused=float(flagged[unreused_clean].mean()) if unreused_clean.any() else None,
        auroc_by_family={
            k: auroc([0.0] * len(clean_overall) + [1.0] * len(v), clean_overall + v)
            for k, v in by_family.items()
        },
        points=points,
    )
