"""What a server sweep scores: the studies on a PACS that match a `StudySelection`, as `SweepUnit`s.

The PACS is searched with QIDO-RS (`connectors.dicom.web.DicomWebSource.search_studies`,
paged by ``limit``/``offset``, so an archive of thousands of studies lists in pages):

- ``StudyDate`` as a DICOM range (``20240101-20240131``; an open end: ``20240101-``);
- ``PatientID`` (as the PACS files studies: usually the MRN), ``AccessionNumber`` and
  ``StudyInstanceUID``, one search per value;
- ``ModalitiesInStudy`` is matched here, on the value each match returns (or, where a PACS
  leaves it out, on its series' Modality), never sent: Orthanc matches it on the series
  after cutting the page, so a paged search by modality loses studies (``limit=2&offset=2``
  comes back empty where a third study matches). A sweep by modality alone therefore pages
  through the whole archive's study list.

Filters combine as AND: a study must match each filter given (any of a filter's values).
Each search carries every filter with one value; what comes back is checked against all of
them again, so a PACS that ignores a filter does not widen the sweep.

Each study is then linked to its patient's record on the FHIR server, as the service's
ingest links a study: the subject of the ImagingStudy that carries the StudyInstanceUID,
else the one Patient with an identifier equal to the study's PatientID; neither, and the
study is scored on its image and header alone.

A unit's ``inputs`` (stored with its result; their fingerprint is what a resumed sweep
skips) are what changes when the study or the record changes:

- ``study_instance_uid``, ``patient_id`` (the DICOM PatientID), ``accession_number``;
- ``instances``: ``"<n> sha256:<hex>"`` of the study's sorted SOPInstanceUIDs (one QIDO-RS
  instance search a study): an instance added, removed or replaced by another changes it;
- ``fhir_patient``: the Patient id whose record the study is checked against;
- ``record``: ``"<n> sha256:<hex>"`` of that record's resources as
  ``[type]/[id]/_history/[versionId]@[lastUpdated]`` (`connectors.fhir.fetch.record_versions`:
  the record's own searches with ``_elements=meta``, about a dozen small requests a patient):
  a resource added, removed or updated changes it.

Neither server's address is among them: a PACS that moves is not swept again. Pixel data
re-sent under the same SOPInstanceUIDs is not seen (DICOMweb says nothing cheaper about it
than the pixels themselves).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

from connectors.dicom.web import QIDO_PAGE_SIZE, DicomWebSource, StudyRef
from connectors.fhir.fetch import imaging_study_subjects, patients_with_identifier, record_versions
from connectors.fhir.rest import FhirClient
from plugin.errors import EmptySelection, UsageError
from plugin.servers import ServerSettings
from plugin.sweep.units import SweepUnit

__all__ = [
    "ServerStudy",
    "StudySelection",
    "digest",
    "find_studies",
    "parse_study_date",
    "read_identifiers",
    "record_subjects",
    "units_from_servers",
]

logger = logging.getLogger(__name__)

_LOOKUP_THREADS = 4  # QIDO-RS instance searches in flight while listing


@dataclass(frozen=True)
class StudySelection:
    """Which studies of the PACS a server sweep scores: every filter given must match (AND), any
    one value of a filter will do. Values are stripped, de-duplicated and sorted; modalities are
    DICOM codes (``CT``, ``MR``, ``DX``), upper-cased."""

    date_from: date | None = None
    date_to: date | None = None
    modalities: tuple[str, ...] = ()
    patient_ids: tuple[str, ...] = ()
    accession_numbers: tuple[str, ...] = ()
    study_instance_uids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = ("modalities", "patient_ids", "accession_numbers", "study_instance_uids")
        for name, upper in zip(names, (True, False, False, False), strict=True):
            values = [str(v).strip() for v in getattr(self, name)]
            if any(not v for v in values):
                raise UsageError(f"an empty value among the {name.replace('_', ' ')} of the sweep")
            object.__setattr__(self, name, tuple(sorted({v.upper() if upper else v for v in values})))
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise UsageError(f"--date-from {self.date_from} is after --date-to {self.date_to}")
        if not (
            self.study_date
            or self.modalities
            or self.patient_ids
            or self.accession_numbers
            or self.study_instance_uids
        ):
            raise UsageError(
                "a server sweep needs at least one filter: --date-from/--date-to, --modality, "
                "--patient (or --patients-file), --accession (or --accessions-file), --study-uid "
                "(or --study-uids-file)"
            )

    @property
    def study_date(self) -> str | None:
        """The StudyDate range in DICOM range matching (``YYYYMMDD-YYYYMMDD``, an open end empty)."""
        if self.date_from is None and self.date_to is None:
            return None
        low = self.date_from.strftime("%Y%m%d") if self.date_from else ""
        high = self.date_to.strftime("%Y%m%d") if self.date_to else ""
        return f"{low}-{high}"

    def queries(self) -> list[dict[str, str]]:
        """The QIDO-RS study searches (DICOM keyword -> value) whose union holds the selection.

        One search per StudyInstanceUID when some are given (each names one study), else one per
        AccessionNumber (each names about one study), else one per PatientID, else one; the
        StudyDate range and a single PatientID go into every search, the rest is checked on what
        comes back (`matches`). ModalitiesInStudy is never sent (see the module docstring): with
        no other filter, the one search lists every study.
        """
        common: dict[str, str] = {}
        if self.study_date:
            common["StudyDate"] = self.study_date
        if len(self.patient_ids) == 1:
            common["PatientID"] = self.patient_ids[0]
        if self.study_instance_uids:
            return [{**common, "StudyInstanceUID": u} for u in self.study_instance_uids]
        if self.accession_numbers:
            return [{**common, "AccessionNumber": a} for a in self.accession_numbers]
        if self.patient_ids:
            return [{**common, "PatientID": p} for p in self.patient_ids]
        return [common]

    def matches(self, ref: StudyRef, query: Mapping[str, str]) -> bool:
        """Whether a match of ``query`` (one of `queries`) agrees with every filter. An attribute the
        PACS left out of the match is taken as matched when ``query`` carried it (the PACS matched
        it), as not matched otherwise."""

        def agrees(keyword: str, value: str | None, wanted: Callable[[str], bool]) -> bool:
            return keyword in query if value is None else wanted(value)

        if self.study_instance_uids and ref.study_instance_uid not in self.study_instance_uids:
            return False
        if self.patient_ids and not agrees("PatientID", ref.patient_id, lambda v: v in self.patient_ids):
            return False
        if self.accession_numbers and not agrees(
            "AccessionNumber", ref.accession_number, lambda v: v in self.accession_numbers
        ):
            return False
        if self.modalities and not set(ref.modalities) & set(self.modalities):
            return False
        if self.study_date:
            low = self.date_from.strftime("%Y%m%d") if self.date_from else ""
            high = self.date_to.strftime("%Y%m%d") if self.date_to else "99991231"
            if not agrees("StudyDate", ref.study_date, lambda v: low <= v[:8] <= high):
                return False
        return True

    def describe(self) -> str:
        """The filters in words, without a patient id or accession number (for logs and the sweep's
        description): ``StudyDate 20240101-20240131, ModalitiesInStudy CT, 3 PatientIDs``."""
        parts = []
        if self.study_date:
            parts.append(f"StudyDate {self.study_date}")
        if self.modalities:
            parts.append(f"ModalitiesInStudy {'|'.join(self.modalities)}")
        if self.patient_ids:
            parts.append(f"{len(self.patient_ids)} PatientID{'s' if len(self.patient_ids) > 1 else ''}")
        if self.accession_numbers:
            n = len(self.accession_numbers)
            parts.append(f"{n} AccessionNumber{'s' if n > 1 else ''}")
        if self.study_instance_uids:
            n = len(self.study_instance_uids)
            parts.append(f"{n} StudyInstanceUID{'s' if n > 1 else ''}")
        return ", ".join(parts)


@dataclass(frozen=True)
class ServerStudy:
    """The ``source`` of a server sweep's unit: where its reader fetches the study and the record.

    ``settings`` are the servers' addresses and credentials (picklable: no client, no
    connection; each reader process makes its own), ``cache`` the folder readers fetch
    studies into, ``fhir_patient`` the Patient id whose record the study is checked against
    (None: scored on the image and its header alone).
    """

    settings: ServerSettings
    cache: Path
    fhir_patient: str | None = None


def digest(values: Iterable[str]) -> str:
    """``"<n> sha256:<hex>"`` of the distinct values, sorted, one a line: the same for the same set
    in any order, another when one is added, removed or changed."""
    distinct = sorted(set(values))
    return f"{len(distinct)} sha256:{hashlib.sha256(chr(10).join(distinct).encode('utf-8')).hexdigest()}"


def parse_study_date(text: str, option: str) -> date:
    """``YYYY-MM-DD`` or ``YYYYMMDD`` as a date; `UsageError` naming ``option`` otherwise."""
    value = text.strip()
    try:
        if len(value) == 8 and value.isdigit():
            return date(int(value[:4]), int(value[4:6]), int(value[6:]))
        return date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{option} {text!r} is not a date: give YYYY-MM-DD") from None


def read_identifiers(path: Path, option: str) -> tuple[str, ...]:
    """The identifiers in a text file, one a line; blank lines and ``#`` comments skipped."""
    try:
        lines = path.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise UsageError(f"{option} {path}: cannot read it ({reason})") from None
    values = tuple(v for v in (line.split("#", 1)[0].strip() for line in lines) if v)
    if not values:
        raise UsageError(f"{option} {path}: no identifiers in it (one a line)")
    return values


