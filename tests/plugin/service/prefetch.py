"""What a CDS client would prefetch for the services' templates, built from a cohort Bundle
(a plain module: the service tests and bench/bench_cds.py use it)."""

from __future__ import annotations

from typing import Any

_SEARCH_KEYS: dict[str, tuple[str, str | None]] = {
    "imagingStudies": ("ImagingStudy", None),
    "diagnosticReports": ("DiagnosticReport", None),
    "serviceRequests": ("ServiceRequest", None),
    "laboratory": ("Observation", "laboratory"),
    "vitalSigns": ("Observation", "vital-signs"),
    "conditions": ("Condition", None),
    "medicationRequests": ("MedicationRequest", None),
    "procedures": ("Procedure", None),
    "encounters": ("Encounter", None),
}


def prefetch_from_bundle(bundle: dict[str, Any]) -> dict[str, Any]:
    """What a CDS client would prefetch for the services' templates, from a patient's Bundle."""
    resources = [e["resource"] for e in bundle["entry"]]
    out: dict[str, Any] = {"patient": next(r for r in resources if r["resourceType"] == "Patient")}
    for key, (rtype, category) in _SEARCH_KEYS.items():
        matches = [
            r
            for r in resources
            if r["resourceType"] == rtype
            and (
                category is None
                or any(
                    c.get("code") == category for cc in r.get("category", []) for c in cc.get("coding", [])
                )
            )
        ]
        out[key] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(matches),
            "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in matches],
        }
    return out
