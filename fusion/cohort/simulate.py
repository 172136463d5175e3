"""Writing a simulated cohort: FHIR Bundles, DICOM studies, the site profile and a manifest.

`simulate` draws every patient (`fusion.cohort.draw`), decides which studies
are manipulated and how (``Manipulation``, spread evenly over the kinds asked
for), then renders each patient in a process pool: the Bundle
(`fusion.cohort.records`) and the DICOM files (`fusion.cohort.images`). The
layout under ``out``::

    manifest.json                      schema imaging-crosscheck/cohort/1, one case per study
    site.json                          SiteProfile JSON + the organisation's identifier systems
    bundles/<patient_id>.json          FHIR R4 transaction Bundle
    dicom/<patient_id>/<StudyInstanceUID>/...

Everything is derived from ``seed`` through ``numpy.random.SeedSequence`` spawn
keys per patient and per study, so the output does not depend on the number of
workers. Wrong-patient donors are re-rendered from their own seed in the
target's task, so a cohort donor's pixels are the ones in its own study.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import numpy as np

from fusion.cohort.draw import draw_finding, draw_scenario, region_of
from fusion.cohort.records import build_bundle
from fusion.cohort.scenario import (
    ClinicalCondition,
    ImageFinding,
    Manipulation,
    PatientScenario,
    SimSite,
    StudyKind,
    StudyPlan,
)
from fusion.cohort.site import default_site

__all__ = ["MANIFEST_SCHEMA", "simulate"]

logger = logging.getLogger(__name__)

MANIFEST_SCHEMA = "imaging-crosscheck/cohort/1"
_HIDDEN_BASE = 900_000  # patient numbers of hidden wrong-patient donors (never written)
_HEADER_KINDS = frozenset(
    {Manipulation.HEADER_IDENTITY, Manipulation.HEADER_DATES, Manipulation.HEADER_DEVICE}
)
# spawn-key streams under the cohort seed
_S_PATIENT, _S_ASSIGN, _S_HIDDEN, _S_RENDER, _S_BUNDLE, _S_MANIP, _S_FAMILY, _S_NUISANCE = (
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
)

#: (manipulation, study kind) -> the generator families that may make it in this cohort
FamilyOptions = dict[tuple[Manipulation, StudyKind], tuple[str, ...]]


def _seed(seed: int, *key: int) -> int:
    """A 32-bit seed derived from the cohort seed and a spawn key."""
    return int(np.random.SeedSequence(seed, spawn_key=key).generate_state(1)[0])


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _patient_number(patient_id: str) -> int:
    return int(patient_id.removeprefix("pat-"))


@dataclass(frozen=True)
class _Donor:
    """The study whose pixels a wrong-patient case files under the target."""

    scenario: PatientScenario
    plan: StudyPlan
    study_number: int
    in_cohort: bool


@dataclass(frozen=True)
class _Task:
    """One patient's work for a worker process."""

    seed: int
    out: str
    site: SimSite
    scenario: PatientScenario
    donors: dict[str, _Donor] = field(default_factory=dict)  # StudyInstanceUID -> donor


# -- deciding the manipulations (main process) ------------------------------------------


def _eligible(kind: Manipulation, scenario: PatientScenario, plan: StudyPlan, options: FamilyOptions) -> bool:
    if kind in _PIXEL_KINDS and not options.get((kind, plan.kind)):
        return False
    if kind is Manipulation.FINDING_REMOVED:
        return bool(plan.image_findings)
    if kind is Manipulation.FINDING_INJECTED:
        return bool(_injectable(scenario, plan))
    return True


_PIXEL_KINDS = frozenset(
    {Manipulation.SYNTHETIC, Manipulation.FINDING_INJECTED, Manipulation.FINDING_REMOVED}
)


def _family_options(families: Sequence[str] | None) -> FamilyOptions:
    """Which families can make each pixel manipulation of each study kind: allowed and available here."""
    from fusion.cohort.images.families import available, families_for

    options: FamilyOptions = {}
    for kind in _PIXEL_KINDS:
        for study_kind in StudyKind:
            options[(kind, study_kind)] = tuple(
                f
                for f in families_for(kind)
                if (families is None or f in families) and available(f, study_kind)
            )
    return options