def units_from_servers(
    settings: ServerSettings,
    selection: StudySelection,
    *,
    cache: Path,
    page_size: int = QIDO_PAGE_SIZE,
) -> tuple[SweepUnit, ...]:
    """The studies on the PACS of ``settings`` that ``selection`` picks, each linked to its patient's
    record on the FHIR server (when ``settings`` has one); readers will fetch them into ``cache``.

    Ordered by patient, then StudyInstanceUID (a patient's studies together, so a reader fetches
    the record once for them). `EmptySelection` when no study matches; the connectors'
    ``ServerError`` when a server cannot be reached or refuses the credentials. Runs its own
    event loop: not to be called from a coroutine.
    """
    if settings.dicomweb_url is None:
        raise UsageError(
            "a server sweep reads the PACS over DICOMweb: give --dicomweb URL or set CROSSCHECK_DICOMWEB_URL"
        )
    with settings.dicomweb_source(settings.dicomweb_url) as pacs:
        refs = find_studies(pacs, selection, page_size=page_size)
        if not refs:
            raise EmptySelection(f"no study on the PACS at {pacs.url} matches {selection.describe()}")
        logger.info("server sweep: %d studies match %s", len(refs), selection.describe())
        with ThreadPoolExecutor(_LOOKUP_THREADS, thread_name_prefix="crosscheck-qido") as pool:
            digests = pool.map(functools.partial(_instance_digest, pacs), refs)
            instances = dict(zip((r.study_instance_uid for r in refs), digests, strict=True))
    links: dict[str, tuple[str | None, str | None]] = {}
    if settings.fhir_url is not None:
        links = asyncio.run(_link_records(settings, refs))
    else:
        logger.warning("no FHIR server: the studies are scored without their patients' records")
    units = []
    for ref in refs:
        uid = ref.study_instance_uid
        fhir_patient, record = links.get(uid, (None, None))
        inputs = {"study_instance_uid": uid, "instances": instances[uid]}
        if ref.patient_id:
            inputs["patient_id"] = ref.patient_id
        if ref.accession_number:
            inputs["accession_number"] = ref.accession_number
        if fhir_patient is not None and record is not None:
            inputs["fhir_patient"] = fhir_patient
            inputs["record"] = record
        units.append(
            SweepUnit(
                study_instance_uid=uid,
                patient_id=fhir_patient or ref.patient_id,
                accession_number=ref.accession_number,
                dicom=cache,
                bundle=None,
                inputs=inputs,
                source=ServerStudy(settings=settings, cache=cache, fhir_patient=fhir_patient),
            )
        )
    units.sort(key=lambda u: (u.patient_id or "", u.study_instance_uid))
    return tuple(units)


