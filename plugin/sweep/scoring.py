"""The model's side of a sweep: batches of `Prepared` studies in, `CrossCheckResult` out.

`SweepScorer` holds the model bundle (on CUDA when there is one) and the perceptual-hash
index of every study of the sweep; it runs the model on a whole batch at once
(`fusion.scorer.Scorer.predict`), adds the duplicate check's findings, and assembles each
result exactly as `Scorer.score_many` does. The local sweep runs it in the main process; a
Ray sweep runs it as an actor.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from fusion.checks.duplicates import PerceptualHashIndex, duplicate_findings
from fusion.model.bundle import default_bundle_path, load_bundle
from fusion.result import CrossCheckResult, Finding, ModelInfo
from fusion.scorer import Scorer
from plugin.sweep.prepare import Failed, Fingerprinted, Prepared
from plugin.sweep.units import SweepUnit

__all__ = ["Scored", "SweepScorer"]

#: A study scored (its unit and result) or one that could not be read.
Scored = tuple[SweepUnit, CrossCheckResult] | Failed


class SweepScorer:
    """Scores batches of prepared studies with the bundle at ``model`` (default: the shipped one).

    ``fingerprints`` are every study of the sweep (those done before included), for the
    duplicate check; ``None`` turns that check off.
    """

    def __init__(
        self,
        model: Path | None = None,
        device: str | None = None,
        fingerprints: Sequence[Fingerprinted] | None = None,
    ) -> None:
        self.scorer = Scorer(load_bundle(model or default_bundle_path(), device=device), checks=False)
        self.index: PerceptualHashIndex | None = None
        self._fingerprints: dict[str, Fingerprinted] = {}
        if fingerprints is not None:
            self.index = PerceptualHashIndex()
            for f in fingerprints:
                self._fingerprints[f.unit_fingerprint] = f
                if f.fingerprint is not None:
                    self.index.add_fingerprint(f.fingerprint, f.patient_key)

    def model_info(self) -> ModelInfo:
        """The model the results name (a method: a Ray actor has no remote properties)."""
        return self.scorer.model_info

    def device(self) -> str:
        return str(self.scorer.bundle.device)

    def score(self, batch: Sequence[Prepared]) -> list[CrossCheckResult]:
        """One model forward for the whole batch; results in the batch's order."""
        if not batch:
            return []
        t = time.perf_counter()
        predictions = self.scorer.predict([p.features for p in batch])
        model_ms = (time.perf_counter() - t) * 1000 / len(batch)
        results = []
        for p, prediction in zip(batch, predictions, strict=True):
            t = time.perf_counter()
            findings = self._findings(p)
            timings = {
                "features": p.feature_ms,
                "model": model_ms,
                "checks": p.checks_ms + (time.perf_counter() - t) * 1000,
            }
            results.append(self.scorer.assemble(p.ref, p.features, prediction, findings, timings))
        return results

    def score_items(self, items: Sequence[Prepared | Failed]) -> list[Scored]:
        """`score` for what the readers returned: failures pass through, in place."""
        prepared = [i for i in items if isinstance(i, Prepared)]
        results = iter(self.score(prepared))
        return [i if isinstance(i, Failed) else (i.unit, next(results)) for i in items]

    def _findings(self, p: Prepared) -> tuple[Finding, ...]:
        """The checks' findings in `fusion.checks.run_checks` order: by severity, then check order."""
        duplicates: list[Finding] = []
        entry = self._fingerprints.get(p.unit.fingerprint)
        if self.index is not None and p.ref.patient_id is not None and entry and entry.fingerprint:
            matches = self.index.query_fingerprint(entry.fingerprint, p.ref.patient_id)
            duplicates = duplicate_findings(p.ref.study_instance_uid, matches)
        found = [*p.findings_before, *duplicates, *p.findings_after]
        return tuple(sorted(found, key=lambda f: -f.severity.rank))
