"""``crosscheck finetune``: a model bundle fine-tuned on the investigators' labels.

The labels are ``crosscheck labels``' file (`plugin.store.TrainingLabel`: dispositions and CDS
Hooks overrides). Each label's study is found by its StudyInstanceUID in a folder the user gives,
read as ``crosscheck sweep`` reads one (`plugin.sweep.units_from_folder`): a cohort folder, the
folder a sweep scored, or any folder of FHIR Bundles and DICOM studies. Or on the servers a server
sweep read them from (`find_studies_on_servers`): each labelled study searched on the PACS by its
StudyInstanceUID (QIDO-RS), fetched over WADO-RS into a temporary folder kept while the fine-tune
runs, and linked to its patient's record on the FHIR server as a server sweep links it. A label
whose study is not there is counted and reported (its StudyInstanceUID at DEBUG), never dropped
silently. A folder of DICOM without the patients' Bundles (or a PACS without a FHIR server) gives
cases without a record: their labels train the synthetic head only.

**What each label trains** (:data:`HEAD_TARGETS`): a label trains the heads it speaks for, and only
those (consistency target 1: the image belongs with the record; synthetic target 1: the pixels
were made or altered):

==============================  ===========  =========  ==============================================
label                           consistency  synthetic  why
==============================  ===========  =========  ==============================================
clean (confirmed genuine, or a  1            0          the image is real and belongs with this record;
CDS override: verified)                                 its perturbed records are negatives, as in
                                                        training
manipulated, ``synthetic``      --           1          generated pixels; says nothing of the record
manipulated, ``tampered``       --           1          altered pixels; the record may have been forged
                                                        to match, so consistency is not trained
manipulated, ``wrong-patient``  0            --         another patient's image, or the wrong record;
                                                        the pixels may well be a real acquisition
manipulated, ``other`` or not   skipped      skipped    counted: a fabrication the heads may not be
said                                                    able to see (a header edit is the rule checks'
                                                        job, and training teaches both heads to call
                                                        such images consistent and real)
==============================  ===========  =========  ==============================================

**Replay** (``--data``): cases of the original training cohort (its manifest labels), drawn
seeded, ``replay_ratio`` per labelled study, none of them a labelled study; and up to
``calibration_cases`` more, disjoint, on which the calibration is fitted again (see
`fusion.finetune`). Without ``--data`` the model learns from the labels alone and keeps its
parent's calibration.

The new bundle's version is the parent's with ``+ft.<first 8 hex digits of the labels file's
sha256>`` (PEP 440 local version) unless given; its ``config.json`` records the parent's sha256
and the labels file's sha256 (of its bytes, as read: ``sha256sum`` gives the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from connectors import Strictness, link_cases, read_dicom
from connectors.dicom.web import StudyRef
from connectors.domain import Case, PatientRecord
from connectors.errors import ConnectorError
from connectors.fhir.fetch import fetch_record
from connectors.http import redact_url
from fusion.finetune import TargetedCase, fine_tune
from fusion.model.bundle import default_bundle_path, load_bundle
from fusion.train import LabelledCase
from plugin.cohort import load_cohort
from plugin.errors import FineTuneError, LabelledStudiesNotFound, LabelsFileInvalid
from plugin.servers import ServerSettings
from plugin.store import FabricationKind, TrainingLabel
from plugin.sweep import servers as server_sweep
from plugin.sweep.prepare import load_case
from plugin.sweep.servers import StudySelection, record_subjects
from plugin.sweep.units import units_from_folder

__all__ = [
    "HEAD_TARGETS",
    "FoundStudies",
    "LabelsFile",
    "find_studies",
    "find_studies_on_servers",
    "fine_tuned_version",
    "head_targets",
    "read_labels",
    "run_finetune",
    "targeted_case",
]

logger = logging.getLogger(__name__)

#: (label, fabrication kind) -> (consistency target, synthetic target), ``None`` for a head the
#: label does not speak for; a pair not listed trains nothing (see the module docstring).
HEAD_TARGETS: Mapping[tuple[str, FabricationKind | None], tuple[float | None, float | None]] = {
    ("clean", None): (1.0, 0.0),
    ("manipulated", FabricationKind.SYNTHETIC): (None, 1.0),
    ("manipulated", FabricationKind.TAMPERED): (None, 1.0),
    ("manipulated", FabricationKind.WRONG_PATIENT): (0.0, None),
}


@dataclass(frozen=True)
class LabelsFile:
    """A labels file as read: its labels and the sha256 of its bytes."""

    path: Path
    labels: tuple[TrainingLabel, ...]
    sha256: str


def read_labels(path: Path) -> LabelsFile:
    """Read ``crosscheck labels``' file; :class:`~plugin.errors.LabelsFileInvalid` says what is wrong
    (a missing file, bad JSON, an entry that is not a label, a study labelled twice)."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise LabelsFileInvalid(
            f"no labels file at {path}: write one with `crosscheck labels --out {path}`"
        ) from None
    except OSError as exc:
        raise LabelsFileInvalid(f"cannot read the labels file {path}: {exc.strerror or exc}") from exc
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelsFileInvalid(
            f"{path} is not JSON ({exc}): give the file `crosscheck labels --out` wrote"
        ) from exc
    entries = document.get("labels") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise LabelsFileInvalid(f'{path} is not a labels file: expected {{"labels": [...]}}')
    labels: list[TrainingLabel] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        try:
            label = TrainingLabel.from_json(entry)
        except ValueError as exc:
            raise LabelsFileInvalid(f"{path}: label #{i + 1} is unusable: {exc}") from exc
        if label.study_instance_uid in seen:
            raise LabelsFileInvalid(
                f"{path}: label #{i + 1} labels a study labelled before it: one label per study"
            )
        seen.add(label.study_instance_uid)
        labels.append(label)
    return LabelsFile(Path(path), tuple(labels), hashlib.sha256(raw).hexdigest())


