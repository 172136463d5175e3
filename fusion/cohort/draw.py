"""Drawing one coherent simulated patient: who, what they have, and their imaging.

`draw_scenario` turns a random generator into a ``PatientScenario``: identity
(fictional names), body, 0-2 ``ConditionEpisode`` s with a prevalence that
depends on age, sex and smoking (about a third of patients are healthy), and
1-2 ``StudyPlan`` s whose timing, device, UIDs and ``image_findings`` follow from
those conditions. Each episode has one lesion geometry (`draw_finding`), shown
by every study of its region while the episode is active, so a follow-up study
shows the same lesion in the same place.

Everything comes from the generator passed in: the same generator state gives
the same patient, whichever process draws it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import date, datetime, timedelta

import numpy as np

from fusion.cohort.scenario import (
    ClinicalCondition,
    ConditionEpisode,
    ImageFinding,
    PatientScenario,
    SimSite,
    StudyKind,
    StudyPlan,
)
from fusion.cohort.site import SITE_TIMEZONE

__all__ = ["draw_finding", "draw_scenario", "episode_active", "findings_at", "region_of"]

logger = logging.getLogger(__name__)

C = ClinicalCondition

_MALE_GIVEN = (
    "Aldo",
    "Bram",
    "Cedric",
    "Dorian",
    "Emeric",
    "Falk",
    "Gideon",
    "Hallam",
    "Ivo",
    "Jory",
    "Kester",
    "Lorcan",
    "Matthias",
    "Nils",
    "Oswin",
    "Perrin",
    "Quill",
    "Rowan",
    "Silas",
    "Tobin",
    "Ulric",
    "Vance",
    "Wendel",
    "Yorick",
    "Anselm",
    "Bastian",
    "Casimir",
    "Darian",
    "Elric",
    "Florian",
)
_FEMALE_GIVEN = (
    "Adela",
    "Brisa",
    "Carys",
    "Delphine",
    "Elowen",
    "Fenna",
    "Greta",
    "Hester",
    "Ilse",
    "Juno",
    "Kerensa",
    "Liesel",
    "Maren",
    "Nerys",
    "Odile",
    "Petra",
    "Rosalind",
    "Saskia",
    "Tamsin",
    "Una",
    "Verity",
    "Wilma",
    "Yara",
    "Zelda",
    "Annika",
    "Bettina",
    "Clementine",
    "Dagny",
    "Esme",
    "Freya",
)
_FAMILY = (
    "Ashdown",
    "Blackwood",
    "Corrigan",
    "Dunmore",
    "Elsworth",
    "Fairbanks",
    "Greyling",
    "Hartwell",
    "Ingleby",
    "Jarrow",
    "Kilbride",
    "Lockhart",
    "Marlowe",
    "Northcott",
    "Oakhurst",
    "Pendleton",
    "Quarrie",
    "Ravenhill",
    "Stanwick",
    "Thornbury",
    "Underhill",
    "Vantongeren",
    "Whitlock",
    "Yarborough",
    "Aldermoor",
    "Brackenridge",
    "Castellane",
    "Drummond",
    "Eversleigh",
    "Fenwick",
    "Gallow",
    "Holloway",
    "Iredale",
    "Kettering",
    "Lindqvist",
    "Moorcroft",
    "Nettleship",
    "Ormsby",
    "Penhallow",
    "Rushworth",
    "Sallow",
    "Tregarthen",
    "Vellacott",
    "Winterbourne",
    "Zeller",
)

_CHEST = (
    C.PNEUMONIA,
    C.HEART_FAILURE,
    C.PLEURAL_EFFUSION,
    C.PNEUMOTHORAX,
    C.LUNG_NODULE,
    C.LUNG_CANCER,
    C.RIB_FRACTURE,
)
_HEAD = (C.BRAIN_TUMOUR, C.STROKE)
_ACUTE_DAYS = {  # condition -> (onset before the order, days) ; abatement after onset, days
    C.PNEUMONIA: ((1.0, 6.0), (14.0, 35.0)),
    C.PNEUMOTHORAX: ((0.1, 1.5), (6.0, 20.0)),
    C.RIB_FRACTURE: ((0.1, 2.0), (35.0, 60.0)),
    C.STROKE: ((0.1, 1.0), None),
    C.PLEURAL_EFFUSION: ((2.0, 20.0), None),
    C.HEART_FAILURE: ((30.0, 900.0), None),
    C.LUNG_NODULE: ((3.0, 200.0), None),
    C.LUNG_CANCER: ((3.0, 60.0), None),
    C.BRAIN_TUMOUR: ((2.0, 40.0), None),
}
_COMPANIONS = {  # a second condition that often comes with the first
    C.PNEUMONIA: (C.PLEURAL_EFFUSION,),
    C.HEART_FAILURE: (C.PLEURAL_EFFUSION, C.PNEUMONIA),
    C.LUNG_CANCER: (C.PLEURAL_EFFUSION,),
    C.RIB_FRACTURE: (C.PNEUMOTHORAX,),
    C.STROKE: (C.PNEUMONIA, C.HEART_FAILURE),
    C.LUNG_NODULE: (C.HEART_FAILURE,),
}
_EMERGENCY = frozenset({C.PNEUMOTHORAX, C.RIB_FRACTURE, C.STROKE, C.PNEUMONIA})
_DX_SHARE = {  # chest conditions: share imaged by radiograph rather than CT
    C.PNEUMONIA: 0.85,
    C.HEART_FAILURE: 0.85,
    C.PLEURAL_EFFUSION: 0.75,
    C.PNEUMOTHORAX: 0.85,
    C.RIB_FRACTURE: 0.75,
    C.LUNG_NODULE: 0.25,
    C.LUNG_CANCER: 0.2,
}
_CHEST_FOV_MM = 400.0  # the chest field of view `fusion.cohort.images` renders
_EPOCH = datetime(2019, 1, 1, tzinfo=SITE_TIMEZONE)
_EPOCH_DAYS = 6 * 365


def region_of(kind: StudyKind) -> str:
    """The ``ClinicalCondition.region`` a study kind images ("chest" or "head")."""
    return "head" if kind is StudyKind.BRAIN_MR else "chest"


def episode_active(episode: ConditionEpisode, when: datetime) -> bool:
    """Whether the episode is present at ``when`` (onset inclusive, abatement exclusive)."""
    return episode.onset <= when and (episode.abatement is None or when < episode.abatement)


def _condition_weights(age: float, male: bool, smoker: bool) -> dict[ClinicalCondition, float]:
    old = max(0.0, (age - 40.0) / 40.0)
    return {
        C.PNEUMONIA: 1.0 * (1.0 + 0.6 * (age > 65)) * (1.3 if smoker else 1.0),
        C.HEART_FAILURE: 0.05 + 1.1 * old * (1.2 if male else 1.0),
        C.PLEURAL_EFFUSION: 0.25 + 0.2 * old,
        C.PNEUMOTHORAX: 0.35 * (1.8 if age < 40 else 0.8) * (1.6 if male else 0.8) * (2.0 if smoker else 1.0),
        C.LUNG_NODULE: 0.15 + 0.5 * old * (1.5 if smoker else 1.0),
        C.LUNG_CANCER: 0.02 + 0.5 * old * (3.5 if smoker else 0.6),
        C.RIB_FRACTURE: 0.35 * (1.3 if age > 75 else 1.0),
        C.BRAIN_TUMOUR: 0.18 + 0.1 * old,
        C.STROKE: 0.03 + 0.9 * old * (1.3 if smoker else 1.0),
    }


def _choose(rng: np.random.Generator, weights: dict[ClinicalCondition, float]) -> ClinicalCondition:
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _draw_conditions(
    rng: np.random.Generator, age: float, male: bool, smoker: bool
) -> list[ClinicalCondition]:
    p_healthy = 0.42 if age < 40 else (0.33 if age < 65 else 0.26)
    if rng.random() < p_healthy:
        return []
    weights = _condition_weights(age, male, smoker)
    first = _choose(rng, weights)
    conditions = [first]
    if rng.random() < 0.3:
        companions = _COMPANIONS.get(first, ())
        if companions and rng.random() < 0.7:
            second = companions[int(rng.integers(len(companions)))]
        else:
            second = _choose(rng, {k: w for k, w in weights.items() if k is not first})
        if second not in conditions:
            conditions.append(second)
    return conditions


def _side(rng: np.random.Generator, condition: ClinicalCondition) -> str | None:
    if condition is C.HEART_FAILURE:
        return None
    if condition is C.PNEUMONIA and rng.random() < 0.1:
        return None  # bilateral
    return "right" if rng.random() < (0.55 if condition is C.PNEUMONIA else 0.5) else "left"


def _lung_x(rng: np.random.Generator, side: str | None) -> float:
    if side is None:
        return 0.5
    return float(rng.uniform(0.22, 0.36) if side == "right" else rng.uniform(0.64, 0.78))


def draw_finding(
    rng: np.random.Generator, condition: ClinicalCondition, side: str | None, severity: float
) -> ImageFinding:
    """The lesion an image shows for ``condition`` (geometry as in `fusion.cohort.scenario`)."""
    u = rng.uniform
    if condition is C.PNEUMONIA:
        y = float(rng.choice([0.3, 0.5, 0.68])) + u(-0.04, 0.04)
        center = (_lung_x(rng, side), y, 1.0 - y + u(-0.05, 0.05))
        size = 0.12 + 0.2 * severity
    elif condition is C.HEART_FAILURE:
        center = (0.55, 0.62, 0.4)
        size = 0.52 + 0.18 * severity  # cardiothoracic ratio
    elif condition is C.PLEURAL_EFFUSION:
        center = (_lung_x(rng, side), 0.82, 0.12)
        size = 0.08 + 0.25 * severity
    elif condition is C.PNEUMOTHORAX:
        x = 0.15 if side == "right" else 0.85
        center = (x, 0.3, 0.8)
        size = 0.1 + 0.4 * severity
    elif condition is C.LUNG_NODULE:
        y = u(0.25, 0.7)
        center = (_lung_x(rng, side), y, 1.0 - y)
        size = u(5.0, 20.0) / 100.0
    elif condition is C.LUNG_CANCER:
        hilar = rng.random() < 0.3
        x = (0.4 if side == "right" else 0.6) if hilar else _lung_x(rng, side)
        y = 0.45 if hilar else u(0.25, 0.65)
        center = (x, y, 1.0 - y)
        size = u(25.0, 70.0) / _CHEST_FOV_MM  # relative to the field of view (nodules alone use mm / 100)
    elif condition is C.RIB_FRACTURE:
        y = u(0.3, 0.7)
        center = (0.1 if side == "right" else 0.9, y, 1.0 - y)
        size = 0.02
    elif condition is C.BRAIN_TUMOUR:
        x = u(0.3, 0.42) if side == "right" else u(0.58, 0.7)
        center = (x, u(0.3, 0.65), u(0.45, 0.8))
        size = 0.08 + 0.15 * severity
    else:  # stroke: middle cerebral artery territory
        x = u(0.25, 0.35) if side == "right" else u(0.65, 0.75)
        center = (x, u(0.4, 0.6), u(0.5, 0.75))
        size = 0.06 + 0.18 * severity
    clipped = tuple(float(np.clip(c, 0.0, 1.0)) for c in center)
    return ImageFinding(
        condition=condition,
        side=side,
        center=(clipped[0], clipped[1], clipped[2]),
        size=round(float(size), 4),
        severity=round(float(severity), 3),
    )


def findings_at(
    episodes: Sequence[ConditionEpisode],
    lesions: Sequence[ImageFinding],
    kind: StudyKind,
    when: datetime,
) -> tuple[ImageFinding, ...]:
    """The lesions of the episodes active at ``when`` in the region ``kind`` images."""
    region = region_of(kind)
    return tuple(
        lesion
        for episode, lesion in zip(episodes, lesions, strict=True)
        if episode.condition.region == region and episode_active(episode, when)
    )


def _uid(rng: np.random.Generator, root: str) -> str:
    # root + 19 digits (first one non-zero): 47 characters for the default root
    return f"{root}.{int(rng.integers(1, 10**9))}{int(rng.integers(0, 10**10)):010d}"


def _kind_for(rng: np.random.Generator, reason: ClinicalCondition | None) -> StudyKind:
    if reason is None:
        r = rng.random()
        return StudyKind.CHEST_DX if r < 0.6 else (StudyKind.CHEST_CT if r < 0.8 else StudyKind.BRAIN_MR)
    if reason.region == "head":
        return StudyKind.BRAIN_MR
    return StudyKind.CHEST_DX if rng.random() < _DX_SHARE[reason] else StudyKind.CHEST_CT


def _views(
    rng: np.random.Generator, kind: StudyKind, age: float, episodes: Sequence[ConditionEpisode]
) -> tuple[str, ...]:
    if kind is not StudyKind.CHEST_DX:
        return ()
    unwell = any(e.condition in {C.PNEUMOTHORAX, C.RIB_FRACTURE} or e.severity > 0.7 for e in episodes)
    p_ap = 0.7 if unwell or age > 85 else 0.1
    return ("AP",) if rng.random() < p_ap else ("PA", "LL")


def _plan(
    rng: np.random.Generator,
    site: SimSite,
    index: int,
    number: int,
    kind: StudyKind,
    reason: ClinicalCondition | None,
    study_dt: datetime,
    views: tuple[str, ...],
    findings: tuple[ImageFinding, ...],
    not_before: datetime | None = None,
) -> StudyPlan:
    lead_h = float(rng.uniform(0.5, 48.0) if reason not in _EMERGENCY else rng.uniform(0.5, 6.0))
    if not_before is not None:  # a follow-up is ordered after the previous study was reported
        lead_h = min(lead_h, 0.9 * (study_dt - not_before).total_seconds() / 3600.0)
    order_dt = study_dt - timedelta(hours=lead_h)
    report_dt = study_dt + timedelta(hours=float(rng.uniform(1.0, 24.0)))
    devices = site.devices_for(kind.modality)
    if not devices:
        raise ValueError(f"site {site.name!r} has no {kind.modality} device; add one to SimSite.devices")
    device = devices[int(rng.integers(len(devices)))]
    n_series = len(views) if kind is StudyKind.CHEST_DX else 1
    return StudyPlan(
        kind=kind,
        study_instance_uid=_uid(rng, site.uid_root),
        series_instance_uids=tuple(_uid(rng, site.uid_root) for _ in range(n_series)),
        accession_number=f"ACC{study_dt:%y}{index:06d}{number}",
        order_id=f"sr-{index:06d}-{number}",
        report_id=f"dr-{index:06d}-{number}",
        imaging_study_id=f"is-{index:06d}-{number}",
        order_datetime=order_dt.replace(microsecond=0),
        study_datetime=study_dt.replace(microsecond=0),
        report_datetime=report_dt.replace(microsecond=0),
        device=device,
        image_findings=findings,
        reason=reason,
        views=views,
        slices={StudyKind.CHEST_CT: 24, StudyKind.BRAIN_MR: 20}.get(kind, 0),
    )


def _study_time(rng: np.random.Generator, day: date, emergency: bool) -> datetime:
    hour = float(rng.uniform(0.0, 24.0) if emergency else rng.uniform(8.0, 18.0))
    return datetime(day.year, day.month, day.day, tzinfo=SITE_TIMEZONE) + timedelta(hours=hour)


def draw_scenario(rng: np.random.Generator, site: SimSite, index: int) -> PatientScenario:
    """Draw patient number ``index`` (its ids: ``pat-<index:06d>``, ``sr-<index>-<n>`` ...)."""
    male = bool(rng.random() < 0.49)
    age = float(np.clip(rng.normal(56.0, 18.0), 18.0, 95.0))
    smoker = bool(rng.random() < (0.25 if male else 0.19))
    first_day = (_EPOCH + timedelta(days=int(rng.integers(_EPOCH_DAYS)))).date()
    birth_date = first_day - timedelta(days=int(age * 365.25))
    height = float(np.clip(rng.normal(176.0, 7.0) if male else rng.normal(163.0, 6.5), 145.0, 205.0))
    bmi = float(np.clip(rng.normal(26.5, 4.5), 16.5, 45.0))
    weight = bmi * (height / 100.0) ** 2

    conditions = _draw_conditions(rng, age, male, smoker)
    reason = conditions[0] if conditions else None
    first_study = _study_time(rng, first_day, reason in _EMERGENCY)
    episodes: list[ConditionEpisode] = []
    lesions: list[ImageFinding] = []
    for condition in conditions:
        (lo, hi), abate = _ACUTE_DAYS[condition]
        # the order comes after onset: at most 6 h (emergency) or 48 h before the study
        margin = timedelta(hours=6.0 if reason in _EMERGENCY else 48.0)
        onset = first_study - margin - timedelta(days=float(rng.uniform(lo, hi)))
        abatement = onset + timedelta(days=float(rng.uniform(*abate))) if abate else None
        severity = float(np.clip(rng.beta(2.2, 2.8) + 0.1, 0.1, 0.95))
        side = _side(rng, condition)
        episodes.append(
            ConditionEpisode(
                condition=condition,
                onset=onset.replace(microsecond=0),
                side=side,
                severity=round(severity, 3),
                abatement=abatement.replace(microsecond=0) if abatement else None,
            )
        )
        lesions.append(draw_finding(rng, condition, side, severity))

    kind = _kind_for(rng, reason)
    plans = [
        _plan(
            rng,
            site,
            index,
            1,
            kind,
            reason,
            first_study,
            _views(rng, kind, age, episodes),
            findings_at(episodes, lesions, kind, first_study),
        )
    ]
    other_region = [c for c in conditions[1:] if reason is not None and c.region != reason.region]
    if other_region or rng.random() < 0.3:
        second_reason = other_region[0] if other_region else reason
        second_kind = _kind_for(rng, second_reason) if other_region or reason is None else kind
        if second_reason is not None and second_reason.region == "chest" and not other_region:
            second_kind = kind if rng.random() < 0.7 else _kind_for(rng, second_reason)
        gap_days = float(rng.uniform(0.3, 2.0) if other_region else rng.uniform(1.0, 120.0))
        second_dt = plans[0].report_datetime + timedelta(days=gap_days)
        plans.append(
            _plan(
                rng,
                site,
                index,
                2,
                second_kind,
                second_reason,
                second_dt,
                _views(rng, second_kind, age, episodes),
                findings_at(episodes, lesions, second_kind, second_dt),
                not_before=plans[0].report_datetime,
            )
        )

    deceased = None
    grave = [e for e in episodes if e.condition in {C.LUNG_CANCER, C.BRAIN_TUMOUR, C.STROKE, C.HEART_FAILURE}]
    if grave and rng.random() < 0.06 + 0.1 * max(e.severity for e in grave):
        deceased = (plans[-1].report_datetime + timedelta(days=float(rng.uniform(3.0, 400.0)))).replace(
            microsecond=0
        )

    given_pool = _MALE_GIVEN if male else _FEMALE_GIVEN
    given = [given_pool[int(rng.integers(len(given_pool)))]]
    if rng.random() < 0.3:
        middle = given_pool[int(rng.integers(len(given_pool)))]
        if middle != given[0]:
            given.append(middle)
    scenario = PatientScenario(
        patient_id=f"pat-{index:06d}",
        mrn=f"{(index * 7919 + 1_234_567) % 10**8:08d}",
        family=_FAMILY[int(rng.integers(len(_FAMILY)))],
        given=tuple(given),
        gender="male" if male else "female",
        birth_date=birth_date,
        height_cm=round(height, 1),
        weight_kg=round(weight, 1),
        smoker=smoker,
        conditions=tuple(episodes),
        studies=tuple(plans),
        deceased=deceased,
    )
    logger.debug("drew patient %d: %d conditions, %d studies", index, len(episodes), len(plans))
    return scenario
