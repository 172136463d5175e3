"""``Scorer``: preprocess -> no-grad predict -> postprocess, returning ``CrossCheckResult``.

The service, the CLI and the evaluation all score through it, so they agree.
Postprocessing: calibrated probabilities (`fusion.calibrate`), the rule-based
findings of `fusion.checks`, model findings (``model.inconsistent`` naming the
record items that contradict the image most, ``model.synthetic``), and
``overall`` (noisy-OR of p(inconsistent) and p(synthetic), raised to at least
the threshold by any critical finding). ``flagged = overall >= threshold``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from connectors.domain import Case, SiteProfile
from fusion.calibrate import overall_score
from fusion.checks import CheckContext, finding_order, run_checks
from fusion.features import CaseFeatures
from fusion.model.bundle import LoadedModel, default_bundle_path, load_bundle
from fusion.model.factory import resolve_device
from fusion.result import CaseRef, CrossCheckResult, Evidence, Finding, ModelInfo, Scores, Severity

__all__ = ["Prediction", "Scorer", "with_check_findings"]

log = logging.getLogger(__name__)

TOP_CONTRIBUTIONS = 5
CRITICAL_PROBABILITY = 0.95


@dataclass(frozen=True)
class Prediction:
    """The model's calibrated view of one case (before the rule-based checks)."""

    p_consistent: float | None  # None without a record or without pixels
    p_synthetic: float | None  # None without pixels
    contributions: NDArray[np.float32]  # per real record token, positive = contradicts the image
    heatmap: NDArray[np.float32]  # (h, h) tamper logits over the forensic crop