def _injectable(scenario: PatientScenario, plan: StudyPlan) -> list[ClinicalCondition]:
    has = {e.condition for e in scenario.conditions}
    region = region_of(plan.kind)
    return [c for c in ClinicalCondition if c.region == region and c not in has]


def _hidden_donor(seed: int, site: SimSite, number: int, target: StudyPlan) -> _Donor:
    for attempt in range(200):
        index = _HIDDEN_BASE + number * 1000 + attempt
        scenario = draw_scenario(_rng(seed, _S_HIDDEN, number, attempt), site, index)
        for j, plan in enumerate(scenario.studies):
            if plan.kind is target.kind and plan.views == target.views:
                return _Donor(scenario, plan, j, in_cohort=False)
    raise RuntimeError(f"no hidden donor with a {target.kind.value} study after 200 draws")


def _assign(
    seed: int,
    site: SimSite,
    scenarios: list[PatientScenario],
    rate: float,
    kinds: Sequence[Manipulation],
    family_options: FamilyOptions,
    nuisance_rate: float = 0.0,
) -> tuple[list[PatientScenario], dict[str, _Donor]]:
    """Set ``manipulation`` on about ``rate`` of the studies, kinds in turn; the generator family of
    each pixel manipulation; and a nuisance on about ``nuisance_rate`` of all studies."""
    slots = [(i, j) for i, s in enumerate(scenarios) for j in range(len(s.studies))]
    target_count = round(rate * len(slots)) if kinds else 0
    rng = _rng(seed, _S_ASSIGN)
    order = [slots[k] for k in rng.permutation(len(slots))]
    chosen: dict[tuple[int, int], Manipulation] = {}
    cursor = dict.fromkeys(kinds, 0)  # per kind: slots before it are taken or not eligible
    turn = 0
    while len(chosen) < target_count and turn < target_count + 4 * len(kinds):
        kind = kinds[turn % len(kinds)]
        turn += 1
        while cursor[kind] < len(order):
            i, j = slot = order[cursor[kind]]
            cursor[kind] += 1
            if slot not in chosen and _eligible(kind, scenarios[i], scenarios[i].studies[j], family_options):
                chosen[slot] = kind
                break

    clean_by_look: dict[tuple[StudyKind, tuple[str, ...]], list[tuple[int, int]]] = {}
    for i, j in slots:
        if (i, j) not in chosen:
            p = scenarios[i].studies[j]
            clean_by_look.setdefault((p.kind, p.views), []).append((i, j))

    donors: dict[str, _Donor] = {}
    plans = [list(s.studies) for s in scenarios]
    hidden = 0
    for (i, j), kind in sorted(chosen.items()):
        plan = plans[i][j]
        mrng = _rng(seed, _S_MANIP, i, j)
        if kind is Manipulation.WRONG_PATIENT:
            candidates = [(k, m) for k, m in clean_by_look.get((plan.kind, plan.views), []) if k != i]
            if candidates and mrng.random() < 0.5:
                k, m = candidates[int(mrng.integers(len(candidates)))]
                donor = _Donor(scenarios[k], scenarios[k].studies[m], m, in_cohort=True)
            else:
                donor = _hidden_donor(seed, site, hidden, plan)
                hidden += 1
            donors[plan.study_instance_uid] = donor
            plan = replace(plan, manipulation=kind, donor_patient_id=donor.scenario.patient_id)
        elif kind is Manipulation.FINDING_INJECTED:
            options = _injectable(scenarios[i], plan)
            condition = options[int(mrng.integers(len(options)))]
            side = (
                None
                if condition is ClinicalCondition.HEART_FAILURE
                else ("right" if mrng.random() < 0.5 else "left")
            )
            severity = float(np.clip(mrng.beta(2.5, 2.5) + 0.15, 0.2, 0.95))
            finding = draw_finding(mrng, condition, side, severity)
            plan = replace(plan, manipulation=kind, manipulated_finding=finding)
        elif kind is Manipulation.FINDING_REMOVED:
            finding = plan.image_findings[int(mrng.integers(len(plan.image_findings)))]
            plan = replace(plan, manipulation=kind, manipulated_finding=finding)
        else:
            plan = replace(plan, manipulation=kind)
        if kind in _PIXEL_KINDS:
            choices = family_options[(kind, plan.kind)]
            plan = replace(plan, family=choices[int(_rng(seed, _S_FAMILY, i, j).integers(len(choices)))])
        plans[i][j] = plan
    if nuisance_rate > 0:
        from fusion.cohort.images.families import NUISANCES

        for i, j in slots:
            nrng = _rng(seed, _S_NUISANCE, i, j)
            if nrng.random() < nuisance_rate:
                plans[i][j] = replace(plans[i][j], nuisance=NUISANCES[int(nrng.integers(len(NUISANCES)))])
    updated = [replace(s, studies=tuple(p)) for s, p in zip(scenarios, plans, strict=True)]
    return updated, donors


