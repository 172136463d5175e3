"""Parsed FHIR R4 JSON -> `PatientRecord` objects (pure: no I/O).

Input is a Bundle (``transaction``, ``batch``, ``collection`` or ``searchset``)
or a plain sequence of resources (an NDJSON bulk export). Each resource of a
type we map is validated with ``fhir.resources.R4B`` plus the required
``status``/``gender`` code bindings that library does not enforce; a resource
that fails is a problem, handled under the caller's `Strictness`:

- ``raise``: `FhirResourceInvalid` (type, id, reason);
- ``warn`` (default): skipped, a warning without ids logged, and recorded in
  ``PatientRecord.problems`` as ``"Observation/<id>: <reason>"``;
- ``ignore``: skipped and recorded, logged at DEBUG only.

Resources are grouped by the Patient their ``subject`` (``patient`` for Device)
points to: ``Patient/<id>``, an absolute URL ending in it, or a ``urn:uuid:``
``fullUrl`` of a transaction Bundle (a resource without ``id`` takes the uuid as
its id). A resource without a subject goes to the only Patient when there is
one. A resource whose subject is not a Patient in the input is skipped as a
problem (it belongs to someone else).

Dates: every ``datetime`` is timezone-aware UTC. Times with an offset are
converted to UTC; a time without an offset (not valid FHIR) is read as UTC; a
date without a time (``2021``, ``2021-03``, ``2021-03-04``) becomes UTC midnight
of its first day. ``Patient.birthDate`` stays a ``date``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any, Protocol, TypeVar

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from connectors.domain.record import (
    LOINC,
    Coding,
    Condition,
    DeviceRecord,
    DiagnosticReport,
    Encounter,
    ImagingOrder,
    ImagingStudyRecord,
    LabResult,
    Medication,
    Patient,
    PatientIdentifier,
    PatientRecord,
    Procedure,
    ReferenceRange,
)
from connectors.errors import FhirBundleInvalid, FhirResourceInvalid
from connectors.strictness import Strictness

__all__ = [
    "BUNDLE_TYPES",
    "is_imaging_order",
    "merge_records",
    "parse_fhir_datetime",
    "records_from_bundle",
    "records_from_resources",
    "validate_resource",
]

logger = logging.getLogger(__name__)

JSON = Mapping[str, Any]

BUNDLE_TYPES = frozenset({"transaction", "batch", "collection", "searchset"})
"""Bundle types whose entries are read as the patient's resources."""

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
SNOMED_IMAGING = "363679005"  # SNOMED CT "Imaging" (procedure): ServiceRequest.category
DICOM_UID_SYSTEM = "urn:dicom:uid"
_IMAGING_PREFIXES = (
    "XR ",
    "CT ",
    "MR ",
    "MRI ",
    "US ",
    "NM ",
    "PT ",
    "PET ",
    "MG ",
    "RF ",
    "DX ",
    "CR ",
    "XA ",
)

_MAPPED = frozenset(
    {
        "Patient",
        "Observation",
        "Condition",
        "MedicationRequest",
        "MedicationStatement",
        "Medication",
        "Procedure",
        "ServiceRequest",
        "DiagnosticReport",
        "Encounter",
        "Device",
        "ImagingStudy",
        "Endpoint",
    }
)
_SUBJECT_FIELD = {"Device": "patient", "Medication": "", "Endpoint": ""}

# Required bindings fhir.resources does not check (its enum lists are partial), from R4.
_REQUIRED_CODES: dict[tuple[str, str], frozenset[str]] = {
    ("Observation", "status"): frozenset(
        "registered preliminary final amended corrected cancelled entered-in-error unknown".split()
    ),
    ("DiagnosticReport", "status"): frozenset(
        "registered partial preliminary final amended corrected appended cancelled "
        "entered-in-error unknown".split()
    ),
    ("ServiceRequest", "status"): frozenset(
        "draft active on-hold revoked completed entered-in-error unknown".split()
    ),
    ("ServiceRequest", "intent"): frozenset(
        "proposal plan directive order original-order reflex-order filler-order instance-order option".split()
    ),
    ("MedicationRequest", "status"): frozenset(
        "active on-hold cancelled completed entered-in-error stopped draft unknown".split()
    ),
    ("MedicationStatement", "status"): frozenset(
        "active completed entered-in-error intended stopped on-hold unknown not-taken".split()
    ),
    ("Procedure", "status"): frozenset(
        "preparation in-progress not-done on-hold stopped completed entered-in-error unknown".split()
    ),
    ("Encounter", "status"): frozenset(
        "planned arrived triaged in-progress onleave finished cancelled entered-in-error unknown".split()
    ),
    ("ImagingStudy", "status"): frozenset("registered available cancelled entered-in-error unknown".split()),
    ("Device", "status"): frozenset("active inactive entered-in-error unknown".split()),
    ("Patient", "gender"): frozenset("male female other unknown".split()),
}