def head_targets(label: TrainingLabel) -> tuple[float | None, float | None] | None:
    """(consistency, synthetic) targets of a label (:data:`HEAD_TARGETS`); ``None``: it trains nothing."""
    return HEAD_TARGETS.get((label.label, label.fabrication_kind))


def targeted_case(label: TrainingLabel, case: Case) -> TargetedCase | None:
    """The study ``case`` with its label's targets; ``None`` when the label trains nothing, or trains
    only the consistency head and the case has no record."""
    targets = head_targets(label)
    if targets is None:
        return None
    consistency, synthetic = targets
    if synthetic is None and case.record is None:
        return None
    kind = label.label if label.fabrication_kind is None else label.fabrication_kind.value
    return TargetedCase(
        case=case,
        consistency=consistency,
        synthetic=synthetic,
        genuine=label.label == "clean",
        label=kind,
    )


@dataclass(frozen=True)
class FoundStudies:
    """The studies found in a folder by StudyInstanceUID; those not there; those there but unreadable."""

    cases: dict[str, Case]
    missing: tuple[str, ...]
    unreadable: tuple[str, ...]


def find_studies(
    uids: Iterable[str], folder: Path, *, strictness: Strictness | str = Strictness.WARN
) -> FoundStudies:
    """Read and link each study of ``uids`` found in ``folder`` (see the module docstring)."""
    units = {unit.study_instance_uid: unit for unit in units_from_folder(folder, strictness=strictness).units}
    cases: dict[str, Case] = {}
    missing: list[str] = []
    unreadable: list[str] = []
    for uid in uids:
        unit = units.get(uid)
        if unit is None:
            missing.append(uid)
            logger.debug("labelled study %s is not in %s", uid, folder)
            continue
        try:
            cases[uid] = load_case(unit, strictness)
        except (ConnectorError, OSError) as exc:
            unreadable.append(uid)
            logger.debug("labelled study %s could not be read: %s", uid, exc.__class__.__name__)
    return FoundStudies(cases, tuple(missing), tuple(unreadable))


def find_studies_on_servers(
    uids: Iterable[str],
    settings: ServerSettings,
    cache: Path,
    *,
    strictness: Strictness | str = Strictness.WARN,
) -> FoundStudies:
    """Each study of ``uids`` the PACS of ``settings`` holds, fetched into ``cache`` (its files must
    stay there while the cases are used) and linked to its patient's record on the FHIR server (see
    the module docstring). A study the PACS does not hold is missing; one whose fetch, or whose
    record's, fails is unreadable. `connectors.errors.ServerError` when a server cannot be reached."""
    wanted = list(dict.fromkeys(uids))
    if settings.dicomweb_url is None:
        raise ValueError("the labelled studies are fetched over DICOMweb: the settings name no PACS")
    cases: dict[str, Case] = {}
    missing: list[str] = []
    unreadable: list[str] = []
    with settings.dicomweb_source(settings.dicomweb_url) as pacs:
        refs = server_sweep.find_studies(pacs, StudySelection(study_instance_uids=tuple(wanted)))
        subjects: dict[str, str | None] = {}
        records: dict[str, PatientRecord] = {}
        failed: set[str] = set()
        if refs and settings.fhir_url is not None:
            subjects, records, failed = asyncio.run(_records(settings, refs, strictness))
        on_pacs = {ref.study_instance_uid for ref in refs}
        for uid in wanted:
            if uid not in on_pacs:
                missing.append(uid)
                logger.debug("labelled study %s is not on the PACS", uid)
                continue
            patient = subjects.get(uid)
            try:
                if patient in failed:
                    raise ConnectorError(f"the record of Patient/{patient} could not be fetched")
                pacs.download_study(uid, cache)
                study = next(
                    s for s in read_dicom(cache / uid, strictness=strictness) if s.study_instance_uid == uid
                )
            except (ConnectorError, OSError, StopIteration) as exc:
                unreadable.append(uid)
                logger.debug("labelled study %s could not be fetched: %s", uid, exc.__class__.__name__)
                continue
            record = records.get(patient) if patient is not None else None
            cases[uid] = link_cases([study.decoding_once()], [record] if record is not None else [])[0]
    return FoundStudies(cases, tuple(missing), tuple(unreadable))


