"""Are real scanner images flagged merely for not looking like phantoms?

Usage: ``python bench/bench_real_images.py [--model DIR]``.

Scores the real CT and MR images among pydicom's own test files (each distinct
SOP instance once, plus the re-encoded copies of MR_small to show the score does
not move with the transfer syntax), each paired with a plausible record: a
Patient with the header's id, sex and birth date, and an imaging order for that
modality and body part, no conditions, no labs. Prints, per image, the
synthetic and consistency probabilities and whether the case is flagged, then
the rates. The model alone (``checks=False``) and model + rule checks.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path
from typing import Any

import pydicom

from connectors import link_cases, read_dicom, records_from_bundle
from fusion.model.bundle import default_bundle_path, load_bundle
from fusion.scorer import Scorer

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
ENCODINGS_OF_MR_SMALL = (
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_bigendian.dcm",
)
_ORDER_CODES = {  # LOINC radiology playbook codes
    ("CT", "HEAD"): ("30799-1", "CT Head WO contrast"),
    ("CT", None): ("29252-4", "CT Chest WO contrast"),
    ("MR", "ABDOMEN"): ("30595-3", "MR Abdomen WO contrast"),
    ("MR", None): ("24590-2", "MR Brain WO contrast"),
}


def real_images() -> list[Path]:
    """Distinct real CT / MR instances in pydicom's test data, then MR_small's other encodings."""
    seen: set[str] = set()
    found: list[Path] = []
    for path in sorted(TEST_FILES.glob("*.dcm")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # not all test files are readable DICOM, on purpose
            continue
        if ds.get("Modality") not in ("CT", "MR") or "PixelData" not in pydicom.dcmread(path):
            continue
        if ds.SOPInstanceUID in seen or "truncated" in path.name:
            continue
        seen.add(ds.SOPInstanceUID)
        found.append(path)
    return found + [TEST_FILES / name for name in ENCODINGS_OF_MR_SMALL if (TEST_FILES / name).is_file()]


def plausible_record(ds: pydicom.Dataset, index: int) -> dict[str, Any]:
    """A FHIR collection Bundle: the Patient of the header and an order for this study."""
    pid = f"real-{index}"
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{"system": "urn:oid:1.2.3.4", "value": str(ds.get("PatientID") or pid)}],
    }
    sex = {"M": "male", "F": "female"}.get(str(ds.get("PatientSex") or ""))
    if sex:
        patient["gender"] = sex
    birth = str(ds.get("PatientBirthDate") or "")
    if len(birth) == 8:
        patient["birthDate"] = f"{birth[:4]}-{birth[4:6]}-{birth[6:]}"
    body = str(ds.get("BodyPartExamined") or "").upper() or None
    code, display = _ORDER_CODES.get((ds.Modality, body)) or _ORDER_CODES[(ds.Modality, None)]
    order = {
        "resourceType": "ServiceRequest",
        "id": f"order-{index}",
        "status": "completed",
        "intent": "order",
        "subject": {"reference": f"Patient/{pid}"},
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "363679005"}]}],
    }
    accession = str(ds.get("AccessionNumber") or f"ACC-REAL-{index}")
    order["identifier"] = [
        {
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
            "value": accession,
        }
    ]
    imaging_study = {
        "resourceType": "ImagingStudy",
        "id": f"is-{index}",
        "status": "available",
        "subject": {"reference": f"Patient/{pid}"},
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{ds.StudyInstanceUID}"}],
        "basedOn": [{"reference": f"ServiceRequest/order-{index}"}],
        "modality": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": ds.Modality}],
    }
    entries = [{"resource": patient}, {"resource": order}, {"resource": imaging_study}]
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args(argv)
    loaded = load_bundle(args.model or default_bundle_path(), device="cpu")
    scorers = {"model": Scorer(loaded, checks=False), "model+checks": Scorer(loaded, checks=True)}
    flagged = {name: 0 for name in scorers}
    synthetic_flags = 0
    paths = real_images()
    print(
        f"model {loaded.info.name} {loaded.info.version} (sha256 {loaded.info.sha256[:12]}), "
        f"threshold {loaded.calibration.threshold:.3f}\n"
    )
    print(f"{'file':34s} {'mod':3s} {'size':>9s}  synthetic  consistent  flagged(model)  flagged(+checks)")
    for i, path in enumerate(paths):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        (study,) = read_dicom(path)
        record = records_from_bundle(plausible_record(ds, i), source=path.name)
        (case,) = link_cases([study], record)
        row = {}
        for name, scorer in scorers.items():
            result = scorer.score(case)
            row[name] = result
            flagged[name] += result.flagged
        r = row["model"]
        synthetic_flags += (r.scores.synthetic or 0) >= loaded.calibration.threshold
        size = f"{ds.Rows}x{ds.Columns}"
        print(
            f"{path.name:34s} {ds.Modality:3s} {size:>9s}  {r.scores.synthetic:9.3f}  "
            f"{r.scores.consistency:10.3f}  {r.flagged!s:>14s}  {row['model+checks'].flagged!s:>16s}"
        )
        if row["model+checks"].flagged:
            codes = ", ".join(f.code for f in row["model+checks"].findings)
            print(f"{'':34s}   findings: {codes}")
    n = len(paths)
    print(
        f"\nreal images: {n} ({n - len(ENCODINGS_OF_MR_SMALL)} distinct, "
        f"{len(ENCODINGS_OF_MR_SMALL)} re-encodings of MR_small)"
    )
    print(f"flagged as synthetic (model): {synthetic_flags}/{n}")
    for name, count in flagged.items():
        print(f"flagged ({name}): {count}/{n}")
    print(f"\nmachine {platform.platform()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
