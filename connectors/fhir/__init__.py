"""FHIR R4 in: Bundles and NDJSON files -> `PatientRecord` (REST client to come).

`extract` is pure (parsed JSON -> domain objects); `files` reads files.
"""

from connectors.fhir.extract import (
    BUNDLE_TYPES,
    is_imaging_order,
    merge_records,
    parse_fhir_datetime,
    records_from_bundle,
    records_from_resources,
    validate_resource,
)
from connectors.fhir.files import read_bundle, read_ndjson

__all__ = [
    "BUNDLE_TYPES",
    "is_imaging_order",
    "merge_records",
    "parse_fhir_datetime",
    "read_bundle",
    "read_ndjson",
    "records_from_bundle",
    "records_from_resources",
    "validate_resource",
]
