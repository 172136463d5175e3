"""The model's side of a sweep: batches of `Prepared` studies in, `CrossCheckResult` out.

`SweepScorer` holds the model bundle (on CUDA when there is one) and the perceptual-hash
index of the sweep; it runs the model on a whole batch at once
(`fusion.scorer.Scorer.predict`), adds the duplicate check's findings, and assembles each
result exactly as `Scorer.score_many` does. The local sweep runs it in the main process; a
Ray sweep runs it as an actor.

The index grows as the batches come (the readers hash each image in the same read as its
features), starting from the studies a resumed sweep did before. A study is checked
against every study indexed so far, its own batch included; when a later study's image
matches one scored in an earlier batch, that one's duplicate findings have changed: the
scorer says so with an `Amendment`, which the sweep writes in the same transaction as the
batch that found it. Once the sweep ends, every study carries the duplicate findings of
the whole sweep, as ``crosscheck check`` gives them over the same folder.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fusion.checks import finding_order
from fusion.checks.duplicates import PackedFingerprint, PerceptualHashIndex, duplicate_findings
from fusion.explain import with_probability
from fusion.model.bundle import default_bundle_path, load_bundle
from fusion.result import CrossCheckResult, Finding, ModelInfo
from fusion.scorer import Prediction, Scorer
from plugin.store import Timeline
from plugin.sweep.prepare import Failed, Fingerprinted, Prepared
from plugin.sweep.units import SweepUnit

__all__ = ["DUPLICATE_FAMILY", "Amendment", "Scored", "SweepScorer", "Swept"]


@dataclass(frozen=True)
class Swept:
    """A study scored: its unit, its result and the record snapshot to keep with it; for a flagged
    result also its heatmap, which the review page draws over the image."""

    unit: SweepUnit
    result: CrossCheckResult
    timeline: Timeline | None = None
    heatmap: dict[str, Any] | None = None  # of a flagged result: `fusion.explain.heatmap_placement`
    files: tuple[str, ...] = ()  # the study's files as the reader read them
    image: PackedFingerprint | None = None  # its image's, for the archive (None: no pixels, or no check)


#: A study scored, or one that could not be read.
Scored = Swept | Failed

#: The finding codes of the duplicate check start with it (`fusion.scorer.with_check_findings`).
DUPLICATE_FAMILY = "duplicate"


#: A result as `Scorer.assemble` gives it, with the model's prediction it came from.
Assembled = tuple[CrossCheckResult, Prediction]


@dataclass(frozen=True)
class Amendment:
    """A study scored in an earlier batch (or an earlier run) whose duplicate findings are now
    ``findings``: the input fingerprint of its unit says which stored result to amend."""

    unit_fingerprint: str
    study_instance_uid: str
    findings: tuple[Finding, ...]


@dataclass(frozen=True)
class _Indexed:
    unit_fingerprint: str
    study_instance_uid: str
    patient_id: str | None  # the id the study is checked under (None: no duplicate check)
    image: PackedFingerprint  # kept packed: int8 texture, a quarter of float32's memory


class SweepScorer:
    """Scores batches of prepared studies with the bundle at ``model`` (default: the shipped one).

    ``fingerprints`` are the studies of the sweep scored before (a resumed sweep's finished
    work), for the duplicate check; ``None`` turns that check off. ``cpu_threads``: torch's
    threads in this process when the model runs on the CPU (the cores the readers leave, no
    more: torch's spinning threads would slow the readers).
    """

    def __init__(
        self,
        model: Path | None = None,
        device: str | None = None,
        fingerprints: Sequence[Fingerprinted] | None = None,
        cpu_threads: int | None = None,
    ) -> None:
        self.scorer = Scorer(load_bundle(model or default_bundle_path(), device=device), checks=False)
        if cpu_threads is not None and self.device() == "cpu":
            torch.set_num_threads(cpu_threads)
        self.index: PerceptualHashIndex | None = None
        self._indexed: dict[tuple[str, str], _Indexed] = {}  # by (patient key, StudyInstanceUID)
        if fingerprints is not None:
            self.index = PerceptualHashIndex()
            for f in fingerprints:
                if f.fingerprint is not None:
                    self._add(f.unit_fingerprint, f.patient_key, f.patient_key, f.fingerprint)

    def model_info(self) -> ModelInfo:
        """The model the results name (a method: a Ray actor has no remote properties)."""
        return self.scorer.model_info

    def device(self) -> str:
        return str(self.scorer.bundle.device)

    def score(self, batch: Sequence[Prepared]) -> tuple[list[Assembled], list[Amendment]]:
        """One model forward for the whole batch; results (with the model's predictions) in the
        batch's order, and the studies of earlier batches whose duplicate findings the batch changed."""
        if not batch:
            return [], []
        duplicates, amendments = self._index_batch(batch)
        t = time.perf_counter()
        predictions = self.scorer.predict([p.features for p in batch])
        model_ms = (time.perf_counter() - t) * 1000 / len(batch)
        results = []
        for p, prediction in zip(batch, predictions, strict=True):
            t = time.perf_counter()
            found = [*p.findings, *duplicates.get(p.unit.fingerprint, ())]
            findings = tuple(sorted(found, key=finding_order))
            timings = {
                "read": p.read_ms,
                "features": p.feature_ms,
                "model": model_ms,
                "checks": p.checks_ms + (time.perf_counter() - t) * 1000,
            }
            result = self.scorer.assemble(p.ref, p.features, prediction, findings, timings)
            results.append((result, prediction))
        return results, amendments

    def score_items(self, items: Sequence[Prepared | Failed]) -> tuple[list[Scored], list[Amendment]]:
        """`score` for what the readers returned: failures pass through, in place."""
        prepared = [i for i in items if isinstance(i, Prepared)]
        scored, amendments = self.score(prepared)
        results = iter(scored)
        return [i if isinstance(i, Failed) else _swept(i, *next(results)) for i in items], amendments

    def _add(
        self, unit_fingerprint: str, patient_key: str, patient_id: str | None, image: PackedFingerprint
    ) -> None:
        assert self.index is not None
        self.index.add_fingerprint(image, patient_key)
        key = (patient_key, image.study_instance_uid)
        self._indexed[key] = _Indexed(unit_fingerprint, image.study_instance_uid, patient_id, image)

    def _index_batch(self, batch: Sequence[Prepared]) -> tuple[dict[str, list[Finding]], list[Amendment]]:
        """Add the batch's images to the index; the duplicate findings of the batch's studies (by
        input fingerprint), and the earlier studies they match, amended."""
        if self.index is None:
            return {}, []
        ours = {p.unit.fingerprint for p in batch}
        for p in batch:
            if p.image is not None:
                self._add(p.unit.fingerprint, p.unit.patient_id or "unknown", p.ref.patient_id, p.image)
        duplicates: dict[str, list[Finding]] = {}
        touched: dict[str, _Indexed] = {}
        for p in batch:
            if p.image is None or p.ref.patient_id is None:
                continue
            matches = self.index.query_fingerprint(p.image, p.ref.patient_id)
            duplicates[p.unit.fingerprint] = duplicate_findings(p.ref.study_instance_uid, matches)
            for match in matches:
                earlier = self._indexed.get((match.patient_key, match.study_instance_uid))
                if earlier is not None and earlier.unit_fingerprint not in ours:
                    touched[earlier.unit_fingerprint] = earlier
        amendments = [
            Amendment(
                e.unit_fingerprint,
                e.study_instance_uid,
                self._duplicates(e.study_instance_uid, e.patient_id, e.image),
            )
            for _, e in sorted(touched.items())
        ]
        return duplicates, amendments

    def _duplicates(
        self, study_instance_uid: str, patient_id: str | None, image: PackedFingerprint
    ) -> tuple[Finding, ...]:
        if self.index is None or patient_id is None:
            return ()
        return tuple(duplicate_findings(study_instance_uid, self.index.query_fingerprint(image, patient_id)))


def _swept(prepared: Prepared, result: CrossCheckResult, prediction: Prediction) -> Swept:
    site = prepared.heatmap_site
    heatmap = with_probability(site, prediction.heatmap) if result.flagged and site is not None else None
    return Swept(prepared.unit, result, prepared.timeline, heatmap, prepared.files, prepared.image)