# -- public entry points --------------------------------------------------------------------------


def records_from_bundle(
    bundle: JSON, *, strictness: Strictness | str = Strictness.WARN, source: str = "bundle"
) -> dict[str, PatientRecord]:
    """Read a Bundle into one `PatientRecord` per Patient, keyed by Patient id.

    Raises `FhirBundleInvalid` (naming ``source``) when ``bundle`` is not a Bundle
    of an accepted type or holds no Patient.
    """
    if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
        found = bundle.get("resourceType") if isinstance(bundle, Mapping) else type(bundle).__name__
        raise FhirBundleInvalid(
            f"{source}: expected a FHIR Bundle but found {found or 'JSON without resourceType'}; "
            "pass a Bundle (or use read_ndjson for one-resource-per-line exports)"
        )
    kind = bundle.get("type")
    if kind not in BUNDLE_TYPES:
        raise FhirBundleInvalid(
            f"{source}: Bundle.type {kind!r} is not one of {', '.join(sorted(BUNDLE_TYPES))}; "
            "export the patient's resources as a collection, searchset or transaction Bundle"
        )
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise FhirBundleInvalid(f"{source}: Bundle.entry must be a list")
    pairs: list[tuple[str | None, JSON]] = []
    for n, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(resource, Mapping):
            logger.debug("%s: entry %d has no resource", source, n)
            continue
        if (entry.get("search") or {}).get("mode") == "outcome":
            continue  # an OperationOutcome about the search, not the patient
        full_url = entry.get("fullUrl")
        pairs.append((full_url if isinstance(full_url, str) else None, resource))
    return _Extraction(pairs, Strictness.of(strictness), source).run()


def records_from_resources(
    resources: Iterable[JSON], *, strictness: Strictness | str = Strictness.WARN, source: str = "resources"
) -> dict[str, PatientRecord]:
    """Read loose resources (e.g. NDJSON lines) into one `PatientRecord` per Patient."""
    pairs = [(None, r) for r in resources if isinstance(r, Mapping)]
    return _Extraction(pairs, Strictness.of(strictness), source).run()


def validate_resource(resource: JSON) -> None:
    """Raise `FhirResourceInvalid` unless ``resource`` validates as FHIR R4 (R4B models).

    The reason names fields and rules only, never the offending values.
    """
    rtype = str(resource.get("resourceType") or "")
    rid = resource.get("id") if isinstance(resource.get("id"), str) else None
    try:
        model = get_fhir_model_class(rtype)
    except (ValueError, KeyError, AttributeError) as exc:
        raise FhirResourceInvalid(rtype or "resource", rid, "unknown resourceType") from exc
    try:
        model.model_validate(dict(resource))
    except ValidationError as exc:
        reasons = [
            f"{'.'.join(str(p) for p in err['loc']) or rtype}: {err['msg']}"
            for err in exc.errors(include_input=False, include_url=False)[:3]
        ]
        more = exc.error_count() - len(reasons)
        reason = "; ".join(r.replace("\n", " ") for r in reasons) + (f" (+{more} more)" if more > 0 else "")
        raise FhirResourceInvalid(rtype, rid, re.sub(r"\s+", " ", reason)) from exc
    except (TypeError, ValueError) as exc:
        raise FhirResourceInvalid(rtype, rid, f"does not validate ({type(exc).__name__})") from exc
    for (bound_type, element), codes in _REQUIRED_CODES.items():
        value = resource.get(element)
        if bound_type == rtype and value is not None and value not in codes:
            raise FhirResourceInvalid(rtype, rid, f"{element}: not a code of its required value set")


