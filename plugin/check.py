"""``crosscheck check``: score each DICOM study in a path against a FHIR record."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from connectors import Strictness, link_cases, read_bundle, read_dicom, read_ndjson
from connectors.domain import Case, PatientRecord, SiteProfile, Study
from connectors.errors import NoInputFound
from connectors.remote import ImagingSource, RemoteCases, fetch_cases
from fusion.checks.duplicates import PerceptualHashIndex
from fusion.result import CrossCheckResult
from fusion.scorer import Scorer
from plugin.errors import UsageError
from plugin.servers import ServerSettings

__all__ = ["build_hash_index", "format_text", "load_records", "load_site", "run_check", "run_check_remote"]

logger = logging.getLogger(__name__)


def load_records(path: Path, strictness: Strictness | str = Strictness.RAISE) -> list[PatientRecord]:
    """A Bundle file, an NDJSON file, or a folder of NDJSON bulk-export files (or of Bundles)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.suffix in {".ndjson", ".gz"} or (path.is_dir() and any(path.glob("*.ndjson*"))):
        return read_ndjson(path, strictness=strictness)
    return read_bundle(path, strictness=strictness)


def load_site(path: Path) -> SiteProfile:
    try:
        return SiteProfile.from_json(json.loads(path.read_text("utf-8")))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise NoInputFound(f"{path}: not a usable site profile JSON ({exc})") from exc


def build_hash_index(studies: Sequence[Study], owners: dict[str, str | None]) -> PerceptualHashIndex:
    """Index every study under the patient it is filed under (its record id, else PatientID)."""
    index = PerceptualHashIndex()
    for study in studies:
        owner = owners.get(study.study_instance_uid) or study.patient.patient_id or "unknown"
        index.add(study, owner)
    return index


def format_text(result: CrossCheckResult) -> str:
    s = result.scores
    status = "FLAGGED" if result.flagged else "ok"

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lines = [
        f"study {result.case.study_instance_uid}  patient {result.case.patient_id or '-'}  "
        f"accession {result.case.accession_number or '-'}",
        f"  {status}: overall {pct(s.overall)} (threshold {result.threshold:.3f}); "
        f"consistency {pct(s.consistency)}, synthetic {pct(s.synthetic)}",
    ]
    for f in result.findings:
        lines.append(f"  {f.severity.value.upper():8s} {f.code}: {f.message}")
    if result.flagged:
        from fusion.explain import summary

        lines.append(f"  why: {summary(result)}")
    return "\n".join(lines)


def _write(result: CrossCheckResult, output_format: str, out: TextIO) -> None:
    if output_format == "json":
        out.write(result.dumps() + "\n")
    else:
        out.write(format_text(result) + "\n\n")


def run_check(
    *,
    bundle: Path | None,
    dicom: Path,
    output_format: str = "text",
    site_path: Path | None = None,
    archive: Path | None = None,
    model: Path | None = None,
    device: str | None = None,
    strictness: Strictness | str = Strictness.RAISE,
    out: TextIO | None = None,
    explain: Path | None = None,
) -> int:
    """Score every study under ``dicom``; under ``raise`` strictness the first unusable
    resource or file stops the run with a specific error, under ``warn`` it is skipped
    and logged (and listed in the record's ``problems``)."""
    if not dicom.exists():
        raise FileNotFoundError(f"{dicom}: no such file or folder")
    records = load_records(bundle, strictness) if bundle is not None else []
    studies = read_dicom(dicom, strictness=strictness)
    if not studies:
        raise NoInputFound(f"{dicom}: no DICOM studies found")
    cases: list[Case] = link_cases(studies, records)
    return _score_and_write(
        cases,
        studies,
        site_path=site_path,
        archive=archive,
        model=model,
        device=device,
        strictness=strictness,
        output_format=output_format,
        out=out,
        explain=explain,
    )


def run_check_remote(
    *,
    settings: ServerSettings,
    patient: str | None,
    study: str | None,
    output_format: str = "text",
    site_path: Path | None = None,
    archive: Path | None = None,
    model: Path | None = None,
    device: str | None = None,
    strictness: Strictness | str = Strictness.RAISE,
    keep: Path | None = None,
    out: TextIO | None = None,
    explain: Path | None = None,
) -> int:
    """Score the studies of ``patient`` (FHIR Patient id; DICOM PatientID without --fhir), or ``study``,
    fetched from the FHIR server and the PACS. Images go to a temporary folder (or ``keep``)."""
    if patient is None and study is None:
        raise UsageError("give --patient ID, --study UID, or both")
    imaging = settings.imaging_source()
    if settings.fhir_url is None and imaging is None:
        raise UsageError("no server: give --fhir URL and/or --dicomweb URL or --dimse HOST:PORT:AET")
    with tempfile.TemporaryDirectory(prefix="crosscheck-") as tmp:
        cache = keep or Path(tmp)
        fetched = asyncio.run(_fetch(settings, imaging, cache, patient, study, strictness))
        return _score_and_write(
            fetched.cases,
            fetched.studies,
            site_path=site_path,
            archive=archive,
            model=model,
            device=device,
            strictness=strictness,
            output_format=output_format,
            out=out,
            explain=explain,
        )


async def _fetch(
    settings: ServerSettings,
    imaging: ImagingSource | None,
    cache: Path,
    patient: str | None,
    study: str | None,
    strictness: Strictness | str,
) -> RemoteCases:
    fhir = settings.fhir_client() if settings.fhir_url is not None else None
    try:
        return await fetch_cases(
            fhir=fhir,
            imaging=imaging,
            cache=cache,
            patient_id=patient,
            study_instance_uid=study,
            strictness=strictness,
            endpoint_source=settings.dicomweb_source,
        )
    finally:
        if fhir is not None:
            await fhir.aclose()


def _score_and_write(
    cases: Sequence[Case],
    studies: Sequence[Study],
    *,
    site_path: Path | None,
    archive: Path | None,
    model: Path | None,
    device: str | None,
    strictness: Strictness | str,
    output_format: str,
    out: TextIO | None,
    explain: Path | None = None,
) -> int:
    out = out or sys.stdout
    site = load_site(site_path) if site_path is not None else None
    archive_studies = list(studies)
    if archive is not None:
        known = {s.study_instance_uid for s in archive_studies}
        archive_studies += [
            s for s in read_dicom(archive, strictness=strictness) if s.study_instance_uid not in known
        ]
    owners = {c.study_instance_uid: c.patient_id for c in cases}
    index = build_hash_index(archive_studies, owners)

    from fusion.model.bundle import default_bundle_path, load_bundle

    loaded = load_bundle(model or default_bundle_path(), device=device)
    scorer = Scorer(loaded, site=site, hash_index=index)
    for case in cases:
        ((result, prediction),) = scorer.explain_many([case], batch_size=1)
        _write(result, output_format, out)
        if explain is not None:
            from fusion.explain import summary, write_heatmap_png

            explain.mkdir(parents=True, exist_ok=True)
            uid = case.study_instance_uid  # a UID has dots: name files by appending, not with_suffix
            (explain / f"{uid}.txt").write_text(summary(result) + "\n", "utf-8")
            write_heatmap_png(case, prediction.heatmap, explain / f"{uid}.png", config=loaded.config.features)
    return 0
