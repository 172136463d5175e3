"""A ``Case``: one study and the part of the patient's record around it.

`connectors.link` builds cases by matching a DICOM study to its FHIR patient,
``ServiceRequest`` (order), ``ImagingStudy`` and ``DiagnosticReport``. The
``SiteProfile`` is what the hospital knows about itself: its DICOM UID roots and
the imaging devices it owns, against which headers are checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from connectors.domain.imaging import Study
from connectors.domain.record import (
    DiagnosticReport,
    ImagingOrder,
    ImagingStudyRecord,
    PatientRecord,
)

__all__ = ["Case", "LinkMethod", "SiteDevice", "SiteProfile"]


class LinkMethod(StrEnum):
    """How a study was matched to its record, strongest first."""

    STUDY_INSTANCE_UID = "study-instance-uid"  # ImagingStudy identifier == StudyInstanceUID
    ACCESSION_NUMBER = "accession-number"  # ServiceRequest ACSN == AccessionNumber
    PATIENT_IDENTIFIER = "patient-identifier"  # Patient.identifier == PatientID
    GIVEN = "given"  # the caller paired them explicitly
    NONE = "none"  # no record


@dataclass(frozen=True)
class Case:
    """One study with its patient's record and the resources linked to it."""

    study: Study
    record: PatientRecord | None = None
    order: ImagingOrder | None = None
    report: DiagnosticReport | None = None
    imaging_study: ImagingStudyRecord | None = None
    link: LinkMethod = LinkMethod.NONE

    @property
    def patient_id(self) -> str | None:
        """The FHIR Patient id when there is a record, else the DICOM PatientID."""
        if self.record is not None:
            return self.record.patient.id
        return self.study.patient.patient_id

    @property
    def study_instance_uid(self) -> str:
        return self.study.study_instance_uid


@dataclass(frozen=True)
class SiteDevice:
    """An imaging device the site owns (as it writes itself into DICOM headers)."""

    manufacturer: str
    model: str
    serial_number: str
    modality: str
    station_name: str | None = None
    software_versions: tuple[str, ...] = ()


@dataclass(frozen=True)
class SiteProfile:
    """What a site knows about its own imaging: UID roots and devices.

    Loaded from a JSON file (``site.json``, written by the simulator for its
    cohort) with ``SiteProfile.from_json``.
    """

    name: str
    uid_roots: tuple[str, ...] = ()
    devices: tuple[SiteDevice, ...] = field(default=())

    def knows_device(self, manufacturer: str | None, model: str | None, serial: str | None) -> bool:
        return any(
            d.manufacturer == manufacturer and d.model == model and d.serial_number == serial
            for d in self.devices
        )

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "uid_roots": list(self.uid_roots),
            "devices": [
                {
                    "manufacturer": d.manufacturer,
                    "model": d.model,
                    "serial_number": d.serial_number,
                    "modality": d.modality,
                    "station_name": d.station_name,
                    "software_versions": list(d.software_versions),
                }
                for d in self.devices
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> SiteProfile:
        raw_devices = data.get("devices", [])
        if not isinstance(raw_devices, list):
            raise ValueError("site profile: 'devices' must be a list")
        devices = tuple(
            SiteDevice(
                manufacturer=str(d["manufacturer"]),
                model=str(d["model"]),
                serial_number=str(d["serial_number"]),
                modality=str(d["modality"]),
                station_name=d.get("station_name"),
                software_versions=tuple(d.get("software_versions", ())),
            )
            for d in raw_devices
        )
        roots = data.get("uid_roots", [])
        if not isinstance(roots, list):
            raise ValueError("site profile: 'uid_roots' must be a list")
        return cls(name=str(data.get("name", "")), uid_roots=tuple(map(str, roots)), devices=devices)
