"""The service's scoring engine: one model, one store, the servers, and the studies in flight.

Every path into the service ends here: a CDS hook call, a REST call, a study
arriving at ingest. The engine

- answers from the store when the study was already scored with this model
  (``Checked.cached``);
- otherwise fetches the study's images (the PACS of the settings, else the
  ImagingStudy's Endpoint), links them with the record it is given, and scores
  them on the model thread (one thread: the model is used by one caller at a
  time, and two CPU cores are not shared by two forward passes);
- runs a study once, however many callers ask for it meanwhile (they share the
  task), and lets a caller stop waiting at a deadline while the task goes on:
  the next call finds the result in the store;
- checks each study against every image the service and sweeps have kept (`plugin.store.ImageArchive`:
  the fingerprints in the database, so a restart forgets none), and keeps the study's own there;
- stores each result with the record snapshot it was scored against (`plugin.store.Timeline`: the
  review page's timeline), and opens a case in the investigators' queue for each flagged result
  (`plugin.store.CaseQueue`);
- keeps the images it scored (``images/<StudyInstanceUID>/``, uploads too: `KeptEvidence.keep_study`) and
  each result with a heatmap PNG beside it (and the heatmap as data, with the frame
  it lies on: ``heatmaps/<result id>.json``, for the review page's overlay), and writes back (FHIR
  DetectedIssue, DICOM SR) when configured, both after the caller has its answer
  and without ever failing the caller because of them.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from connectors.dicom import read_dicom
from connectors.domain import Case, PatientRecord, Study
from connectors.errors import NoImagingFound
from connectors.link import link_cases
from connectors.remote import ImagingSource, study_uids_for
from connectors.strictness import Strictness
from fusion.result import CrossCheckResult
from fusion.scorer import Prediction, Scorer
from plugin.cases.cost import cost_weight
from plugin.cases.evidence import KeptEvidence
from plugin.errors import StoreError
from plugin.store import CaseQueue, ImageArchive, ResultSource, Store, StoredResult, Timeline

__all__ = ["Checked", "Engine"]

logger = logging.getLogger(__name__)

#: Called after a result is stored: (stored result, the case, the model's prediction).
AfterScore = Callable[[StoredResult, Case, Prediction], Awaitable[None]]

#: How often (seconds, at most) the engine reads what other processes kept in the image archive.
ARCHIVE_REFRESH_S = 10.0


@dataclass(frozen=True)
class Checked:
    """A study's result, and whether it came from the store (scored earlier) or was scored now."""

    stored: StoredResult
    cached: bool

    @property
    def result(self) -> CrossCheckResult:
        return self.stored.result

    @property
    def id(self) -> str:
        return self.stored.id