async def _records(
    settings: ServerSettings, refs: list[StudyRef], strictness: Strictness | str
) -> tuple[dict[str, str | None], dict[str, PatientRecord], set[str]]:
    """Each study's Patient on the FHIR server (linked as a server sweep links it), those patients'
    records, and the Patient ids whose record could not be fetched."""
    fhir = settings.fhir_client()
    try:
        capabilities = await fhir.capabilities()
        found = await record_subjects(fhir, refs)
        patients = sorted({p for p in found if p is not None})
        fetched = await asyncio.gather(
            *(fetch_record(fhir, p, strictness=strictness, capabilities=capabilities) for p in patients),
            return_exceptions=True,
        )
    finally:
        await fhir.aclose()
    records: dict[str, PatientRecord] = {}
    failed: set[str] = set()
    for patient, got in zip(patients, fetched, strict=True):
        if isinstance(got, ConnectorError):
            failed.add(patient)
            logger.debug("the record of Patient/%s could not be fetched: %s", patient, type(got).__name__)
        elif isinstance(got, BaseException):
            raise got
        else:
            records[patient] = got.record
    subjects = {ref.study_instance_uid: p for ref, p in zip(refs, found, strict=True)}
    return subjects, records, failed


def fine_tuned_version(parent_version: str, labels_sha256: str) -> str:
    """``0.3.0`` -> ``0.3.0+ft.1a2b3c4d`` (a PEP 440 local version naming the labels file)."""
    tag = f"ft.{labels_sha256[:8]}"
    return f"{parent_version}.{tag}" if "+" in parent_version else f"{parent_version}+{tag}"


def _replay_and_calibration(
    data: Path, exclude: set[str], n_replay: int, n_calibration: int, seed: int
) -> tuple[list[LabelledCase], list[LabelledCase]]:
    """Seeded draws from the cohort at ``data``, none of them in ``exclude``: replay, then calibration."""
    cohort = load_cohort(data)
    eligible = [i for i, e in enumerate(cohort.entries) if e.study_instance_uid not in exclude]
    order = np.random.default_rng([seed, 20_000]).permutation(len(eligible))
    chosen = [eligible[int(k)] for k in order]
    replay_at = sorted(chosen[:n_replay])
    calibration_at = sorted(chosen[n_replay : n_replay + n_calibration])

    def load(at: list[int]) -> list[LabelledCase]:
        if not at:
            return []
        part = dataclasses.replace(cohort, entries=tuple(cohort.entries[i] for i in at))
        return list(part.iter_cases())

    print(f"reading {len(replay_at)} replay and {len(calibration_at)} calibration cases of {data}")
    return load(replay_at), load(calibration_at)


def _plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else words or word + 's'}"


def run_finetune(
    *,
    labels: Path,
    studies: Path | ServerSettings,
    out: Path,
    model: Path | None = None,
    data: Path | None = None,
    epochs: int = 5,
    lr: float = 5e-4,
    batch_size: int = 16,
    replay_ratio: int = 3,
    calibration_cases: int = 200,
    seed: int = 0,
    device: str | None = None,
    version: str | None = None,
    strictness: Strictness | str = Strictness.WARN,
    progress: bool = True,
) -> int:
    """``crosscheck finetune`` (see the module docstring); prints what it did, returns 0. ``studies``
    is the folder holding the labelled studies, or the servers to fetch them from."""
    if epochs < 1 or batch_size < 1:
        raise FineTuneError("--epochs and --batch-size must be at least 1")
    if not (math.isfinite(lr) and lr > 0):
        raise FineTuneError("--lr must be a positive number")
    if replay_ratio < 0 or calibration_cases < 0:
        raise FineTuneError("--replay-ratio and --calibration-cases must not be negative")
    read = read_labels(labels)
    if not read.labels:
        raise FineTuneError(f"{labels} holds no labels: record dispositions first, then `crosscheck labels`")
    usable = [label for label in read.labels if head_targets(label) is not None]
    skipped = len(read.labels) - len(usable)
    if not usable:
        raise FineTuneError(
            f"none of the {_plural(len(read.labels), 'label')} in {labels} can train a head: they are "
            "fabrications of kind other or not said; record the kind with the disposition"
        )
    with contextlib.ExitStack() as stack:
        if isinstance(studies, ServerSettings):
            where = f"the PACS at {redact_url(studies.dicomweb_url or '')}"
            cache = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="crosscheck-finetune-")))
            found = find_studies_on_servers(
                [label.study_instance_uid for label in usable], studies, cache, strictness=strictness
            )
        else:
            where = str(studies)
            found = find_studies(
                [label.study_instance_uid for label in usable], studies, strictness=strictness
            )
        return _fine_tune_found(
            read,
            usable,
            skipped,
            found,
            where,
            out=out,
            model=model,
            data=data,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            replay_ratio=replay_ratio,
            calibration_cases=calibration_cases,
            seed=seed,
            device=device,
            version=version,
            progress=progress,
        )


