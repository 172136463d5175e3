"""Load a simulated cohort folder (``manifest.json`` + Bundles + DICOM) into labelled cases.

This is plain connector work (read the Bundles, read the DICOM folders, link
them) followed by attaching the manifest's labels, so it lives on the plugin
side where both `connectors` and `fusion` may be used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from connectors import link_cases, read_bundle, read_dicom
from connectors.domain import Case, PatientRecord, SiteProfile
from connectors.errors import NoInputFound
from fusion.train import LabelledCase

__all__ = ["Cohort", "CohortEntry", "CohortError", "load_cohort"]

logger = logging.getLogger(__name__)


class CohortError(ValueError):
    """A folder that is not a usable cohort (no manifest, a broken entry ...)."""


@dataclass(frozen=True)
class CohortEntry:
    """One line of ``manifest.json``'s ``cases``."""

    patient_id: str
    study_instance_uid: str
    bundle: Path
    dicom: Path
    label: Literal["clean", "manipulated"]
    manipulation: str | None
    kind: str | None
    detail: dict[str, Any]
    family: str | None = None


@dataclass(frozen=True)
class Cohort:
    """A cohort folder: its manifest entries and its site profile."""

    root: Path
    entries: tuple[CohortEntry, ...]
    site: SiteProfile | None
    seed: int | None

    def __len__(self) -> int:
        return len(self.entries)

    @cached_property
    def reused_images(self) -> frozenset[str]:
        """StudyInstanceUIDs of cohort studies whose image a wrong-patient case files again."""
        return frozenset(
            str(e.detail["donor_study_instance_uid"])
            for e in self.entries
            if e.manipulation == "wrong-patient"
            and e.detail.get("donor_in_cohort")
            and e.detail.get("donor_study_instance_uid")
        )

    def iter_cases(self) -> Iterator[LabelledCase]:
        """Read and link each case; Bundles are read once per patient."""
        records: dict[Path, list[PatientRecord]] = {}
        for entry in self.entries:
            if entry.bundle not in records:
                records[entry.bundle] = read_bundle(entry.bundle)
            yield self._case(entry, records[entry.bundle])

    def _case(self, entry: CohortEntry, records: list[PatientRecord]) -> LabelledCase:
        studies = [s for s in read_dicom(entry.dicom) if s.study_instance_uid == entry.study_instance_uid]
        if not studies:
            raise CohortError(
                f"{entry.dicom}: no study {entry.study_instance_uid} there, as manifest.json says there is"
            )
        cases: list[Case] = link_cases(studies, records)
        return LabelledCase(
            case=cases[0],
            manipulation=entry.manipulation,
            label=entry.label,
            family=entry.family,
            image_reused=entry.label == "clean" and entry.study_instance_uid in self.reused_images,
        )


def _label(value: object, index: int) -> Literal["clean", "manipulated"]:
    if value == "clean":
        return "clean"
    if value == "manipulated":
        return "manipulated"
    raise CohortError(f"manifest case #{index}: label must be 'clean' or 'manipulated', not {value!r}")


def load_cohort(root: Path) -> Cohort:
    """Read ``root/manifest.json`` (and ``root/site.json`` when present)."""
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise CohortError(f"{root}: no manifest.json; make a cohort with `crosscheck simulate --out {root}`")
    try:
        manifest = json.loads(manifest_path.read_text("utf-8"))
        raw_cases = manifest["cases"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CohortError(f"{manifest_path}: not a cohort manifest ({exc})") from exc
    entries = []
    for i, raw in enumerate(raw_cases):
        try:
            entries.append(
                CohortEntry(
                    patient_id=str(raw["patient_id"]),
                    study_instance_uid=str(raw["study_instance_uid"]),
                    bundle=root / raw["bundle"],
                    dicom=root / raw["dicom"],
                    label=_label(raw["label"], i),
                    manipulation=raw.get("manipulation"),
                    kind=raw.get("kind"),
                    detail=dict(raw.get("detail") or {}),
                    family=raw.get("family"),
                )
            )
        except (KeyError, TypeError) as exc:
            raise CohortError(f"{manifest_path}: case #{i} lacks {exc}") from exc
    if not entries:
        raise NoInputFound(f"{manifest_path}: the cohort has no cases")
    site = None
    site_path = root / "site.json"
    if site_path.is_file():
        site = SiteProfile.from_json(json.loads(site_path.read_text("utf-8")))
    logger.debug("cohort %s: %d cases", root, len(entries))
    seed = manifest.get("seed")
    return Cohort(root=root, entries=tuple(entries), site=site, seed=seed if isinstance(seed, int) else None)
