"""The readers' side of a sweep: a `SweepUnit` in, what the model and the index need out.

Run in worker processes (or Ray tasks): each reads its study's DICOM files and its patient's
Bundle once, links them, extracts the model's features (`fusion.model.factory.Preprocess`,
the bundle's own preprocessing), runs every rule-based check but the duplicate one, and
computes the image's perceptual hashes; the duplicate index spans the whole sweep and lives
with the model (`plugin.sweep.scoring`). The study's pixels are decoded once for all three
(`connectors.domain.Study.decoding_once`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors import Strictness, link_cases, read_bundle, read_dicom
from connectors.domain import Case, PatientRecord, SiteProfile, Study
from fusion.checks import CHECKS, CheckContext, run_checks
from fusion.checks.duplicates import PackedFingerprint, fingerprint
from fusion.explain import heatmap_site
from fusion.features import CaseFeatures
from fusion.model.factory import Preprocess
from fusion.result import CaseRef, Finding
from plugin.store import Timeline
from plugin.sweep.fetch import load_server_case, load_server_study
from plugin.sweep.units import SweepUnit

__all__ = [
    "DUPLICATE_CHECK",
    "Failed",
    "Fingerprinted",
    "Prepared",
    "ReaderConfig",
    "fingerprint_many",
    "fingerprint_unit",
    "init_reader",
    "load_case",
    "prepare_many",
    "prepare_unit",
    "read_study",
]

logger = logging.getLogger(__name__)

#: The rule check that needs every study of the sweep (`CHECKS` key).
DUPLICATE_CHECK = "duplicate.hash"
_READER_CHECKS = {k: v for k, v in CHECKS.items() if k != DUPLICATE_CHECK}


@dataclass(frozen=True)
class ReaderConfig:
    """What a reader needs besides the unit: the bundle's preprocessing, the site, the strictness."""

    preprocess: Preprocess
    site: SiteProfile | None = None
    strictness: str = Strictness.WARN.value


@dataclass(frozen=True)
class Prepared:
    """One study ready for the model: its features, the findings of every rule-based check but
    the duplicate one (most severe first, as `fusion.checks.run_checks` orders them), and its
    image's perceptual hashes (``image``; None: no pixels, or undecodable) and the record
    snapshot kept with the result (``timeline``)."""

    unit: SweepUnit
    ref: CaseRef
    features: CaseFeatures
    findings: tuple[Finding, ...]
    feature_ms: float
    checks_ms: float
    image: PackedFingerprint | None = None  # packed in the reader: a quarter of the bytes to send
    timeline: Timeline | None = None  # the record snapshot stored with the result
    files: tuple[str, ...] = ()  # the study's files (kept for the review page if it is flagged)
    heatmap_site: dict[str, Any] | None = None  # where its heatmap lies (`fusion.explain.heatmap_site`)
    read_ms: float = 0.0  # reading and linking the study and its record


@dataclass(frozen=True)
class Failed:
    """A study that could not be read; ``reason`` is the error's class and message (no patient data:
    the connectors' messages name files and UIDs)."""

    unit: SweepUnit
    reason: str


@dataclass(frozen=True)
class Fingerprinted:
    """The perceptual hashes of a study's image, under the patient it is filed under."""

    unit_fingerprint: str
    patient_key: str
    fingerprint: PackedFingerprint | None


_BUNDLES: OrderedDict[tuple[str, int, int, str], list[PatientRecord]] = OrderedDict()
_BUNDLES_KEPT = 32  # a patient's studies usually come together: keep the last few records parsed


def _records(bundle: Path, strictness: Strictness | str) -> list[PatientRecord]:
    """The Bundle's records, parsed once per reader while the file is unchanged (validating a
    patient's whole record is most of the cost of reading a study)."""
    st = bundle.stat()
    key = (str(bundle), st.st_size, st.st_mtime_ns, Strictness.of(strictness).value)
    if key in _BUNDLES:
        _BUNDLES.move_to_end(key)
        return _BUNDLES[key]
    records = read_bundle(bundle, strictness=strictness)
    _BUNDLES[key] = records
    while len(_BUNDLES) > _BUNDLES_KEPT:
        _BUNDLES.popitem(last=False)
    return records