def find_studies(
    pacs: DicomWebSource, selection: StudySelection, *, page_size: int = QIDO_PAGE_SIZE
) -> list[StudyRef]:
    """Every study of the PACS that ``selection`` picks, once each, by StudyInstanceUID."""
    found: dict[str, StudyRef] = {}
    for query in selection.queries():
        for page in pacs.search_studies(query, page_size=page_size):
            for ref in page:
                if ref.study_instance_uid in found:
                    continue
                if selection.modalities and not ref.modalities:  # the PACS did not say: ask its series
                    series = pacs.find_series(ref.study_instance_uid)
                    ref = replace(
                        ref, modalities=tuple(sorted({str(s.Modality) for s in series if s.get("Modality")}))
                    )
                if selection.matches(ref, query):
                    found[ref.study_instance_uid] = ref
    return [found[uid] for uid in sorted(found)]


def _instance_digest(pacs: DicomWebSource, ref: StudyRef) -> str:
    """`digest` of the study's SOPInstanceUIDs, from a QIDO-RS instance search."""
    found = pacs.find_instances(ref.study_instance_uid)
    return digest(str(ds.get("SOPInstanceUID", "")) for ds in found if ds.get("SOPInstanceUID"))


async def _link_records(
    settings: ServerSettings, refs: Sequence[StudyRef]
) -> dict[str, tuple[str | None, str | None]]:
    """StudyInstanceUID -> (the Patient id of its record, that record's `digest` of versions)."""
    fhir = settings.fhir_client()
    try:
        capabilities = await fhir.capabilities()
        subjects = await record_subjects(fhir, refs)
        patients = sorted({s for s in subjects if s is not None})
        versions = await asyncio.gather(
            *(record_versions(fhir, p, capabilities=capabilities) for p in patients)
        )
    finally:
        await fhir.aclose()
    records = {p: digest(v) for p, v in zip(patients, versions, strict=True)}
    return {
        ref.study_instance_uid: (subject, records[subject] if subject is not None else None)
        for ref, subject in zip(refs, subjects, strict=True)
    }


async def record_subjects(fhir: FhirClient, refs: Sequence[StudyRef]) -> list[str | None]:
    """The Patient id of each study's record on ``fhir`` (see the module docstring; None: no one
    Patient), in the order of ``refs``."""
    return list(await asyncio.gather(*(_subject(fhir, ref) for ref in refs)))


async def _subject(fhir: FhirClient, ref: StudyRef) -> str | None:
    """The Patient id of the study's record: its ImagingStudy's subject, else the one Patient with
    the study's PatientID as an identifier; None when neither names exactly one."""
    uid = ref.study_instance_uid
    subjects = await imaging_study_subjects(fhir, uid)
    if not subjects and ref.patient_id:
        subjects = await patients_with_identifier(fhir, ref.patient_id)
    if len(subjects) == 1:
        (subject,) = subjects
        logger.debug("study %s: the record of Patient/%s", uid, subject)
        return subject
    logger.debug("study %s: %d candidate patients on the FHIR server; no record", uid, len(subjects))
    return None
