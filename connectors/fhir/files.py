"""FHIR from files: JSON Bundles and NDJSON bulk-export files or folders.

- `read_bundle` reads one Bundle JSON file, or every ``*.json`` Bundle in a folder
  (e.g. one Bundle per patient);
- `read_ndjson` reads one ``.ndjson`` file (one resource per line), or every
  ``*.ndjson`` / ``*.ndjson.gz`` file in a folder (a bulk ``$export``:
  ``Patient.ndjson``, ``Observation.ndjson`` ..., many patients).

Both return one `PatientRecord` per Patient, sorted by Patient id; a Patient
found in several files gets one record with all its resources. Invalid
resources are handled under ``strictness`` (see `connectors.fhir.extract`).
A file that is not JSON, not a Bundle, or holds no Patient raises
`FhirBundleInvalid` naming the file; a folder without such files raises
`NoInputFound`.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from connectors.domain.record import PatientRecord
from connectors.errors import FhirBundleInvalid, NoInputFound
from connectors.fhir.extract import merge_records, records_from_bundle, records_from_resources
from connectors.strictness import Strictness

__all__ = ["read_bundle", "read_ndjson"]

logger = logging.getLogger(__name__)


def read_bundle(
    path: str | os.PathLike[str], *, strictness: Strictness | str = Strictness.WARN
) -> list[PatientRecord]:
    """Read a Bundle JSON file, or every ``*.json`` file in a folder, into patient records."""
    mode = Strictness.of(strictness)
    files = _files(Path(path), (".json",), "FHIR Bundle JSON (*.json)")
    merged: dict[str, PatientRecord] = {}
    for file in files:
        bundle = _load_json(file)
        _merge_into(merged, records_from_bundle(bundle, strictness=mode, source=str(file)))
    return [merged[k] for k in sorted(merged)]


def read_ndjson(
    path: str | os.PathLike[str], *, strictness: Strictness | str = Strictness.WARN
) -> list[PatientRecord]:
    """Read an NDJSON file, or every ``*.ndjson[.gz]`` file in a folder, into patient records.

    A line that is not a JSON object is a problem handled under ``strictness``
    (under ``raise``, `FhirBundleInvalid` naming the file and line).
    """
    mode = Strictness.of(strictness)
    root = Path(path)
    files = _files(root, (".ndjson", ".ndjson.gz"), "NDJSON (*.ndjson)")
    resources: list[dict[str, Any]] = []
    for file in files:
        resources.extend(_ndjson_lines(file, mode))
    if not resources:
        raise FhirBundleInvalid(f"{root}: holds no FHIR resources (every line was empty or skipped)")
    records = records_from_resources(resources, strictness=mode, source=str(root))
    return [records[k] for k in sorted(records)]


def _files(path: Path, suffixes: tuple[str, ...], what: str) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.exists():
        raise NoInputFound(f"{path}: no such file or folder")
    files = sorted(
        p for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes) and not p.name.startswith(".")
    )
    if not files:
        raise NoInputFound(f"{path}: no {what} files in this folder")
    return files


def _open_text(file: Path) -> str:
    try:
        raw = file.read_bytes()
        if file.name.endswith(".gz"):
            raw = gzip.decompress(raw)
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FhirBundleInvalid(f"{file}: is not UTF-8 text, so not FHIR JSON") from exc
    except (OSError, EOFError) as exc:
        raise FhirBundleInvalid(f"{file}: cannot be read: {exc}") from exc


def _load_json(file: Path) -> Any:
    text = _open_text(file)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        hint = (
            "it looks like NDJSON (one resource per line): use read_ndjson"
            if exc.msg == "Extra data"
            else "export the record as a FHIR Bundle in JSON"
        )
        raise FhirBundleInvalid(
            f"{file}: is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); {hint}"
        ) from exc


def _ndjson_lines(file: Path, mode: Strictness) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(_open_text(file).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            error = FhirBundleInvalid(f"{file}:{number}: is not a JSON object ({exc.msg}); line skipped")
            mode.handle(error, logger, "an NDJSON line that is not JSON")
            continue
        if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
            error = FhirBundleInvalid(f"{file}:{number}: is not a FHIR resource (no resourceType)")
            mode.handle(error, logger, "an NDJSON line that is not a FHIR resource")
            continue
        yield value


def _merge_into(merged: dict[str, PatientRecord], new: dict[str, PatientRecord]) -> None:
    for pid, record in new.items():
        merged[pid] = merge_records(merged[pid], record) if pid in merged else record