# -- one patient (worker process) --------------------------------------------------------


def _finding_json(f: ImageFinding) -> dict[str, Any]:
    return {
        "condition": f.condition.value,
        "side": f.side,
        "center": list(f.center),
        "size": f.size,
        "severity": f.severity,
    }


def _run_patient(task: _Task) -> list[dict[str, Any]]:
    from fusion.cohort import images  # the image side; imported here so the record side stands alone

    out = Path(task.out)
    s = task.scenario
    number = _patient_number(s.patient_id)
    donor_findings = {uid: d.plan.image_findings for uid, d in task.donors.items()}
    bundle = build_bundle(s, task.site, _seed(task.seed, _S_BUNDLE, number), donor_findings=donor_findings)
    bundle_path = out / "bundles" / f"{s.patient_id}.json"
    # one line: the C encoder is ~10x faster than an indented dump, and bundles are for machines
    bundle_path.write_text(json.dumps(bundle, ensure_ascii=False) + "\n", encoding="utf-8")

    cases: list[dict[str, Any]] = []
    dicom_root = out / "dicom" / s.patient_id
    for j, plan in enumerate(s.studies):
        render_seed = _seed(task.seed, _S_RENDER, number, j)
        manip_seed = _seed(task.seed, _S_MANIP, number, j)
        detail: dict[str, Any] = {}
        kind = plan.manipulation
        if kind is Manipulation.WRONG_PATIENT:
            donor = task.donors[plan.study_instance_uid]
            donor_number = _patient_number(donor.scenario.patient_id)
            donor_study = images.render_study(
                donor.scenario, donor.plan, _seed(task.seed, _S_RENDER, donor_number, donor.study_number)
            )
            study = images.transplant(plan, donor_study)
            detail = {
                "donor_patient_id": donor.scenario.patient_id,
                "donor_study_instance_uid": donor.plan.study_instance_uid,
                "donor_in_cohort": donor.in_cohort,
                "donor_findings": [f.condition.value for f in donor.plan.image_findings],
            }
        else:
            study = images.render_study(s, plan, render_seed)
            if kind is Manipulation.FINDING_INJECTED and plan.manipulated_finding is not None:
                blended = images.inject_finding(study, plan.manipulated_finding, manip_seed)
                study = images.families.regenerate_injection(
                    plan.family or "blend", study, blended, manip_seed
                )
                detail = {"injected": _finding_json(plan.manipulated_finding)}
            elif kind is Manipulation.FINDING_REMOVED and plan.manipulated_finding is not None:
                removed, family = plan.manipulated_finding, plan.family or "membrane"
                try:
                    fill = images.removal_fill(family, plan.kind)
                    study = images.remove_finding(study, removed, manip_seed, fill=fill)
                except ValueError:  # e.g. a copy-move over an effusion too large to copy from the frame
                    family = "membrane"
                    study = images.remove_finding(study, removed, manip_seed)
                plan = replace(plan, family=family)
                detail = {"removed": _finding_json(removed)}
            elif kind is Manipulation.SYNTHETIC:
                family = plan.family or "vae"
                study = images.synthesize(study, manip_seed, images.synthetic_generator(family, plan.kind))
                detail = {"generator": family}
            elif kind in _HEADER_KINDS:
                detail = {"header_tamper": kind.value}
        if plan.nuisance is not None:
            study = images.apply_nuisance(study, plan.nuisance, _seed(task.seed, _S_NUISANCE, number, j))
            detail["nuisance"] = plan.nuisance
        header = kind if kind in _HEADER_KINDS else None
        images.write_study(study, s, task.site, dicom_root, header_tamper=header, seed=manip_seed)
        cases.append(
            {
                "patient_id": s.patient_id,
                "study_instance_uid": plan.study_instance_uid,
                "accession_number": plan.accession_number,
                "kind": plan.kind.value,
                "bundle": bundle_path.relative_to(out).as_posix(),
                "dicom": (dicom_root / plan.study_instance_uid).relative_to(out).as_posix(),
                "label": "clean" if kind is None else "manipulated",
                "manipulation": None if kind is None else kind.value,
                "family": plan.family,
                "nuisance": plan.nuisance,
                "detail": detail,
            }
        )
    return cases


