"""What a sweep scores: one `SweepUnit` per study, found in a folder.

A cohort folder (``manifest.json``, from ``crosscheck simulate``) names each study, its
DICOM folder and its patient's Bundle, so nothing is read to list them. Any other folder
is read as ``crosscheck check`` reads one: every FHIR Bundle in it (``*.json``) and the
DICOM headers, linked with `connectors.link_cases`; each study then remembers the Bundle
its record came from.

A unit's ``inputs`` are the identifiers stored with its result: StudyInstanceUID, the
patient id and accession number, and each file's name (relative to the swept folder),
size and modification time. A file changed since is a new input, scored again.

A unit of a server sweep (`plugin.sweep.servers.units_from_servers`) has a ``source``
instead of files: where its reader fetches the study and the record from.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from connectors import Strictness, link_cases, read_bundle
from connectors.dicom import read_dicom_folder
from connectors.domain import PatientRecord, SiteProfile
from connectors.errors import NoInputFound
from plugin.check import load_site
from plugin.cohort import load_cohort
from plugin.store import input_fingerprint

if TYPE_CHECKING:
    from plugin.sweep.servers import ServerStudy

__all__ = ["FolderSweep", "SweepUnit", "file_listing", "units_from_folder"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepUnit:
    """One study to score: where its DICOM files and its patient's Bundle are, and the identifiers
    stored with its result (``inputs``; their `input_fingerprint` is what a resumed sweep skips).

    ``source`` is None for a study in a folder; for a study on a PACS it says where the reader
    fetches it and its record (`plugin.sweep.servers.ServerStudy`), and ``dicom`` is the folder
    the readers fetch into."""

    study_instance_uid: str
    patient_id: str | None
    accession_number: str | None
    dicom: Path  # a folder (or file) holding the study; other studies there are ignored
    bundle: Path | None
    inputs: Mapping[str, str] = field(default_factory=dict)
    source: ServerStudy | None = None

    @property
    def fingerprint(self) -> str:
        return input_fingerprint(self.inputs)


@dataclass(frozen=True)
class FolderSweep:
    """The units found in a folder, and its site profile (``site.json``) when it has one."""

    root: Path
    units: tuple[SweepUnit, ...]
    site: SiteProfile | None


def file_listing(files: Iterable[Path], root: Path) -> str:
    """``name<TAB>size<TAB>mtime_ns`` per file, one a line, sorted; names relative to ``root``."""
    lines = []
    for path in files:
        st = path.stat()
        lines.append(f"{path.relative_to(root).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}")
    return "\n".join(sorted(lines))


def _files_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return [Path(d) / f for d, _, names in os.walk(path) for f in names if not f.startswith(".")]


def _inputs(
    root: Path,
    uid: str,
    patient_id: str | None,
    accession: str | None,
    files: Iterable[Path],
    bundle: Path | None,
) -> dict[str, str]:
    inputs = {"study_instance_uid": uid, "files": file_listing(files, root)}
    if patient_id:
        inputs["patient_id"] = patient_id
    if accession:
        inputs["accession_number"] = accession
    if bundle is not None:
        inputs["bundle"] = file_listing([bundle], root)
    return inputs


def units_from_folder(
    root: Path, *, site_path: Path | None = None, strictness: Strictness | str = Strictness.WARN
) -> FolderSweep:
    """Every study under ``root`` (a cohort folder, or any folder of Bundles and DICOM)."""
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder")
    if not root.is_dir():
        raise NoInputFound(f"{root}: not a folder; sweep a folder of FHIR Bundles and DICOM studies")
    root = root.resolve()
    if (root / "manifest.json").is_file():
        cohort = load_cohort(root)
        site = cohort.site
        units = tuple(
            SweepUnit(
                study_instance_uid=e.study_instance_uid,
                patient_id=e.patient_id,
                accession_number=None,
                dicom=e.dicom,
                bundle=e.bundle,
                inputs=_inputs(
                    root, e.study_instance_uid, e.patient_id, None, _files_under(e.dicom), e.bundle
                ),
            )
            for e in cohort.entries
        )
    else:
        site = None
        units = _units_from_plain_folder(root, strictness)
    if site_path is not None:
        site = load_site(site_path)
    elif site is None and (root / "site.json").is_file():
        site = load_site(root / "site.json")
    if not units:
        raise NoInputFound(f"{root}: no DICOM studies found")
    logger.debug("sweep of %s: %d studies", root, len(units))
    return FolderSweep(root=root, units=units, site=site)


def _is_bundle(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(4096).decode("utf-8", "replace")
    except OSError:
        return False
    return '"Bundle"' in head and '"resourceType"' in head


def _units_from_plain_folder(root: Path, strictness: Strictness | str) -> tuple[SweepUnit, ...]:
    bundles = sorted(p for p in root.rglob("*.json") if _is_bundle(p))
    records: list[PatientRecord] = []
    source: dict[int, Path] = {}
    for path in bundles:
        for record in read_bundle(path, strictness=strictness):
            records.append(record)
            source[id(record)] = path
    try:
        studies = read_dicom_folder(root, strictness=Strictness.IGNORE).studies
    except NoInputFound:
        return ()
    units = []
    for case in link_cases(studies, records):
        files = [i.path for s in case.study.series for i in s.instances if i.path is not None]
        folder = Path(os.path.commonpath(files)) if files else root
        if folder.is_file():
            folder = folder.parent
        bundle = source.get(id(case.record)) if case.record is not None else None
        uid, accession = case.study_instance_uid, case.study.accession_number
        units.append(
            SweepUnit(
                study_instance_uid=uid,
                patient_id=case.patient_id,
                accession_number=accession,
                dicom=folder,
                bundle=bundle,
                inputs=_inputs(root, uid, case.patient_id, accession, files, bundle),
            )
        )
    return tuple(units)
