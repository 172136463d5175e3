"""Linking DICOM studies to the FHIR record: ``Study`` + ``PatientRecord`` -> ``Case``.

Each study is matched to a patient's record by the strongest key available
(`LinkMethod`, strongest first):

1. ``StudyInstanceUID`` == an ``ImagingStudy`` identifier (``urn:dicom:uid``);
2. ``AccessionNumber`` == an imaging ``ServiceRequest``'s ACSN identifier (or
   an ``ImagingStudy``'s accession identifier);
3. ``PatientID`` (or one of ``OtherPatientIDs``) == a ``Patient.identifier`` value.

Within the matched record, the order is the ``ServiceRequest`` the
``ImagingStudy`` is ``basedOn`` (else the one with the study's accession number),
and the report is the ``DiagnosticReport`` whose ``imagingStudy`` references the
``ImagingStudy`` (else the one ``basedOn`` the order). A study that matches no
record becomes a ``Case`` with ``record=None`` and ``LinkMethod.NONE``.

When a key matches more than one record (the same StudyInstanceUID in two
patients' records, an MRN shared across issuers), the first record in input
order is used and a warning is logged: that ambiguity is itself worth a check.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from connectors.domain.case import Case, LinkMethod
from connectors.domain.imaging import Study
from connectors.domain.record import DiagnosticReport, ImagingOrder, ImagingStudyRecord, PatientRecord

__all__ = ["link_cases", "link_study"]

logger = logging.getLogger(__name__)


def link_cases(
    studies: Iterable[Study], records: Iterable[PatientRecord] | Mapping[str, PatientRecord]
) -> list[Case]:
    """One `Case` per study, in the studies' order, linked to its record where one matches."""
    pool = list(records.values()) if isinstance(records, Mapping) else list(records)
    return [link_study(study, pool) for study in studies]


def link_study(study: Study, records: Iterable[PatientRecord]) -> Case:
    """The `Case` for one study (see the module docstring for the matching rules)."""
    pool = list(records)

    by_uid = [
        (r, i) for r in pool for i in r.imaging_studies if i.study_instance_uid == study.study_instance_uid
    ]
    if by_uid:
        _warn_if_ambiguous(by_uid, "StudyInstanceUID", study)
        record, uid_imaging = by_uid[0]
        order = _order_for(record, uid_imaging, study.accession_number)
        return _case(study, record, order, uid_imaging, LinkMethod.STUDY_INSTANCE_UID)

    accession = study.accession_number
    if accession:
        by_order = [(r, o) for r in pool for o in r.orders if o.accession_number == accession]
        by_imaging = [(r, i) for r in pool for i in r.imaging_studies if i.accession_number == accession]
        if by_order or by_imaging:
            record = (by_order or by_imaging)[0][0]
            _warn_if_ambiguous(by_order or by_imaging, "AccessionNumber", study)
            order = next((o for r, o in by_order if r is record), None)
            imaging = next((i for r, i in by_imaging if r is record), None)
            if imaging is None and order is not None:
                imaging = next((i for i in record.imaging_studies if order.id in i.based_on), None)
            if order is None and imaging is not None:
                order = _order_for(record, imaging, None)
            return _case(study, record, order, imaging, LinkMethod.ACCESSION_NUMBER)

    ids = {i for i in (study.patient.patient_id, *study.patient.other_ids) if i}
    by_patient = [(r, r.patient) for r in pool if any(i.value in ids for i in r.patient.identifiers)]
    if by_patient:
        _warn_if_ambiguous(by_patient, "PatientID", study)
        return Case(study=study, record=by_patient[0][0], link=LinkMethod.PATIENT_IDENTIFIER)

    logger.debug("study %s: no matching record", study.study_instance_uid)
    return Case(study=study, link=LinkMethod.NONE)


def _order_for(
    record: PatientRecord, imaging: ImagingStudyRecord, accession: str | None
) -> ImagingOrder | None:
    for order in record.orders:
        if order.id in imaging.based_on:
            return order
    for acsn in (imaging.accession_number, accession):
        if acsn:
            for order in record.orders:
                if order.accession_number == acsn:
                    return order
    return None


def _report_for(
    record: PatientRecord, imaging: ImagingStudyRecord | None, order: ImagingOrder | None
) -> DiagnosticReport | None:
    if imaging is not None:
        for report in record.reports:
            if imaging.id in report.imaging_study_ids:
                return report
    if order is not None:
        for report in record.reports:
            if order.id in report.based_on:
                return report
    return None


def _case(
    study: Study,
    record: PatientRecord,
    order: ImagingOrder | None,
    imaging: ImagingStudyRecord | None,
    method: LinkMethod,
) -> Case:
    return Case(
        study=study,
        record=record,
        order=order,
        report=_report_for(record, imaging, order),
        imaging_study=imaging,
        link=method,
    )


def _warn_if_ambiguous(matches: Sequence[tuple[PatientRecord, object]], key: str, study: Study) -> None:
    patients = {r.patient.id for r, _ in matches}
    if len(patients) > 1:
        logger.warning("a study's %s matches %d patients' records; the first is used", key, len(patients))
        logger.debug("study %s: %s matches patients %s", study.study_instance_uid, key, sorted(patients))
