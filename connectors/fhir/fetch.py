"""One patient's record from a FHIR server: the searches a case needs, side by side.

`fetch_record` reads the Patient and runs one search per resource type the
record needs (Observation for laboratory and vital signs, Condition,
MedicationRequest, MedicationStatement, Procedure, ServiceRequest,
DiagnosticReport, ImagingStudy with its Endpoints, Encounter, Device)
concurrently, bounded by the client's ``max_concurrency``. Resource types the
server's CapabilityStatement does not list are not asked for. Devices and
Endpoints that ImagingStudies reference but the server did not ``_include`` are
fetched in one more search each (``_id=a,b,c``). The HTTP requests per case are
therefore a constant plus paging: they do not grow with the number of resources
beyond ``ceil(n / _count)``.

The resources then go through the same extraction as a Bundle file
(`records_from_resources`), so a server and a file of the same patient give
equal `PatientRecord`s; resources that do not validate end up in
``PatientRecord.problems`` (or raise, under ``Strictness.RAISE``).

`record_versions` runs the same searches asking only for each resource's ``meta``
(``_elements=meta``): what changes when the record changes, at a fraction of the
record's size. `imaging_study_subjects` and `patients_with_identifier` find whose
record a study belongs to: the subject of the ImagingStudy that carries its
StudyInstanceUID, or the Patient that carries the PACS's PatientID.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from connectors.domain import PatientRecord
from connectors.errors import RemoteNotFound
from connectors.fhir.extract import records_from_resources
from connectors.fhir.rest import FhirClient
from connectors.strictness import Strictness

__all__ = [
    "PATIENT_SEARCHES",
    "FetchedRecord",
    "fetch_record",
    "fetch_referenced",
    "imaging_study_subjects",
    "patient_searches",
    "patients_with_identifier",
    "record_versions",
    "supported_types",
]

logger = logging.getLogger(__name__)

JSON = dict[str, Any]

#: (resource type, search parameters other than the patient) for one case's record.
PATIENT_SEARCHES: tuple[tuple[str, Mapping[str, str | tuple[str, ...]]], ...] = (
    ("Observation", {"category": "laboratory,vital-signs"}),
    ("Condition", {}),
    ("MedicationRequest", {}),
    ("MedicationStatement", {}),
    ("Procedure", {}),
    ("ServiceRequest", {}),
    ("DiagnosticReport", {}),
    ("ImagingStudy", {"_include": ("ImagingStudy:endpoint",)}),
    ("Encounter", {}),
    ("Device", {}),
)


@dataclass(frozen=True)
class FetchedRecord:
    """A record fetched from a server, with what it cost."""

    record: PatientRecord
    resources: int
    requests: int


def supported_types(capabilities: Mapping[str, Any]) -> frozenset[str] | None:
    """Resource types a CapabilityStatement's server REST block supports (None: it does not say)."""
    types: set[str] = set()
    for rest in capabilities.get("rest") or ():
        if isinstance(rest, Mapping) and rest.get("mode", "server") == "server":
            for resource in rest.get("resource") or ():
                if isinstance(resource, Mapping) and isinstance(resource.get("type"), str):
                    types.add(resource["type"])
    return frozenset(types) or None