def is_imaging_order(resource: JSON) -> bool:
    """Whether a ServiceRequest is an imaging order.

    True when its category is SNOMED CT 363679005 (Imaging), it carries an
    accession number (identifier type ACSN), or its code is a RadLex/DICOM code
    or a LOINC radiology playbook code (display such as "CT Head WO contrast").
    """
    for concept in _list(resource.get("category")):
        if any(c.code == SNOMED_IMAGING for c in _codings(concept)):
            return True
    if _accession(resource.get("identifier")):
        return True
    for coding in _codings(resource.get("code")):
        system = coding.system.lower()
        if "radlex" in system or "dicom.nema.org" in system:
            return True
        if coding.system == LOINC and (coding.display or "").upper().startswith(_IMAGING_PREFIXES):
            return True
    return False


def parse_fhir_datetime(value: Any) -> datetime | None:
    """A FHIR date, dateTime or instant as an aware UTC datetime (see the module docstring)."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    try:
        if len(text) == 4:
            return datetime(int(text), 1, 1, tzinfo=UTC)
        if len(text) == 7:
            return datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=UTC)
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


# -- the extraction ---------------------------------------------------------------------------------


@dataclass
class _Parts:
    """The growing pieces of one patient's record."""

    patient: Patient
    labs: list[LabResult] = field(default_factory=list)
    conditions: list[Condition] = field(default_factory=list)
    medications: list[Medication] = field(default_factory=list)
    procedures: list[Procedure] = field(default_factory=list)
    orders: list[ImagingOrder] = field(default_factory=list)
    reports: list[DiagnosticReport] = field(default_factory=list)
    encounters: list[Encounter] = field(default_factory=list)
    devices: dict[str, DeviceRecord] = field(default_factory=dict)
    imaging_studies: list[ImagingStudyRecord] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def build(self) -> PatientRecord:
        """The record, each part in natural order of resource id.

        The order does not depend on the order the resources arrived in, so a
        Bundle file and a server search of the same patient give equal records.
        """
        return PatientRecord(
            patient=self.patient,
            labs=_by_id(self.labs),
            conditions=_by_id(self.conditions),
            medications=_by_id(self.medications),
            procedures=_by_id(self.procedures),
            orders=_by_id(self.orders),
            reports=_by_id(self.reports),
            encounters=_by_id(self.encounters),
            devices=_by_id(self.devices.values()),
            imaging_studies=_by_id(self.imaging_studies),
            problems=tuple(sorted(self.problems, key=_natural_key)),
        )


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


_T = TypeVar("_T", bound=_HasId)


def _by_id(items: Iterable[_T]) -> tuple[_T, ...]:
    return tuple(sorted(items, key=lambda item: _natural_key(item.id)))