class Scorer:
    """Scores cases with a loaded bundle (default: ``fusion/bundles/default``).

    ``site`` and ``hash_index`` go to the rule-based checks' ``CheckContext``;
    ``checks=False`` scores with the model alone (what the model card reports).
    """

    def __init__(
        self,
        bundle: LoadedModel | None = None,
        *,
        device: str | torch.device | None = None,
        site: SiteProfile | None = None,
        hash_index: Any = None,
        checks: bool = True,
    ) -> None:
        if bundle is None:
            bundle = load_bundle(default_bundle_path(), device=device)
        elif device is not None and resolve_device(device) != bundle.device:
            bundle.model.to(resolve_device(device))
            bundle = LoadedModel(**{**bundle.__dict__, "device": resolve_device(device)})
        self.bundle = bundle
        self.site = site
        self.hash_index = hash_index
        self._checks_enabled = checks
        self._run_checks: Callable[[Case], tuple[Finding, ...]] | None = None

    def with_hash_index(self, hash_index: Any) -> Scorer:
        """A scorer of the same bundle and site whose duplicate check searches ``hash_index``."""
        return Scorer(self.bundle, site=self.site, hash_index=hash_index, checks=self._checks_enabled)

    @property
    def threshold(self) -> float:
        return self.bundle.calibration.threshold

    @property
    def model_info(self) -> ModelInfo:
        return self.bundle.info

    # ------------------------------------------------------------------ public
    def score(self, case: Case) -> CrossCheckResult:
        return self.score_many([case], batch_size=1)[0]

    def score_many(self, cases: Sequence[Case], batch_size: int = 16) -> list[CrossCheckResult]:
        """Score ``cases`` in batches of ``batch_size`` through the model."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        results: list[CrossCheckResult] = []
        for start in range(0, len(cases), batch_size):
            chunk = list(cases[start : start + batch_size])
            feats, feature_ms = [], []
            for case in chunk:
                t = time.perf_counter()
                feats.append(self.bundle.preprocess(case))
                feature_ms.append((time.perf_counter() - t) * 1000)
            results += self.score_features(chunk, feats, feature_ms=feature_ms)
        return results

    def score_features(
        self,
        cases: Sequence[Case],
        features: Sequence[CaseFeatures],
        *,
        feature_ms: Sequence[float] | None = None,
    ) -> list[CrossCheckResult]:
        """Score cases whose features are already extracted (training and evaluation reuse them)."""
        return [result for result, _ in self._score(cases, features, feature_ms)]

    def explain_many(
        self, cases: Sequence[Case], batch_size: int = 16
    ) -> list[tuple[CrossCheckResult, Prediction]]:
        """Like `score_many`, with each case's `Prediction` (its tamper heatmap, for `fusion.explain`)."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        out: list[tuple[CrossCheckResult, Prediction]] = []
        for start in range(0, len(cases), batch_size):
            chunk = list(cases[start : start + batch_size])
            out += self._score(chunk, [self.bundle.preprocess(c) for c in chunk], None)
        return out

    def _score(
        self, cases: Sequence[Case], features: Sequence[CaseFeatures], feature_ms: Sequence[float] | None
    ) -> list[tuple[CrossCheckResult, Prediction]]:
        if len(cases) != len(features):
            raise ValueError("one CaseFeatures per case")
        if not cases:
            return []
        t = time.perf_counter()
        predictions = self.predict(features)
        model_ms = (time.perf_counter() - t) * 1000 / len(cases)
        out = []
        for k, (case, feats, pred) in enumerate(zip(cases, features, predictions, strict=True)):
            t = time.perf_counter()
            findings = self._checks(case)
            checks_ms = (time.perf_counter() - t) * 1000
            timings = {
                "features": feature_ms[k] if feature_ms is not None else 0.0,
                "model": model_ms,
                "checks": checks_ms,
            }
            ref = CaseRef(case.patient_id, case.study_instance_uid, case.study.accession_number)
            out.append((self.assemble(ref, feats, pred, findings, timings), pred))
        return out

    @torch.no_grad()
    def predict(self, features: Sequence[CaseFeatures]) -> list[Prediction]:
        """Calibrated model outputs, no checks, for already extracted features."""
        b = self.bundle
        batch = b.preprocess.collate(features, b.device)
        output = b.model(batch)
        c_logit = output.consistency_logit.float().cpu().numpy()
        s_logit = output.synthetic_logit.float().cpu().numpy()
        contributions = output.contributions.float().cpu().numpy()
        heatmaps = output.tamper_heatmap.float().cpu().numpy()
        preds = []
        for i, f in enumerate(features):
            pc = float(b.calibration.p_consistent(c_logit[i])) if f.has_record and f.has_pixels else None
            ps = float(b.calibration.p_synthetic(s_logit[i])) if f.has_pixels else None
            preds.append(Prediction(pc, ps, contributions[i, : f.n_tokens].copy(), heatmaps[i]))
        return preds

    def _checks(self, case: Case) -> tuple[Finding, ...]:
        if not self._checks_enabled:
            return ()
        if self._run_checks is None:
            context = CheckContext(site=self.site, hash_index=self.hash_index)
            self._run_checks = lambda c: tuple(run_checks(c, context))
        return self._run_checks(case)

    def assemble(
        self,
        ref: CaseRef,
        feats: CaseFeatures,
        pred: Prediction,
        check_findings: Sequence[Finding],
        timings: dict[str, float],
    ) -> CrossCheckResult:
        """The `CrossCheckResult` of one case from its features, its `Prediction` and the rule-based
        findings (most severe first, as `fusion.checks.run_checks` orders them): what `score_many`
        does after the model, for callers that extract features and run the checks elsewhere
        (the batch sweep's worker processes). ``timings`` (ms) gets its ``total``."""
        threshold = self.threshold
        findings = list(check_findings)
        p_inc = None if pred.p_consistent is None else 1.0 - pred.p_consistent
        ranked = _ranked_contributions(feats, pred) if p_inc is not None else []
        if p_inc is not None and p_inc >= threshold:
            findings.append(_inconsistent_finding(p_inc, ranked, threshold))
        if pred.p_synthetic is not None and pred.p_synthetic >= threshold:
            findings.append(_synthetic_finding(pred.p_synthetic, pred.heatmap, threshold))
        if not feats.has_pixels and not any(f.severity is Severity.CRITICAL for f in findings):
            findings.append(
                Finding(
                    "model.pixels-unreadable",
                    Severity.CRITICAL,
                    "The image pixels could not be decoded, so the image could not be checked.",
                    (Evidence("dicom", "PixelData", uid=ref.study_instance_uid),),
                )
            )
        overall = overall_score(p_inc, pred.p_synthetic)
        critical = any(f.severity is Severity.CRITICAL for f in findings)
        if critical:
            overall = max(overall, threshold)
        timings["total"] = sum(timings.values())
        return CrossCheckResult(
            case=ref,
            scores=Scores(consistency=pred.p_consistent, synthetic=pred.p_synthetic, overall=overall),
            flagged=overall >= threshold or critical,
            threshold=threshold,
            findings=tuple(findings),
            model=self.model_info,
            timings_ms=timings,
            contributions=tuple(
                {"reference": ref, "label": label, "weight": round(w, 4)}
                for ref, label, w in ranked[:TOP_CONTRIBUTIONS]
            ),
        )