def load_case(unit: SweepUnit, strictness: Strictness | str = Strictness.WARN) -> Case:
    """Read and link the unit's study, as ``crosscheck check`` would (a server sweep's unit: fetched
    from the PACS and the FHIR server, `plugin.sweep.fetch`)."""
    if unit.source is not None:
        return load_server_case(unit, strictness)
    records: list[PatientRecord] = _records(Path(unit.bundle), strictness) if unit.bundle else []
    study = read_study(unit, strictness)
    if study is None:
        raise FileNotFoundError(f"{unit.dicom}: study {unit.study_instance_uid} is no longer there")
    return link_cases([study.decoding_once()], records)[0]


def prepare_unit(unit: SweepUnit, config: ReaderConfig) -> Prepared | Failed:
    """Read, link, extract features and run the rule checks (all but the duplicate one)."""
    try:
        t = time.perf_counter()
        case = load_case(unit, config.strictness)
        read_ms = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        features = config.preprocess(case)
        feature_ms = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        findings = run_checks(case, CheckContext(site=config.site), checks=_READER_CHECKS)
        image = _fingerprint(unit, case.study)
        checks_ms = (time.perf_counter() - t) * 1000
    except Exception as exc:  # one unreadable study must not stop a sweep of thousands
        logger.debug("study %s could not be read: %s", unit.study_instance_uid, type(exc).__name__)
        return Failed(unit, f"{type(exc).__name__}: {' '.join(str(exc).split())}")
    ref = CaseRef(case.patient_id, case.study_instance_uid, case.study.accession_number)
    files = tuple(str(i.path) for i in case.study.instances if i.path is not None)
    site = heatmap_site(case, config=config.preprocess.config)  # frame already decoded: no cost
    timeline = _timeline(unit, case)
    return Prepared(
        unit, ref, features, findings, feature_ms, checks_ms, image, timeline, files, site, read_ms
    )


def _timeline(unit: SweepUnit, case: Case) -> Timeline | None:
    try:
        return Timeline.from_case(case)
    except Exception as exc:  # the result is stored without its snapshot rather than not at all
        logger.debug("study %s: no record snapshot (%s)", unit.study_instance_uid, type(exc).__name__)
        return None


def _fingerprint(unit: SweepUnit, study: Study) -> PackedFingerprint | None:
    try:
        fp = fingerprint(study)
        return None if fp is None else fp.packed()
    except Exception as exc:  # undecodable pixels: the pixel check reports them
        logger.debug("study %s not indexed: %s", unit.study_instance_uid, type(exc).__name__)
        return None


def prepare_many(units: list[SweepUnit], config: ReaderConfig) -> list[Prepared | Failed]:
    """`prepare_unit` over a chunk (one Ray task's work)."""
    _one_thread()
    return [prepare_unit(u, config) for u in units]


def read_study(unit: SweepUnit, strictness: Strictness | str = Strictness.WARN) -> Study | None:
    """The unit's study alone (no record): from its folder, or fetched from the PACS."""
    if unit.source is not None:
        return load_server_study(unit, strictness)
    studies = read_dicom(unit.dicom, strictness=strictness)
    return next((s for s in studies if s.study_instance_uid == unit.study_instance_uid), None)


def fingerprint_unit(unit: SweepUnit, strictness: str = Strictness.WARN.value) -> Fingerprinted:
    """The study's perceptual hashes for the duplicate index (``None``: no pixels, or unreadable),
    under its patient id as `plugin.check.build_hash_index` keys them: for the studies a
    resumed sweep did before, whose results are stored but whose hashes are not."""
    fp: PackedFingerprint | None = None
    try:
        study = read_study(unit, strictness)
        if study is not None:
            fp = _fingerprint(unit, study)
    except Exception as exc:
        logger.debug("study %s not indexed: %s", unit.study_instance_uid, type(exc).__name__)
    return Fingerprinted(unit.fingerprint, unit.patient_id or "unknown", fp)


def init_reader() -> None:
    """Worker-process initialiser: one torch thread (the processes are the parallelism), and an exit
    when the parent dies (even by kill -9), so no orphan keeps reading."""
    _one_thread()
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def fingerprint_many(units: list[SweepUnit], strictness: str = Strictness.WARN.value) -> list[Fingerprinted]:
    """`fingerprint_unit` over a chunk (one Ray task's work)."""
    _one_thread()
    return [fingerprint_unit(u, strictness) for u in units]