def _natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """``obs-2`` before ``obs-10``: digit runs compare as numbers."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text) if part)


Key = tuple[str, str]  # (resourceType, id)


class _Extraction:
    def __init__(self, pairs: Sequence[tuple[str | None, JSON]], strictness: Strictness, source: str) -> None:
        self.strictness = strictness
        self.source = source
        self.resources: dict[Key, JSON] = {}
        self.by_url: dict[str, Key] = {}
        for full_url, resource in pairs:
            rtype = resource.get("resourceType")
            if not isinstance(rtype, str):
                logger.debug("%s: skipping a resource without resourceType", source)
                continue
            rid = resource.get("id") if isinstance(resource.get("id"), str) else None
            if rid is None and full_url:
                rid = full_url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
            if rid is None:
                rid = f"#{len(self.resources)}"  # unidentified: keep it apart from everything else
            key = (rtype, rid)
            if key in self.resources:
                continue  # the same resource twice (a searchset with _include): keep the first
            self.resources[key] = resource
            if full_url:
                self.by_url[full_url] = key
        self.parts: dict[str, _Parts] = {}

    # references

    def resolve(self, reference: Any) -> Key | None:
        """``Patient/1``, ``http://x/fhir/Patient/1/_history/2`` or ``urn:uuid:...`` -> key."""
        ref = reference.get("reference") if isinstance(reference, Mapping) else reference
        if not isinstance(ref, str) or not ref or ref.startswith("#"):
            return None
        if ref in self.by_url:
            return self.by_url[ref]
        if ref.startswith("urn:"):
            return None
        parts = ref.split("/_history/")[0].rstrip("/").split("/")
        if len(parts) >= 2:
            return (parts[-2], parts[-1])
        return None

    def ref_id(self, reference: Any, rtype: str | None = None) -> str | None:
        """The id a reference points to (of type ``rtype`` if given), resolved where possible."""
        key = self.resolve(reference)
        if key is not None:
            return key[1] if rtype is None or key[0] == rtype else None
        ref = reference.get("reference") if isinstance(reference, Mapping) else reference
        if isinstance(ref, str) and ref.startswith("urn:uuid:") and rtype is None:
            return ref.removeprefix("urn:uuid:")
        return None

    def ref_string(self, reference: Any) -> str | None:
        key = self.resolve(reference)
        if key is not None:
            return f"{key[0]}/{key[1]}"
        ref = reference.get("reference") if isinstance(reference, Mapping) else None
        return ref if isinstance(ref, str) and ref else None

    # problems

    def problem(self, error: FhirResourceInvalid, patient_ids: Iterable[str], summary: str) -> None:
        self.strictness.handle(error, logger, f"a {error.resource_type} {summary}")
        where = f"{error.resource_type}/{error.resource_id}" if error.resource_id else error.resource_type
        for pid in patient_ids:
            if pid in self.parts:
                self.parts[pid].problems.append(f"{where}: {error.reason}")

    # the run

    def run(self) -> dict[str, PatientRecord]:
        valid: dict[Key, JSON] = {}
        invalid: dict[Key, FhirResourceInvalid] = {}
        for key, resource in self.resources.items():
            if key[0] not in _MAPPED:
                continue
            try:
                validate_resource(resource)
            except FhirResourceInvalid as exc:
                if self.strictness is Strictness.RAISE:
                    raise
                invalid[key] = FhirResourceInvalid(key[0], key[1], exc.reason)
            else:
                valid[key] = resource

        for key, resource in self.resources.items():
            if key[0] != "Patient":
                continue
            if key in valid:
                self.parts[key[1]] = _Parts(self.patient(key[1], resource))
            else:  # kept so its other resources are not lost; demographics are not trusted
                self.parts[key[1]] = _Parts(Patient(id=key[1]))
        if not self.parts:
            raise FhirBundleInvalid(
                f"{self.source}: holds no Patient resource; include the Patient the resources "
                "belong to (e.g. Patient/$everything, or _include=*:patient in a search)"
            )
        for key, error in invalid.items():
            owner = self.owner(key, self.resources[key])
            self.problem(
                error,
                [owner] if owner else list(self.parts),
                "that does not validate; see PatientRecord.problems",
            )

        device_owner: dict[str, set[str]] = {}
        for key, resource in valid.items():
            if key[0] in {"Patient", "Device", "Endpoint", "Medication"}:
                continue
            owner = self.owner(key, resource)
            if owner is None:
                self.problem(
                    FhirResourceInvalid(key[0], key[1], "its subject is not a Patient in this input"),
                    [],
                    "whose subject is not a Patient in this input",
                )
                continue
            try:
                self.add(self.parts[owner], key, resource)
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                error = FhirResourceInvalid(key[0], key[1], f"cannot be read ({type(exc).__name__})")
                self.problem(error, [owner], "that cannot be read; see PatientRecord.problems")
                continue
            if key[0] == "ImagingStudy":
                for device_id in self.parts[owner].imaging_studies[-1].device_ids:
                    device_owner.setdefault(device_id, set()).add(owner)

        for key, resource in valid.items():
            if key[0] != "Device":
                continue
            subject = self.resolve(resource.get("patient"))
            owners = (
                {subject[1]}
                if subject is not None and subject[1] in self.parts
                else device_owner.get(key[1]) or (set(self.parts) if len(self.parts) == 1 else set())
            )
            for pid in owners:
                self.parts[pid].devices[key[1]] = self.device(key[1], resource)

        return {pid: parts.build() for pid, parts in self.parts.items()}

    def owner(self, key: Key, resource: JSON) -> str | None:
        """The Patient id a resource belongs to, or None."""
        if key[0] == "Patient":
            return key[1]
        fieldname = _SUBJECT_FIELD.get(key[0], "subject")
        subject = resource.get(fieldname) if fieldname else None
        if subject is None:
            return next(iter(self.parts)) if len(self.parts) == 1 else None
        target = self.resolve(subject)
        if target is not None and target[0] == "Patient" and target[1] in self.parts:
            return target[1]
        identifier = subject.get("identifier") if isinstance(subject, Mapping) else None
        if isinstance(identifier, Mapping) and target is None:  # a logical reference
            for pid, parts in self.parts.items():
                if any(
                    i.value == identifier.get("value") and i.system == identifier.get("system")
                    for i in parts.patient.identifiers
                ):
                    return pid
        return None

    def add(self, parts: _Parts, key: Key, r: JSON) -> None:
        rtype, rid = key
        if rtype == "Observation":
            lab = self.lab(rid, r)
            if lab is not None:
                parts.labs.append(lab)
        elif rtype == "Condition":
            parts.conditions.append(self.condition(rid, r))
        elif rtype in {"MedicationRequest", "MedicationStatement"}:
            parts.medications.append(self.medication(rtype, rid, r))
        elif rtype == "Procedure":
            parts.procedures.append(self.procedure(rid, r))
        elif rtype == "ServiceRequest":
            if is_imaging_order(r):
                parts.orders.append(self.order(rid, r))
        elif rtype == "DiagnosticReport":
            parts.reports.append(self.report(rid, r))
        elif rtype == "Encounter":
            parts.encounters.append(self.encounter(rid, r))
        elif rtype == "ImagingStudy":
            parts.imaging_studies.append(self.imaging_study(rid, r))

    # -- one resource each -----------------------------------------------------------------------

    def patient(self, rid: str, r: JSON) -> Patient:
        names = [n for n in _list(r.get("name")) if isinstance(n, Mapping)]
        name = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
        identifiers = tuple(
            PatientIdentifier(
                system=i.get("system"),
                value=str(i["value"]),
                type_code=next((c.code for c in _codings(i.get("type"))), None),
            )
            for i in _list(r.get("identifier"))
            if isinstance(i, Mapping) and i.get("value")
        )
        birth = parse_fhir_datetime(r.get("birthDate"))
        return Patient(
            id=rid,
            identifiers=identifiers,
            family=name.get("family") or None,
            given=tuple(str(g) for g in _list(name.get("given"))),
            gender=r.get("gender"),
            birth_date=date(birth.year, birth.month, birth.day) if birth else None,
            deceased=parse_fhir_datetime(r.get("deceasedDateTime")),
            managing_organization=self.ref_string(r.get("managingOrganization")),
        )

    def lab(self, rid: str, r: JSON) -> LabResult | None:
        quantity = r.get("valueQuantity")
        if not isinstance(quantity, Mapping):
            return None
        codings = _codings(r.get("code"))
        code = next((c for c in codings if c.system == LOINC), codings[0] if codings else None)
        if code is None:
            code = Coding(system="", code="", display=(r.get("code") or {}).get("text"))
        ranges = [x for x in _list(r.get("referenceRange")) if isinstance(x, Mapping)]
        reference = None
        if ranges:
            reference = ReferenceRange(
                low=_number((ranges[0].get("low") or {}).get("value")),
                high=_number((ranges[0].get("high") or {}).get("value")),
                text=ranges[0].get("text"),
            )
        interpretation = next(
            (c.code for concept in _list(r.get("interpretation")) for c in _codings(concept)), None
        )
        category = next((c.code for concept in _list(r.get("category")) for c in _codings(concept)), None)
        return LabResult(
            id=rid,
            code=code,
            value=_number(quantity.get("value")),
            unit=quantity.get("code") or quantity.get("unit"),
            reference_range=reference,
            interpretation=interpretation,
            effective=_effective(r) or parse_fhir_datetime(r.get("issued")),
            category=category,
            status=r.get("status"),
            value_text=f"{quantity['comparator']}{quantity.get('value')}"
            if quantity.get("comparator")
            else None,
        )

    def condition(self, rid: str, r: JSON) -> Condition:
        return Condition(
            id=rid,
            codes=_codings(r.get("code")),
            clinical_status=_first_code(r.get("clinicalStatus")),
            verification_status=_first_code(r.get("verificationStatus")),
            onset=parse_fhir_datetime(r.get("onsetDateTime")) or _period_start(r.get("onsetPeriod")),
            abatement=parse_fhir_datetime(r.get("abatementDateTime"))
            or _period_start(r.get("abatementPeriod")),
            recorded=parse_fhir_datetime(r.get("recordedDate")),
            body_site=tuple(c for concept in _list(r.get("bodySite")) for c in _codings(concept)),
            text=(r.get("code") or {}).get("text"),
        )

    def medication(self, rtype: str, rid: str, r: JSON) -> Medication:
        concept = r.get("medicationCodeableConcept")
        if concept is None and r.get("medicationReference") is not None:
            target = self.resolve(r.get("medicationReference"))
            concept = (self.resources.get(target) or {}).get("code") if target else None
        if rtype == "MedicationRequest":
            validity = (r.get("dispenseRequest") or {}).get("validityPeriod")
            start = parse_fhir_datetime(r.get("authoredOn"))
            end = parse_fhir_datetime((validity or {}).get("end"))
        else:
            period = r.get("effectivePeriod") or {}
            start = (
                parse_fhir_datetime(r.get("effectiveDateTime"))
                or parse_fhir_datetime(period.get("start"))
                or parse_fhir_datetime(r.get("dateAsserted"))
            )
            end = parse_fhir_datetime(period.get("end"))
        return Medication(
            id=rid,
            kind=rtype,
            codes=_codings(concept),
            status=r.get("status"),
            start=start,
            end=end,
            text=(concept or {}).get("text") if isinstance(concept, Mapping) else None,
        )

    def procedure(self, rid: str, r: JSON) -> Procedure:
        return Procedure(
            id=rid,
            codes=_codings(r.get("code")),
            status=r.get("status"),
            performed=parse_fhir_datetime(r.get("performedDateTime"))
            or _period_start(r.get("performedPeriod")),
            text=(r.get("code") or {}).get("text"),
        )

    def order(self, rid: str, r: JSON) -> ImagingOrder:
        return ImagingOrder(
            id=rid,
            codes=_codings(r.get("code")),
            status=r.get("status"),
            intent=r.get("intent"),
            authored=parse_fhir_datetime(r.get("authoredOn")),
            occurrence=parse_fhir_datetime(r.get("occurrenceDateTime"))
            or _period_start(r.get("occurrencePeriod")),
            accession_number=_accession(r.get("identifier")),
            reason_codes=tuple(c for concept in _list(r.get("reasonCode")) for c in _codings(concept)),
            reason_references=tuple(
                s for s in (self.ref_string(x) for x in _list(r.get("reasonReference"))) if s
            ),
            body_site=tuple(c for concept in _list(r.get("bodySite")) for c in _codings(concept)),
            text=(r.get("code") or {}).get("text"),
        )

    def report(self, rid: str, r: JSON) -> DiagnosticReport:
        return DiagnosticReport(
            id=rid,
            codes=_codings(r.get("code")),
            status=r.get("status"),
            category=tuple(c.code for concept in _list(r.get("category")) for c in _codings(concept)),
            effective=_effective(r),
            issued=parse_fhir_datetime(r.get("issued")),
            conclusion=r.get("conclusion"),
            conclusion_codes=tuple(
                c for concept in _list(r.get("conclusionCode")) for c in _codings(concept)
            ),
            imaging_study_ids=_ids(self.ref_id(x) for x in _list(r.get("imagingStudy"))),
            based_on=_ids(self.ref_id(x) for x in _list(r.get("basedOn"))),
        )

    def encounter(self, rid: str, r: JSON) -> Encounter:
        klass = r.get("class")
        period = r.get("period") or {}
        return Encounter(
            id=rid,
            status=r.get("status"),
            class_code=klass.get("code") if isinstance(klass, Mapping) else None,
            start=parse_fhir_datetime(period.get("start")),
            end=parse_fhir_datetime(period.get("end")),
            types=tuple(c for concept in _list(r.get("type")) for c in _codings(concept)),
        )

    def device(self, rid: str, r: JSON) -> DeviceRecord:
        names = [n for n in _list(r.get("deviceName")) if isinstance(n, Mapping) and n.get("name")]
        model_name = next((n["name"] for n in names if n.get("type") == "model-name"), None)
        return DeviceRecord(
            id=rid,
            manufacturer=r.get("manufacturer"),
            model=r.get("modelNumber") or model_name or (names[0]["name"] if names else None),
            serial_number=r.get("serialNumber"),
            types=_codings(r.get("type")),
            identifiers=tuple(
                str(i["value"])
                for i in _list(r.get("identifier"))
                if isinstance(i, Mapping) and i.get("value")
            ),
        )

    def imaging_study(self, rid: str, r: JSON) -> ImagingStudyRecord:
        identifiers = [i for i in _list(r.get("identifier")) if isinstance(i, Mapping)]
        uid = next(
            (
                str(i["value"]).removeprefix("urn:oid:")
                for i in identifiers
                if i.get("system") == DICOM_UID_SYSTEM and i.get("value")
            ),
            None,
        )
        series = [s for s in _list(r.get("series")) if isinstance(s, Mapping)]
        modalities: dict[str, None] = {}
        for coding in _list(r.get("modality")) + [s.get("modality") for s in series]:
            if isinstance(coding, Mapping) and coding.get("code"):
                modalities.setdefault(str(coding["code"]), None)
        devices: dict[str, None] = {}
        for s in series:
            for performer in _list(s.get("performer")):
                device_id = self.ref_id((performer or {}).get("actor"), "Device")
                if device_id:
                    devices.setdefault(device_id, None)
        endpoints = _list(r.get("endpoint")) + [e for s in series for e in _list(s.get("endpoint"))]
        return ImagingStudyRecord(
            id=rid,
            study_instance_uid=uid,
            status=r.get("status"),
            started=parse_fhir_datetime(r.get("started")),
            accession_number=_accession(identifiers),
            modalities=tuple(modalities),
            based_on=_ids(self.ref_id(x) for x in _list(r.get("basedOn"))),
            series_uids=tuple(str(s["uid"]) for s in series if s.get("uid")),
            device_ids=tuple(devices),
            endpoint=next((a for a in (self.endpoint(r, e) for e in endpoints) if a), None),
            description=r.get("description"),
        )

    def endpoint(self, owner: JSON, reference: Any) -> str | None:
        ref = reference.get("reference") if isinstance(reference, Mapping) else None
        if isinstance(ref, str) and ref.startswith("#"):
            found = next(
                (
                    c
                    for c in _list(owner.get("contained"))
                    if isinstance(c, Mapping) and c.get("id") == ref[1:]
                ),
                None,
            )
        else:
            key = self.resolve(reference)
            found = self.resources.get(key) if key and key[0] == "Endpoint" else None
        address = (found or {}).get("address")
        return str(address) if address else None