def patient_searches(
    patient_id: str, supported: Iterable[str] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """The searches for ``patient_id``, minus the resource types the server does not support."""
    allowed = None if supported is None else set(supported)
    return [
        (rtype, {"patient": patient_id, **params})
        for rtype, params in PATIENT_SEARCHES
        if allowed is None or rtype in allowed
    ]


async def fetch_record(
    client: FhirClient,
    patient_id: str,
    *,
    strictness: Strictness | str = Strictness.WARN,
    capabilities: Mapping[str, Any] | None = None,
) -> FetchedRecord:
    """The `PatientRecord` of ``patient_id`` on ``client``'s server.

    `RemoteNotFound` when the Patient does not exist. Pass ``capabilities`` (from
    `FhirClient.capabilities`) to skip resource types the server does not support.
    """
    start = client.requests
    supported = supported_types(capabilities) if capabilities is not None else None
    searches = patient_searches(patient_id, supported)
    try:
        patient, found = await asyncio.gather(
            client.read("Patient", patient_id),
            asyncio.gather(*(client.search_all(rtype, params) for rtype, params in searches)),
        )
    except RemoteNotFound as exc:
        if exc.url and exc.url.rstrip("/").endswith(f"/Patient/{patient_id}"):
            raise RemoteNotFound(
                f"no Patient/{patient_id} on {client.safe_url}",
                url=exc.url,
                status=exc.status,
                issues=exc.issues,
            ) from None
        raise
    resources: dict[tuple[str, str], JSON] = {}
    for resource in [patient, *(r for batch in found for r in batch)]:
        _keep(resources, resource)
    await fetch_referenced(client, resources, supported)
    records = records_from_resources(
        list(resources.values()), strictness=strictness, source=f"FHIR server {client.safe_url}"
    )
    record = records.get(patient_id)
    if record is None:  # the server answered with another Patient id than asked for
        raise RemoteNotFound(f"the server returned no Patient/{patient_id}", url=f"{client.safe_url}/Patient")
    logger.debug(
        "fetched Patient/%s: %d resources in %d requests", patient_id, len(resources), client.requests - start
    )
    return FetchedRecord(record=record, resources=len(resources), requests=client.requests - start)


async def record_versions(
    client: FhirClient, patient_id: str, *, capabilities: Mapping[str, Any] | None = None
) -> tuple[str, ...]:
    """``[type]/[id]/_history/[versionId]@[lastUpdated]`` of the Patient and of every resource the
    searches of `fetch_record` find, sorted: it changes when a resource of the record is added,
    removed or updated (on a server that keeps ``meta.versionId`` or ``meta.lastUpdated``).

    Each search asks for ``_elements=meta``; a server that ignores it sends whole resources,
    which gives the same answer.
    """
    supported = supported_types(capabilities) if capabilities is not None else None
    searches = [("Patient", {"_id": patient_id}), *patient_searches(patient_id, supported)]
    found = await asyncio.gather(
        *(client.search_all(rtype, {**params, "_elements": "meta"}) for rtype, params in searches)
    )
    versions = set()
    for resource in (r for batch in found for r in batch):
        rtype, rid = resource.get("resourceType"), resource.get("id")
        if isinstance(rtype, str) and isinstance(rid, str):
            meta = resource.get("meta")
            meta = meta if isinstance(meta, Mapping) else {}
            versions.add(
                f"{rtype}/{rid}/_history/{meta.get('versionId') or ''}@{meta.get('lastUpdated') or ''}"
            )
    return tuple(sorted(versions))


async def imaging_study_subjects(client: FhirClient, study_instance_uid: str) -> set[str]:
    """The Patient ids whose ImagingStudy carries ``study_instance_uid`` (identifier
    ``urn:dicom:uid|urn:oid:<UID>``); usually one, none when the EHR has no ImagingStudy for it."""
    found = await client.search_all(
        "ImagingStudy", {"identifier": f"urn:dicom:uid|urn:oid:{study_instance_uid}", "_elements": "subject"}
    )
    return {
        str((r.get("subject") or {}).get("reference", "")).removeprefix("Patient/")
        for r in found
        if r.get("resourceType") == "ImagingStudy"
        and str((r.get("subject") or {}).get("reference", "")).startswith("Patient/")
    }


async def patients_with_identifier(client: FhirClient, value: str) -> set[str]:
    """The ids of the Patients with an identifier of this value, in any system (a DICOM PatientID
    names no system); the value is escaped as FHIR token search needs (``\\``, ``|``, ``,``, ``$``)."""
    escaped = "".join("\\" + c if c in "\\|,$" else c for c in value)
    found = await client.search_all("Patient", {"identifier": escaped, "_elements": "id"})
    return {
        str(r["id"]) for r in found if r.get("resourceType") == "Patient" and isinstance(r.get("id"), str)
    }


async def fetch_referenced(
    client: FhirClient, resources: dict[tuple[str, str], JSON], supported: frozenset[str] | None = None
) -> None:
    """Add to ``resources`` (keyed by type and id) the Devices and Endpoints its ImagingStudies
    reference but it lacks: one ``_id`` search per 50 of each type."""
    await _fetch_referenced(client, resources, "Device", _device_refs(resources.values()), supported)
    await _fetch_referenced(client, resources, "Endpoint", _endpoint_refs(resources.values()), supported)


def _keep(resources: dict[tuple[str, str], JSON], resource: JSON) -> None:
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if isinstance(rtype, str) and isinstance(rid, str):
        resources.setdefault((rtype, rid), resource)
    else:
        logger.debug("server returned a %s without id; ignored", rtype)


async def _fetch_referenced(
    client: FhirClient,
    resources: dict[tuple[str, str], JSON],
    rtype: str,
    wanted: set[str],
    supported: frozenset[str] | None,
) -> None:
    missing = sorted(rid for rid in wanted if (rtype, rid) not in resources)
    if not missing or (supported is not None and rtype not in supported):
        return
    for chunk in (missing[i : i + 50] for i in range(0, len(missing), 50)):
        for resource in await client.search_all(rtype, {"_id": ",".join(chunk)}):
            _keep(resources, resource)


def _device_refs(resources: Iterable[JSON]) -> set[str]:
    ids: set[str] = set()
    for r in resources:
        if r.get("resourceType") != "ImagingStudy":
            continue
        for series in r.get("series") or ():
            for performer in (series or {}).get("performer") or ():
                _add_ref(ids, ((performer or {}).get("actor") or {}).get("reference"), "Device")
    return ids


def _endpoint_refs(resources: Iterable[JSON]) -> set[str]:
    ids: set[str] = set()
    for r in resources:
        if r.get("resourceType") != "ImagingStudy":
            continue
        refs = list(r.get("endpoint") or ()) + [
            e for s in r.get("series") or () for e in (s or {}).get("endpoint") or ()
        ]
        for ref in refs:
            _add_ref(ids, (ref or {}).get("reference"), "Endpoint")
    return ids


def _add_ref(ids: set[str], reference: Any, rtype: str) -> None:
    if isinstance(reference, str) and reference.startswith(f"{rtype}/"):
        rid = reference.split("/", 2)[1]
        if rid:
            ids.add(rid)