# -- the cohort -------------------------------------------------------------------------


def _is_cohort(out: Path) -> bool:
    for name, key in (("manifest.json", "schema"), ("site.json", "cohort_schema")):
        path = out / name
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and data.get(key) == MANIFEST_SCHEMA:
                return True
    return False


def _prepare(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(
            f"cohort output {out} is a file; give a folder (new, empty or a previous cohort)"
        )
    if out.is_dir() and any(out.iterdir()):
        if not _is_cohort(out):
            raise FileExistsError(
                f"cohort output {out} is not empty and holds no cohort (no manifest.json with schema "
                f"{MANIFEST_SCHEMA!r}); choose a new or empty folder, or the folder of a previous cohort"
            )
        logger.info("replacing the previous cohort in the output folder")
        for name in ("bundles", "dicom"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("manifest.json", "site.json"):
            (out / name).unlink(missing_ok=True)
    (out / "bundles").mkdir(parents=True, exist_ok=True)
    (out / "dicom").mkdir(parents=True, exist_ok=True)


def _mp_context() -> BaseContext:
    """fork where it is safe (fast start, works from a notebook); spawn once torch is loaded.

    A forked child of a process whose torch/OpenMP thread pools are running can
    deadlock, so a parent that has imported torch (say, to probe a generator)
    starts its workers fresh.
    """
    if sys.platform == "linux" and "torch" not in sys.modules:
        return get_context("fork")
    return get_context("spawn")


_STUDY_COST = {StudyKind.CHEST_DX: 0.25, StudyKind.CHEST_CT: 0.8, StudyKind.BRAIN_MR: 0.7}  # s per study/view


def _cost(task: _Task) -> float:
    """A rough estimate of a patient's seconds, to hand out the longest first."""
    total = 0.0
    for plan in task.scenario.studies:
        one = _STUDY_COST.get(plan.kind, 0.5) * max(len(plan.views), 1)
        total += one
        if plan.manipulation is Manipulation.WRONG_PATIENT:
            total += one  # the donor is rendered too
        elif plan.manipulation is Manipulation.SYNTHETIC:
            total += one
    return total


def _run(
    tasks: list[_Task], workers: int, progress: bool, pool: ProcessPoolExecutor | None = None
) -> Iterator[list[dict[str, Any]]]:
    """Each task's cases, in the order of ``tasks`` (whatever order the workers finish in)."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), unit="patient", desc="cohort")
    try:
        if workers <= 1 or pool is None:
            for task in tasks:
                yield _run_patient(task)
                if bar is not None:
                    bar.update(1)
            return
        # longest first, so that no worker is left with a long patient at the end
        order = sorted(range(len(tasks)), key=lambda i: (-_cost(tasks[i]), i))
        futures = {pool.submit(_run_patient, tasks[i]): i for i in order}
        results: dict[int, list[dict[str, Any]]] = {}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            if bar is not None:
                bar.update(1)
        for i in range(len(tasks)):
            yield results.pop(i)
    finally:
        if bar is not None:
            bar.close()


def simulate(
    out: Path,
    patients: int,
    seed: int,
    manipulated_rate: float = 0.3,
    kinds: Sequence[Manipulation | str] | None = None,
    workers: int | None = None,
    progress: bool = False,
    families: Sequence[str] | None = None,
    nuisance_rate: float = 0.1,
) -> Path:
    """Write a cohort of ``patients`` patients to ``out`` and return the manifest's path.

    ``manipulated_rate`` is the share of studies manipulated, ``kinds`` the
    manipulations to use (all by default), spread evenly. ``families`` limits the
    generator families of pixel manipulations (all available by default; see
    `fusion.cohort.images.families`); ``nuisance_rate`` is the share of all
    studies, clean or not, re-encoded or resized. ``workers`` is the
    number of processes (default: the CPU count; 1 runs in this process).
    Refuses (``FileExistsError``) a non-empty folder that is not a previous
    cohort; a previous cohort there is replaced.
    """
    out = Path(out)
    if patients < 1:
        raise ValueError(f"patients must be at least 1, got {patients}")
    if not 0.0 <= manipulated_rate <= 1.0:
        raise ValueError(f"manipulated_rate must be within [0, 1], got {manipulated_rate}")
    chosen_kinds = [Manipulation(k) for k in (kinds if kinds is not None else list(Manipulation))]
    if not 0.0 <= nuisance_rate <= 1.0:
        raise ValueError(f"nuisance_rate must be within [0, 1], got {nuisance_rate}")
    if families is not None:
        from fusion.cohort.images.families import FAMILIES

        known = {f for fs in FAMILIES.values() for f in fs}
        unknown = sorted(set(families) - known)
        if unknown:
            raise ValueError(
                f"unknown generator families {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
    _prepare(out)

    site = default_site(seed)
    scenarios = [draw_scenario(_rng(seed, _S_PATIENT, i), site, i) for i in range(patients)]
    n_workers = max(1, min(workers if workers is not None else (os.cpu_count() or 1), patients))
    with ExitStack() as stack:
        pool = None
        if n_workers > 1:
            # the workers inherit the image side (forked) but not torch: the generator
            # probe below runs in a worker, which keeps the loaded generator for its
            # synthetic studies, and the other workers load it only if they need it
            from fusion.cohort import images  # noqa: F401

            pool = stack.enter_context(ProcessPoolExecutor(max_workers=n_workers, mp_context=_mp_context()))
            # on an interrupt, drop the patients not started yet instead of rendering them all first
            stack.callback(pool.shutdown, wait=True, cancel_futures=True)
        return _simulate(
            out,
            patients,
            seed,
            manipulated_rate,
            chosen_kinds,
            site,
            scenarios,
            n_workers,
            pool,
            progress,
            families,
            nuisance_rate,
        )


def _simulate(
    out: Path,
    patients: int,
    seed: int,
    manipulated_rate: float,
    chosen_kinds: list[Manipulation],
    site: SimSite,
    scenarios: list[PatientScenario],
    n_workers: int,
    pool: ProcessPoolExecutor | None,
    progress: bool,
    families: Sequence[str] | None,
    nuisance_rate: float,
) -> Path:
    skipped: list[str] = []
    options = _family_options(families)
    for kind in [k for k in chosen_kinds if k in _PIXEL_KINDS]:
        if manipulated_rate > 0 and not any(options[(kind, sk)] for sk in StudyKind):
            logger.warning("no generator family can make %s here: this cohort has none", kind.value)
            chosen_kinds.remove(kind)
            skipped.append(kind.value)
    scenarios, donors = _assign(seed, site, scenarios, manipulated_rate, chosen_kinds, options, nuisance_rate)

    site_json = {
        **site.profile.to_json(),
        "organization_id": site.organization_id,
        "mrn_system": site.mrn_system,
        "accession_system": site.accession_system,
        "cohort_schema": MANIFEST_SCHEMA,
    }
    (out / "site.json").write_text(json.dumps(site_json, indent=1) + "\n", encoding="utf-8")

    tasks = [
        _Task(
            seed,
            str(out),
            site,
            s,
            {
                p.study_instance_uid: donors[p.study_instance_uid]
                for p in s.studies
                if p.study_instance_uid in donors
            },
        )
        for s in scenarios
    ]
    cases = [case for result in _run(tasks, n_workers, progress, pool) for case in result]

    manifest = {
        "schema": MANIFEST_SCHEMA,
        "seed": seed,
        "patients": patients,
        "manipulated_rate": manipulated_rate,
        "kinds": [k.value for k in chosen_kinds],
        "skipped_kinds": skipped,
        "families": sorted({f for fs in options.values() for f in fs}),
        "nuisance_rate": nuisance_rate,
        "site": "site.json",
        "cases": cases,
    }
    path = out / "manifest.json"
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    n_manipulated = sum(c["label"] == "manipulated" for c in cases)
    logger.info(
        "cohort written: %d patients, %d studies, %d manipulated", patients, len(cases), n_manipulated
    )
    return path