# -- small helpers -------------------------------------------------------------------------------


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _codings(concept: Any) -> tuple[Coding, ...]:
    if not isinstance(concept, Mapping):
        return ()
    return tuple(
        Coding(system=str(c.get("system") or ""), code=str(c["code"]), display=c.get("display"))
        for c in _list(concept.get("coding"))
        if isinstance(c, Mapping) and c.get("code") is not None
    )


def _first_code(concept: Any) -> str | None:
    codings = _codings(concept)
    return codings[0].code if codings else None


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _period_start(period: Any) -> datetime | None:
    return parse_fhir_datetime(period.get("start")) if isinstance(period, Mapping) else None


def _effective(r: JSON) -> datetime | None:
    return (
        parse_fhir_datetime(r.get("effectiveDateTime"))
        or _period_start(r.get("effectivePeriod"))
        or parse_fhir_datetime(r.get("effectiveInstant"))
    )


def _accession(identifiers: Any) -> str | None:
    """The value of the identifier whose type is v2-0203 ACSN (any system of that code)."""
    for ident in _list(identifiers):
        if not isinstance(ident, Mapping) or not ident.get("value"):
            continue
        if any(c.code == "ACSN" for c in _codings(ident.get("type"))):
            return str(ident["value"])
    return None


def _ids(values: Iterable[str | None]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for v in values if v))


def merge_records(first: PatientRecord, second: PatientRecord) -> PatientRecord:
    """One patient's record from two inputs: ``first``'s Patient, both sets of resources."""
    return replace(
        first,
        labs=first.labs + second.labs,
        conditions=first.conditions + second.conditions,
        medications=first.medications + second.medications,
        procedures=first.procedures + second.procedures,
        orders=first.orders + second.orders,
        reports=first.reports + second.reports,
        encounters=first.encounters + second.encounters,
        devices=first.devices + tuple(d for d in second.devices if d not in first.devices),
        imaging_studies=first.imaging_studies + second.imaging_studies,
        problems=first.problems + second.problems,
    )