class Engine:
    """See the module docstring. ``imaging`` is the configured PACS (or None: use Endpoints);
    ``endpoint_source`` makes a DICOMweb source for an ImagingStudy Endpoint address. The engine
    scores with ``scorer``'s model and site, its duplicate check searching the store's archive."""

    def __init__(
        self,
        scorer: Scorer,
        store: Store,
        *,
        data_dir: Path,
        imaging: ImagingSource | None = None,
        endpoint_source: Callable[[str], ImagingSource] | None = None,
        after_score: AfterScore | None = None,
    ) -> None:
        self.store = store
        self.cases = CaseQueue(store)
        self.data_dir = Path(data_dir)
        self.evidence = KeptEvidence(self.data_dir)  # the kept images and heatmaps
        self.imaging = imaging
        self.endpoint_source = endpoint_source
        self.after_score = after_score
        self.archive = ImageArchive(store)
        self.hash_index = self.archive.index()  # every kept image's hashes; textures read on a match
        self._archive_read = time.monotonic()
        self.scorer = scorer.with_hash_index(self.hash_index)
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crosscheck-model")
        self._artifact_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crosscheck-artifacts")
        self._inflight: dict[str, asyncio.Task[Checked]] = {}
        self._background: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ facts
    @property
    def model_sha256(self) -> str:
        return self.scorer.model_info.sha256

    # ------------------------------------------------------------------ lookups
    async def stored(self, study_instance_uid: str) -> StoredResult | None:
        """The latest result for the study with this model, or None."""
        return await asyncio.to_thread(self.store.latest_result, study_instance_uid, self.model_sha256)

    # ------------------------------------------------------------------ scoring
    async def score_cases(
        self, cases: Sequence[Case], *, source: str, inputs: Mapping[str, str] | None = None
    ) -> list[Checked]:
        """Score cases that are already assembled (REST uploads), store and return them."""
        out = []
        for case in cases:
            out.append(await self._score_and_store(case, source=source, inputs=inputs))
        return out

    async def check_study(
        self,
        study_instance_uid: str,
        *,
        record: PatientRecord | None,
        source: str,
        deadline_s: float | None = None,
        rescore: bool = False,
    ) -> Checked | None:
        """The study's result: stored, or fetched and scored now.

        Returns None when ``deadline_s`` passes first; the scoring goes on and its
        result is stored. Raises `NoImagingFound` (no PACS, or the PACS has no such
        study) and the connectors' server errors.
        """
        if not rescore:
            found = await self.stored(study_instance_uid)
            if found is not None:
                return Checked(found, cached=True)
        task = self._inflight.get(study_instance_uid)
        if task is None:
            task = asyncio.create_task(self._fetch_and_score(study_instance_uid, record, source))
            self._inflight[study_instance_uid] = task
            task.add_done_callback(partial(self._done, study_instance_uid))
        if deadline_s is None:
            return await asyncio.shield(task)
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout=max(deadline_s, 0.0))
        except TimeoutError:
            task.add_done_callback(_log_failure)
            return None

    def _done(self, study_instance_uid: str, _task: asyncio.Task[Checked]) -> None:
        self._inflight.pop(study_instance_uid, None)

    def spawn(self, work: Awaitable[Any], what: str) -> None:
        """Run ``work`` in the background (ingest, write-back): awaited by `drain`; a failure is
        logged by type (its message, which may name a UID, at debug level), never raised."""
        task = asyncio.create_task(_quietly(work, what))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for background work (tests, shutdown)."""
        while self._background or self._inflight:
            await asyncio.gather(*self._background, *self._inflight.values(), return_exceptions=True)

    def close(self) -> None:
        self._model_thread.shutdown(wait=True, cancel_futures=True)
        self._artifact_thread.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ internals
    async def _fetch_and_score(
        self, study_instance_uid: str, record: PatientRecord | None, source: str
    ) -> Checked:
        t0 = time.perf_counter()
        case = await self._assemble(study_instance_uid, record)
        fetch_ms = (time.perf_counter() - t0) * 1000
        return await self._score_and_store(
            case, source=source, inputs={"study_instance_uid": study_instance_uid}, fetch_ms=fetch_ms
        )

    async def _assemble(self, study_instance_uid: str, record: PatientRecord | None) -> Case:
        folder = self.evidence.images_path(study_instance_uid)
        studies = await asyncio.to_thread(self._read_cached, folder)
        if not studies:
            imaging = self._source_for(study_instance_uid, record)
            tmp = folder.with_name(folder.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            uids = await asyncio.to_thread(study_uids_for, imaging, None, None, study_instance_uid)
            if study_instance_uid not in uids:
                raise NoImagingFound(f"the PACS has no study {study_instance_uid}")
            await asyncio.to_thread(imaging.download_study, study_instance_uid, tmp)
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
            studies = await asyncio.to_thread(self._read_cached, folder)
            if not studies:
                raise NoImagingFound(f"the PACS returned no readable instances of study {study_instance_uid}")
        cases = link_cases(studies, [record] if record is not None else [])
        for case in cases:
            if case.study_instance_uid == study_instance_uid:
                return case
        raise NoImagingFound(f"study {study_instance_uid} is not among the instances the PACS returned")

    @staticmethod
    def _read_cached(folder: Path) -> list[Study]:
        if not folder.is_dir() or not any(folder.rglob("*")):
            return []
        return read_dicom(folder, strictness=Strictness.WARN)

    def _source_for(self, study_instance_uid: str, record: PatientRecord | None) -> ImagingSource:
        if self.imaging is not None:
            return self.imaging
        if record is not None and self.endpoint_source is not None:
            for study in record.imaging_studies:
                if study.study_instance_uid == study_instance_uid and study.endpoint:
                    return self.endpoint_source(study.endpoint)
        raise NoImagingFound(
            f"no PACS to fetch study {study_instance_uid} from: configure a DICOMweb URL or a DIMSE "
            "peer, or link the ImagingStudy to a DICOMweb Endpoint"
        )

    async def _score_and_store(
        self,
        case: Case,
        *,
        source: str,
        inputs: Mapping[str, str] | None,
        fetch_ms: float | None = None,
    ) -> Checked:
        loop = asyncio.get_running_loop()
        case = replace(case, study=case.study.decoding_once())  # features, checks, hashes, heatmap
        result, prediction = await loop.run_in_executor(self._model_thread, self._score_one, case, source)
        if fetch_ms is not None:
            result = replace(result, timings_ms={"fetch": fetch_ms, **result.timings_ms})
        stored = await asyncio.to_thread(self._save, result, case, source, dict(inputs or {}))
        if result.flagged:  # a case for the investigators' queue, ranked by what it would cost
            await asyncio.to_thread(self.cases.open_case_for, stored, cost_weight=cost_weight(case).weight)
        logger.debug("scored study %s as result %s", case.study_instance_uid, stored.id)
        self.spawn(self._after(stored, case, prediction), "the heatmap and write-back")  # after the answer
        return Checked(stored, cached=False)

    def _save(
        self, result: CrossCheckResult, case: Case, source: str, inputs: dict[str, str]
    ) -> StoredResult:
        """Store the result with the snapshot of the record it was scored against; a record the
        snapshot cannot be made of costs the snapshot, never the result."""
        try:
            timeline: Timeline | None = Timeline.from_case(case)
        except (TypeError, ValueError) as exc:
            logger.warning("a result stored without its record snapshot (%s)", type(exc).__name__)
            logger.debug("no record snapshot for study %s", case.study_instance_uid)
            timeline = None
        return self.store.save_result(result, source=source, inputs=inputs, timeline=timeline)

    async def _after(self, stored: StoredResult, case: Case, prediction: Prediction) -> None:
        """The heatmap PNG (its own thread: matplotlib is slow and not thread-safe), then write-back."""
        loop = asyncio.get_running_loop()
        config = self.scorer.bundle.config.features
        keep = partial(self.evidence.keep_heatmap, case, prediction.heatmap, stored.id, config=config)
        await loop.run_in_executor(self._artifact_thread, keep)
        if self.after_score is not None:
            await self.after_score(stored, case, prediction)

    def _score_one(self, case: Case, source: str) -> tuple[CrossCheckResult, Prediction]:
        self._read_archive()
        ((result, prediction),) = self.scorer.explain_many([case], batch_size=1)
        self._keep_image(case, source)
        return result, prediction

    def _read_archive(self) -> None:
        """What other processes (a sweep) kept since the last look, at most every ARCHIVE_REFRESH_S."""
        if time.monotonic() - self._archive_read < ARCHIVE_REFRESH_S:
            return
        self._archive_read = time.monotonic()
        try:
            self.archive.refresh(self.hash_index)
        except StoreError as exc:  # the check runs on what the index holds
            logger.warning("the image archive was not read again (%s)", type(exc).__name__)

    def _keep_image(self, case: Case, source: str) -> None:
        """The study's fingerprint into the archive (and the index): later studies are checked
        against it. Kept in memory alone when the database refuses it."""
        try:
            computed = self.hash_index.fingerprint_of(case.study)  # the duplicate check's, not again
        except Exception as exc:  # undecodable pixels: the pixel check has reported them
            logger.debug("study %s not indexed (%s)", case.study_instance_uid, type(exc).__name__)
            return
        if computed is None:
            return
        fp = computed.packed()  # once, for the archive and the index
        owner = case.patient_id or case.study.patient.patient_id or "unknown"
        try:
            self.archive.keep([(owner, fp)], source=ResultSource(source))
        except StoreError as exc:
            logger.warning("an image fingerprint kept in memory only (%s)", type(exc).__name__)
            self.hash_index.add_fingerprint(fp, owner)
            return
        self.hash_index.add_fingerprint(fp, owner, texture_elsewhere=True)


async def _quietly(work: Awaitable[Any], what: str) -> None:
    try:
        await work
    except Exception as exc:  # background work must never fail a caller or stop the service
        logger.warning("%s failed (%s)", what, type(exc).__name__)
        logger.debug("%s failed: %s", what, _reason(exc))


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def _log_failure(task: asyncio.Task[Checked]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.warning("scoring past the deadline failed (%s)", type(exc).__name__)
        logger.debug("scoring past the deadline failed: %s", _reason(exc))