def with_check_findings(
    result: CrossCheckResult, family: str, findings: Sequence[Finding]
) -> CrossCheckResult:
    """``result`` with the findings of one family of rule checks (``duplicate``) replaced by
    ``findings``: placed where `fusion.checks.run_checks` puts them, the overall score and the
    flag derived again as `Scorer.assemble` derives them; the model's own findings unchanged.

    How a batch sweep gives a study it stored already the duplicate findings of an image it
    met later."""
    model = [f for f in result.findings if f.code.startswith("model.")]
    rules = [f for f in result.findings if not f.code.startswith(("model.", f"{family}."))]
    merged = sorted([*rules, *findings], key=finding_order)
    if merged == [f for f in result.findings if not f.code.startswith("model.")]:
        return result
    all_findings = (*merged, *model)
    scores = result.scores
    p_inc = None if scores.consistency is None else 1.0 - scores.consistency
    overall = overall_score(p_inc, scores.synthetic)
    critical = any(f.severity is Severity.CRITICAL for f in all_findings)
    if critical:
        overall = max(overall, result.threshold)
    return dataclasses.replace(
        result,
        findings=all_findings,
        scores=dataclasses.replace(scores, overall=overall),
        flagged=overall >= result.threshold or critical,
    )


def _ranked_contributions(feats: CaseFeatures, pred: Prediction) -> list[tuple[str | None, str, float]]:
    rows = [
        (feats.token_refs[i], feats.token_labels[i], float(pred.contributions[i]))
        for i in range(min(len(feats.token_labels), pred.contributions.shape[0]))
    ]
    return sorted(rows, key=lambda r: -r[2])


def _severity(p: float, threshold: float) -> Severity:
    return Severity.CRITICAL if p >= max(CRITICAL_PROBABILITY, threshold) else Severity.WARNING


def _inconsistent_finding(p: float, ranked: list[tuple[str | None, str, float]], threshold: float) -> Finding:
    against = [r for r in ranked if r[2] > 0][:3]
    message = f"The image does not fit the record (probability {p:.2f})"
    message += "; most contradicting items: " + ", ".join(r[1] for r in against) + "." if against else "."
    evidence = [Evidence("value", "p_inconsistent", round(p, 4))]
    evidence += [Evidence("fhir", ref, round(w, 4)) for ref, _, w in against if ref]
    return Finding("model.inconsistent", _severity(p, threshold), message, tuple(evidence))


def _synthetic_finding(p: float, heatmap: NDArray[np.float32], threshold: float) -> Finding:
    h = heatmap.shape[0]
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    vertical = "upper" if row < h / 3 else "lower" if row >= 2 * h / 3 else "middle"
    horizontal = "left" if col < h / 3 else "right" if col >= 2 * h / 3 else "centre"
    message = (
        f"The pixels look synthetic or tampered (probability {p:.2f}); the strongest traces are in the "
        f"{vertical} {horizontal} of the image's central crop."
    )
    evidence = (
        Evidence("value", "p_synthetic", round(p, 4)),
        Evidence("value", "tamper_heatmap_peak", [int(row) / h, int(col) / h]),
    )
    return Finding("model.synthetic", _severity(p, threshold), message, evidence)
