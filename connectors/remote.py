"""A case from the servers: the record from the FHIR server, the images from the PACS.

`fetch_cases` is the server twin of ``read_bundle`` + ``read_dicom`` +
``link_cases``:

1. the patient's record from the FHIR server (`fetch_record`);
2. the studies to check: the one asked for, or every study the record's
   ImagingStudies name plus every study the PACS holds under the patient's
   identifiers (DICOM PatientID is usually the MRN, not the FHIR id);
3. the PACS: the one given (DICOMweb or DIMSE) or, when none is, the DICOMweb
   ``Endpoint`` of the record's ImagingStudy;
4. each study's headers first and checked against the limits, then its instances
   streamed into ``cache`` and read exactly as files are, then linked to the record.

The studies stay in ``cache`` (pixels decode lazily from there): the caller owns
that folder and removes it when done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Protocol

from connectors.dicom import DicomLimits, read_dicom
from connectors.dicom.web import StudyRef
from connectors.domain import Case, PatientRecord, Study
from connectors.errors import NoImagingFound
from connectors.fhir.fetch import fetch_record
from connectors.fhir.rest import FhirClient
from connectors.link import link_cases
from connectors.strictness import Strictness

__all__ = ["ImagingSource", "RemoteCases", "fetch_cases", "study_uids_for"]

logger = logging.getLogger(__name__)


class ImagingSource(Protocol):
    """What a PACS connector offers the case assembly (DICOMweb and DIMSE both do)."""

    @property
    def requests(self) -> int:
        """Requests (or associations) made so far."""
        ...

    #: False when the files are re-written on arrival (DIMSE carries no file meta
    #: information: the receiver writes its own), so their ImplementationClassUID
    #: and ImplementationVersionName describe us, not the device.
    preserves_file_meta: bool

    def find_studies(
        self,
        *,
        patient_id: str | None = None,
        accession_number: str | None = None,
        study_instance_uid: str | None = None,
        date_from: date | None = None,
        date_to: date | None = None,
    ) -> list[StudyRef]: ...

    def download_study(self, study_instance_uid: str, dest: Path) -> list[Path]: ...


@dataclass
class RemoteCases:
    """The cases assembled from the servers, and what it took."""

    cases: list[Case]
    record: PatientRecord | None
    studies: list[Study]
    fhir_requests: int = 0
    imaging_requests: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)


async def fetch_cases(
    *,
    fhir: FhirClient | None,
    imaging: ImagingSource | None,
    cache: Path,
    patient_id: str | None = None,
    study_instance_uid: str | None = None,
    strictness: Strictness | str = Strictness.WARN,
    limits: DicomLimits = DicomLimits(),
    endpoint_source: Callable[[str], ImagingSource] | None = None,
) -> RemoteCases:
    """Assemble the cases of one patient (or of one study) from the servers.

    ``patient_id`` is the FHIR Patient id when ``fhir`` is given, else the DICOM
    PatientID. ``endpoint_source`` makes an `ImagingSource` for an ImagingStudy's
    Endpoint address when ``imaging`` is None. Raises `NoImagingFound` when there
    is no study to check.
    """
    if patient_id is None and study_instance_uid is None:
        raise ValueError("give a patient id, a StudyInstanceUID, or both")
    timings: dict[str, float] = {}
    record: PatientRecord | None = None
    fhir_requests = 0
    t0 = time.perf_counter()
    if fhir is not None and patient_id is not None:
        capabilities = await fhir.capabilities()
        fetched = await fetch_record(fhir, patient_id, strictness=strictness, capabilities=capabilities)
        record, fhir_requests = fetched.record, fetched.requests + 1
    timings["record"] = _ms(t0)

    sources: list[tuple[ImagingSource, str]] = []
    if imaging is not None:
        sources.append((imaging, "the PACS"))
    elif record is not None and endpoint_source is not None:
        for address in sorted({s.endpoint for s in record.imaging_studies if s.endpoint}):
            sources.append((endpoint_source(address), f"ImagingStudy Endpoint {address}"))
    if not sources:
        raise NoImagingFound(
            "no PACS to fetch images from: give a DICOMweb URL or a DIMSE peer, "
            "or link the ImagingStudy to a DICOMweb Endpoint"
        )

    t1 = time.perf_counter()
    studies: list[Study] = []
    requests_before = sum(s.requests for s, _ in sources)
    for source, name in sources:
        uids = await asyncio.to_thread(
            study_uids_for, source, record, patient_id if record is None else None, study_instance_uid
        )
        for uid in uids:
            files = await asyncio.to_thread(source.download_study, uid, cache)
            logger.debug("fetched study %s from %s: %d instance(s)", uid, name, len(files))
            folder = files[0].parent if files else cache / uid
            read = read_dicom(folder, limits=limits, strictness=strictness)
            studies.extend(read if source.preserves_file_meta else [_without_file_meta(s) for s in read])
        if studies:
            break
    timings["images"] = _ms(t1)
    if not studies:
        who = f"Patient/{patient_id}" if record is not None else f"PatientID {patient_id}"
        target = f"study {study_instance_uid}" if study_instance_uid else who
        raise NoImagingFound(f"no imaging study found for {target} on {sources[0][1]}")
    cases = link_cases(studies, [record] if record is not None else [])
    timings["total"] = _ms(t0)
    return RemoteCases(
        cases=cases,
        record=record,
        studies=studies,
        fhir_requests=fhir_requests,
        imaging_requests=sum(s.requests for s, _ in sources) - requests_before,
        timings_ms=timings,
    )


def study_uids_for(
    source: ImagingSource,
    record: PatientRecord | None,
    dicom_patient_id: str | None,
    study_instance_uid: str | None,
) -> list[str]:
    """The StudyInstanceUIDs to fetch, in a stable order.

    With ``study_instance_uid``: just that one (checked to exist on the PACS).
    Otherwise the union of the record's ImagingStudy UIDs that the PACS holds and
    the PACS's studies under any of the patient's identifier values.
    """
    if study_instance_uid is not None:
        found = source.find_studies(study_instance_uid=study_instance_uid)
        return [study_instance_uid] if found else []
    wanted: dict[str, None] = {}
    ids: Sequence[str] = [dicom_patient_id] if dicom_patient_id else []
    if record is not None:
        ids = sorted({i.value for i in record.patient.identifiers if i.value})
    for value in ids:
        for ref in source.find_studies(patient_id=value):
            wanted.setdefault(ref.study_instance_uid, None)
    if record is not None:  # studies the record names but the PACS files under another PatientID
        for study in record.imaging_studies:
            uid = study.study_instance_uid
            if uid and uid not in wanted and source.find_studies(study_instance_uid=uid):
                wanted.setdefault(uid, None)
    return list(wanted)


def _without_file_meta(study: Study) -> Study:
    """The study with the receiver-written file meta fields unknown rather than wrong."""
    return replace(
        study,
        series=tuple(
            replace(
                series,
                instances=tuple(
                    replace(i, implementation_class_uid=None, implementation_version_name=None)
                    for i in series.instances
                ),
            )
            for series in study.series
        ),
    )


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)