def _fine_tune_found(
    read: LabelsFile,
    usable: list[TrainingLabel],
    skipped: int,
    found: FoundStudies,
    where: str,
    *,
    out: Path,
    model: Path | None,
    data: Path | None,
    epochs: int,
    lr: float,
    batch_size: int,
    replay_ratio: int,
    calibration_cases: int,
    seed: int,
    device: str | None,
    version: str | None,
    progress: bool,
) -> int:
    """`run_finetune` once the labelled studies are found (in ``where``: a folder, or a PACS)."""
    if not found.cases:
        raise LabelledStudiesNotFound(
            f"none of the {_plural(len(usable), 'labelled study', 'labelled studies')} is in {where} "
            "(matched by StudyInstanceUID): give the folder that was swept, the cohort the results "
            "came from, or the servers a server sweep read"
        )
    labelled: list[TargetedCase] = []
    no_record = 0
    for label in usable:
        case = found.cases.get(label.study_instance_uid)
        if case is None:
            continue
        targeted = targeted_case(label, case)
        if targeted is None:
            no_record += 1
            logger.debug("labelled study %s has no record to train on", label.study_instance_uid)
            continue
        labelled.append(targeted)
    if not labelled:
        raise FineTuneError(
            f"the labelled studies found in {where} have no record, and their labels train only the "
            "consistency head: give a folder with the patients' FHIR Bundles"
        )
    print(
        f"{_plural(len(read.labels), 'label')} in {read.path} (sha256 {read.sha256[:12]}): "
        f"{len(labelled)} used, {skipped} skipped (fabrication kind other or not said: no head to train), "
        f"{len(found.missing)} not found in {where}, {len(found.unreadable)} unreadable, "
        f"{no_record} without a record (StudyInstanceUIDs at -vv)"
    )
    parent = load_bundle(model or default_bundle_path(), device=device)
    replay: list[LabelledCase] = []
    calibration: list[LabelledCase] = []
    if data is not None:
        exclude = {label.study_instance_uid for label in read.labels}
        replay, calibration = _replay_and_calibration(
            data, exclude, replay_ratio * len(labelled), calibration_cases, seed
        )
    else:
        print("no --data: no replay of the training cohort, and the parent's calibration is kept")
    new_version = version or fine_tuned_version(parent.version, read.sha256)
    notes = [
        f"labels: `{read.path.name}`, sha256 `{read.sha256}`: {len(labelled)} used of {len(read.labels)} "
        f"({skipped} of kind other or not said, {len(found.missing)} not found, "
        f"{len(found.unreadable)} unreadable, {no_record} without a record)",
        "each label trains the heads it speaks for: clean both, synthetic and tampered the synthetic "
        "head, wrong-patient the consistency head",
    ]
    report = fine_tune(
        parent,
        labelled,
        out=out,
        version=new_version,
        replay=replay,
        calibration=calibration,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        metadata={
            "labels": {
                "file": read.path.name,
                "sha256": read.sha256,
                "count": len(read.labels),
                "used": len(labelled),
                "skipped": skipped,
                "not_found": len(found.missing),
                "unreadable": len(found.unreadable),
                "without_record": no_record,
            }
        },
        card_notes=notes,
        progress=progress,
        num_threads=1 if device in (None, "cpu") else None,
    )
    calibrated = (
        f"calibration refit on {report.n_calibration} held-out cases"
        if report.recalibrated
        else "the parent's calibration kept"
    )
    print(
        f"fine-tuned {report.parent.name} {report.parent.version} -> {report.version} on "
        f"{_plural(report.n_labelled, 'labelled study', 'labelled studies')} and "
        f"{_plural(report.n_replay, 'replay case')}, "
        f"{report.epochs} epochs ({report.seconds:.0f} s on {report.device}); {calibrated}; "
        f"bundle {report.bundle_path} sha256 {report.sha256}"
    )
    print("the labelled studies (trained on, not held out), model alone, mean overall parent -> fine-tuned:")
    for said, (n, before, after) in report.by_label().items():
        print(f"  {said} ({n}): {before:.3f} -> {after:.3f}")
    return 0
