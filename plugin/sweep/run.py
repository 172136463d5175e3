"""``crosscheck sweep``: score every study of a folder, store each result as it comes, resumably.

1. the units (`plugin.sweep.units`), and those whose result this model already stored
   (`Store.swept_fingerprints`): skipped;
2. the duplicate index of the studies done before: their fingerprints (perceptual hashes
   and fine texture) as earlier batches kept them in the image archive
   (`plugin.store.ImageArchive`), hashed again only where the archive lacks one (a sweep
   run through in one go reads each study once);
3. the rest read, checked, hashed and scored (`LocalEngine`, or `RayEngine` with ``ray``),
   each batch's results stored in one transaction with their inputs and the sweep id, and
   with the amended duplicate findings of earlier studies whose image a study of the batch
   repeats (`plugin.sweep.scoring`). At the end every study carries the duplicate findings
   of the whole sweep, the index ``crosscheck check`` builds over the same folder;
4. each batch's image fingerprints kept in the image archive, right after the batch: the
   service's duplicate check and the review page's similar images search them.

Killed at any point (even by ``kill -9``), a sweep loses at most the batch in flight, which
its next run scores again; the database's primary key on (model sha256, input
fingerprint) keeps a study from being stored twice, also by two sweeps running at once.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from connectors.domain import SiteProfile
from fusion.model.bundle import default_bundle_path, load_bundle
from fusion.result import ModelInfo
from fusion.scorer import with_check_findings
from plugin.cases.evidence import KeptEvidence
from plugin.store import CaseQueue, ImageArchive, ResultSource, Store, StoredResult
from plugin.sweep.local import LocalEngine
from plugin.sweep.prepare import Failed, Fingerprinted, ReaderConfig, read_study
from plugin.sweep.scoring import DUPLICATE_FAMILY, Amendment, Swept
from plugin.sweep.units import SweepUnit

if TYPE_CHECKING:
    from plugin.sweep.ray_engine import RayEngine

__all__ = ["SweepReport", "run_sweep"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepReport:
    """What a sweep did: studies found, done before, stored now, failed (``failures``: the
    StudyInstanceUID and the reason of each), and how long it took."""

    sweep_id: str | None
    model: ModelInfo
    studies: int
    done_before: int
    stored: int
    failed: int
    seconds: float
    failures: tuple[tuple[str, str], ...] = ()


def run_sweep(
    units: Sequence[SweepUnit],
    *,
    store: Store,
    description: str,
    site: SiteProfile | None = None,
    model: Path | None = None,
    device: str | None = None,
    workers: int = 2,
    batch_size: int = 16,
    strictness: str = "warn",
    ray: str | None = None,
    duplicates: bool = True,
    progress: bool = True,
    evidence: KeptEvidence | None = None,
) -> SweepReport:
    """Score the ``units`` not yet stored with this model, writing results to ``store`` as they come.

    Every flagged result opens a case in the investigators' queue; with ``evidence`` (the
    service's data folder) its study's images and its heatmap are kept there for the review
    page, as the service keeps those of the studies it scores."""
    if workers < 1 or batch_size < 1:
        raise ValueError("workers and batch size must be at least 1")
    t0 = time.perf_counter()
    loaded = load_bundle(model or default_bundle_path(), device="cpu")
    info = loaded.info
    done = store.swept_fingerprints(info.sha256)
    archive = ImageArchive(store)
    todo = [u for u in units if u.fingerprint not in done]
    logger.info("sweep: %d studies, %d done before", len(units), len(units) - len(todo))
    if not todo:
        return SweepReport(None, info, len(units), len(units), 0, 0, time.perf_counter() - t0)
    config = ReaderConfig(
        preprocess=loaded.preprocess,
        site=site,
        strictness=strictness,
    )
    engine: LocalEngine | RayEngine
    if ray is not None:
        from plugin.sweep.ray_engine import RayEngine

        engine = RayEngine(ray, config, model=model, device=device, batch_size=batch_size, workers=workers)
    else:
        engine = LocalEngine(config, model=model, device=device, workers=workers, batch_size=batch_size)
    stored = 0
    failures: list[tuple[str, str]] = []
    with engine:
        fingerprints: list[Fingerprinted] | None = None
        if duplicates:
            fingerprints = _done_before(
                engine, archive, [u for u in units if u.fingerprint in done], progress
            )
        engine_info = engine.start(fingerprints)
        if engine_info.sha256 != info.sha256:  # pragma: no cover - the same bundle path on both sides
            raise RuntimeError(
                "the model loaded for scoring is not the one the sweep checked its work against"
            )
        sweep_id = store.start_sweep(model=info, description=description, studies=len(units))
        cases = _Cases(store, info.sha256, units, evidence, strictness)
        with tqdm(total=len(todo), desc="sweep", unit="study", disable=not progress) as bar:
            for batch, amendments in engine.results(todo):
                swept = [b for b in batch if isinstance(b, Swept)]
                items = [(b.result, b.unit.inputs) for b in swept]
                failures += [(b.unit.study_instance_uid, b.reason) for b in batch if isinstance(b, Failed)]
                amended = _amended(store, amendments, info.sha256)
                if items or amended:
                    changes = [(r.id, r.result) for r in amended]
                    timelines = [b.timeline for b in swept]
                    stored += store.save_sweep_results(sweep_id, items, amended=changes, timelines=timelines)
                    _keep_images(archive, swept)
                    flagged: list[Swept | StoredResult] = [b for b in swept if b.result.flagged]
                    cases.opened(flagged + [r for r in amended if r.result.flagged])
                bar.update(len(batch))
        store.finish_sweep(sweep_id)
    for uid, reason in failures:
        logger.debug("study %s not scored: %s", uid, reason)
    if failures:
        logger.warning("%d studies could not be read; the next run tries them again", len(failures))
    return SweepReport(
        sweep_id=sweep_id,
        model=info,
        studies=len(units),
        done_before=len(units) - len(todo),
        stored=stored,
        failed=len(failures),
        seconds=time.perf_counter() - t0,
        failures=tuple(failures),
    )


def _done_before(
    engine: LocalEngine | RayEngine, archive: ImageArchive, before: Sequence[SweepUnit], progress: bool
) -> list[Fingerprinted]:
    """The fingerprints of the studies a resumed sweep did before, for its duplicate index: read
    from the archive, and hashed again only for those it lacks (kept by a version before 0008, or
    by another FINGERPRINT_VERSION, or lost to a kill between a batch and its fingerprints)."""
    kept = archive.for_inputs([u.fingerprint for u in before])
    found = [Fingerprinted(u.fingerprint, *kept[u.fingerprint]) for u in before if u.fingerprint in kept]
    missing = [u for u in before if u.fingerprint not in kept]
    logger.info("sweep: %d fingerprints from the archive, %d to hash again", len(found), len(missing))
    hashed = tqdm(
        engine.fingerprints(missing),
        total=len(missing),
        desc="indexing the studies done before",
        unit="study",
        disable=not progress or not missing,
    )
    again = list(hashed)
    _keep_fingerprinted(archive, again)
    return found + again


def _keep_images(archive: ImageArchive, swept: Sequence[Swept]) -> None:
    """The batch's image fingerprints into the archive (the service's duplicate check and the
    review page's similar images search it), under the patient the sweep's index keys them by."""
    _keep_fingerprinted(
        archive, [Fingerprinted(s.unit.fingerprint, s.unit.patient_id or "unknown", s.image) for s in swept]
    )


def _keep_fingerprinted(archive: ImageArchive, items: Sequence[Fingerprinted]) -> None:
    """Those of ``items`` with a fingerprint (a study without pixels has none) into the archive."""
    hashed = [(f, f.fingerprint) for f in items if f.fingerprint is not None]
    archive.keep(
        [(f.patient_key, fp) for f, fp in hashed],
        source=ResultSource.SWEEP,
        input_fingerprints=[f.unit_fingerprint for f, _ in hashed],
    )


def _amended(store: Store, amendments: Sequence[Amendment], sha256: str) -> list[StoredResult]:
    """The stored results the amendments change, changed (ids kept); those they leave as they are
    are left out."""
    changed = []
    for amendment in amendments:
        stored = store.swept_result(sha256, amendment.unit_fingerprint)
        if stored is None:  # pragma: no cover - an amendment names a study stored before it
            logger.debug("no stored result to amend for study %s", amendment.study_instance_uid)
            continue
        result = with_check_findings(stored.result, DUPLICATE_FAMILY, amendment.findings)
        if result != stored.result:
            changed.append(dataclasses.replace(stored, result=result))
    return changed


class _Cases:
    """Opens a case in the queue for each flagged result (idempotent: one per study), and keeps its
    study's images and heatmap for the review page.

    The sweep's results come back without their study, so the case is weighted by the
    queue's default; the review page can re-weight it from the record."""

    def __init__(
        self,
        store: Store,
        sha256: str,
        units: Sequence[SweepUnit],
        evidence: KeptEvidence | None,
        strictness: str,
    ) -> None:
        self.store, self.sha256, self.evidence = store, sha256, evidence
        self.strictness = strictness
        self.queue = CaseQueue(store)
        self.units = {u.fingerprint: u for u in units}

    def opened(self, flagged: Sequence[Swept | StoredResult]) -> None:
        for item in flagged:
            if isinstance(item, Swept):
                unit: SweepUnit | None = item.unit
                stored = self.store.swept_result(self.sha256, item.unit.fingerprint)
            else:  # an amended result: its study is one of the sweep's
                unit, stored = self.units.get(item.input_fingerprint or ""), item
            if stored is None:
                continue
            self.queue.open_case_for(stored)
            if self.evidence is not None and unit is not None:
                self._keep(unit, stored.id, item if isinstance(item, Swept) else None)

    def _keep(self, unit: SweepUnit, result_id: str, swept: Swept | None) -> None:
        """The study's files under the data folder (copied, or fetched again for a server sweep),
        and the heatmap's data (no figure: drawing it would take the readers' cores); a failure
        costs the review page its image, not the result."""
        assert self.evidence is not None
        uid = unit.study_instance_uid
        try:
            if swept is not None and swept.files and unit.source is None:
                self.evidence.keep_files(uid, [Path(f) for f in swept.files])
            else:
                study = read_study(unit, self.strictness)
                if study is None:
                    raise FileNotFoundError(f"study {uid} is no longer where the sweep read it")
                self.evidence.keep_study(study)
            if swept is not None and swept.heatmap is not None:
                self.evidence.keep_heatmap_data(result_id, swept.heatmap)
        except Exception as exc:
            logger.warning("the images of a flagged study were not kept (%s)", type(exc).__name__)
            logger.debug("study %s not kept: %s", uid, exc)
