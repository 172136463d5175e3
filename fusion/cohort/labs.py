"""Laboratory values and vital signs that follow the patient's conditions over time.

Each ``Analyte`` has a healthy distribution (normal, or log-normal for markers
such as CRP whose values span orders of magnitude), a reference range (by sex or
age where that is how labs report it), a LOINC code and a UCUM unit. A
``LabModel`` holds one patient's personal set points; ``measure`` adds the
effect of every condition episode active at that time (scaled by severity and
by how far into its course the episode is) and measurement noise, and
interprets the result against the reference range (H / L / N).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from fusion.cohort.scenario import ClinicalCondition, ConditionEpisode, PatientScenario

__all__ = ["ANALYTES", "BMP", "CBC", "CONDITION_PANELS", "VITALS", "Analyte", "LabModel", "Measurement"]

logger = logging.getLogger(__name__)

C = ClinicalCondition


@dataclass(frozen=True)
class Analyte:
    """One quantity measured on the patient (laboratory test or vital sign)."""

    key: str
    loinc: str
    display: str
    unit: str  # UCUM code
    low: float | None  # reference range (men, or everyone)
    high: float | None
    mean: float  # healthy mean (log-normal: median)
    sd: float  # healthy spread (log-normal: of the natural log)
    decimals: int = 1
    log: bool = False
    category: str = "laboratory"
    female: tuple[float, float, float] | None = None  # low, high, mean for women
    clip: tuple[float, float] = (0.0, math.inf)


_A = Analyte
ANALYTES: dict[str, Analyte] = {
    a.key: a
    for a in (
        _A(
            "wbc",
            "6690-2",
            "Leukocytes [#/volume] in Blood by Automated count",
            "10*3/uL",
            4.0,
            11.0,
            7.0,
            1.5,
        ),
        _A(
            "hgb",
            "718-7",
            "Hemoglobin [Mass/volume] in Blood",
            "g/dL",
            13.5,
            17.5,
            15.0,
            0.9,
            female=(12.0, 15.5, 13.6),
        ),
        _A(
            "hct",
            "4544-3",
            "Hematocrit [Volume Fraction] of Blood by Automated count",
            "%",
            41.0,
            53.0,
            44.5,
            2.5,
            female=(36.0, 46.0, 40.5),
        ),
        _A(
            "plt",
            "777-3",
            "Platelets [#/volume] in Blood by Automated count",
            "10*3/uL",
            150.0,
            400.0,
            255.0,
            50.0,
            decimals=0,
        ),
        _A(
            "na",
            "2951-2",
            "Sodium [Moles/volume] in Serum or Plasma",
            "mmol/L",
            135.0,
            145.0,
            140.0,
            2.0,
            decimals=0,
        ),
        _A("k", "2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1, 4.2, 0.3),
        _A(
            "cl",
            "2075-0",
            "Chloride [Moles/volume] in Serum or Plasma",
            "mmol/L",
            98.0,
            107.0,
            102.0,
            2.0,
            decimals=0,
        ),
        _A(
            "co2",
            "2028-9",
            "Carbon dioxide, total [Moles/volume] in Serum or Plasma",
            "mmol/L",
            22.0,
            29.0,
            25.5,
            1.8,
            decimals=0,
        ),
        _A(
            "bun",
            "3094-0",
            "Urea nitrogen [Mass/volume] in Serum or Plasma",
            "mg/dL",
            7.0,
            20.0,
            14.0,
            3.5,
            decimals=0,
        ),
        _A(
            "creat",
            "2160-0",
            "Creatinine [Mass/volume] in Serum or Plasma",
            "mg/dL",
            0.74,
            1.35,
            0.98,
            0.14,
            decimals=2,
            female=(0.59, 1.04, 0.78),
        ),
        _A(
            "glu",
            "2345-7",
            "Glucose [Mass/volume] in Serum or Plasma",
            "mg/dL",
            70.0,
            99.0,
            90.0,
            9.0,
            decimals=0,
        ),
        _A("ca", "17861-6", "Calcium [Mass/volume] in Serum or Plasma", "mg/dL", 8.6, 10.3, 9.4, 0.35),
        _A(
            "crp",
            "1988-5",
            "C reactive protein [Mass/volume] in Serum or Plasma",
            "mg/L",
            0.0,
            5.0,
            1.4,
            0.7,
            log=True,
        ),
        _A(
            "pct",
            "33959-8",
            "Procalcitonin [Mass/volume] in Serum or Plasma",
            "ng/mL",
            0.0,
            0.5,
            0.04,
            0.5,
            decimals=2,
            log=True,
        ),
        _A(
            "ntprobnp",
            "33762-6",
            "Natriuretic peptide.B prohormone N-Terminal [Mass/volume] in Serum or Plasma",
            "pg/mL",
            0.0,
            125.0,
            45.0,
            0.6,
            decimals=0,
            log=True,
        ),
        _A(
            "cea",
            "2039-6",
            "Carcinoembryonic Ag [Mass/volume] in Serum or Plasma",
            "ng/mL",
            0.0,
            3.0,
            1.3,
            0.45,
            log=True,
        ),
        _A(
            "inr",
            "6301-6",
            "INR in Platelet poor plasma by Coagulation assay",
            "{INR}",
            0.8,
            1.2,
            1.0,
            0.06,
            decimals=2,
        ),
        _A(
            "temp",
            "8310-5",
            "Body temperature",
            "Cel",
            36.1,
            37.2,
            36.75,
            0.25,
            category="vital-signs",
            clip=(34.0, 42.0),
        ),
        _A("hr", "8867-4", "Heart rate", "/min", 60.0, 100.0, 74.0, 9.0, decimals=0, category="vital-signs"),
        _A(
            "rr",
            "9279-1",
            "Respiratory rate",
            "/min",
            12.0,
            20.0,
            15.0,
            1.8,
            decimals=0,
            category="vital-signs",
        ),
        _A(
            "spo2",
            "59408-5",
            "Oxygen saturation in Arterial blood by Pulse oximetry",
            "%",
            95.0,
            100.0,
            97.6,
            1.1,
            decimals=0,
            category="vital-signs",
            clip=(60.0, 100.0),
        ),
    )
}

CBC = ("wbc", "hgb", "hct", "plt")
BMP = ("na", "k", "cl", "co2", "bun", "creat", "glu", "ca")
VITALS = ("temp", "hr", "rr", "spo2")
CONDITION_PANELS: dict[ClinicalCondition, tuple[str, ...]] = {
    C.PNEUMONIA: ("crp", "pct"),
    C.HEART_FAILURE: ("ntprobnp",),
    C.PLEURAL_EFFUSION: ("crp", "ntprobnp"),
    C.PNEUMOTHORAX: ("inr",),
    C.LUNG_NODULE: ("cea",),
    C.LUNG_CANCER: ("cea", "crp"),
    C.RIB_FRACTURE: ("inr",),
    C.BRAIN_TUMOUR: ("inr",),
    C.STROKE: ("inr",),
}

# per condition, the shift at full effect (log analytes: shift of the natural log)
_EFFECTS: dict[ClinicalCondition, dict[str, float]] = {
    C.PNEUMONIA: {
        "wbc": 7.0,
        "crp": 3.7,
        "pct": 2.6,
        "temp": 1.4,
        "hr": 18.0,
        "rr": 7.0,
        "spo2": -4.0,
        "na": -2.0,
        "bun": 4.0,
    },
    C.HEART_FAILURE: {
        "ntprobnp": 3.3,
        "creat": 0.32,
        "na": -4.0,
        "bun": 9.0,
        "spo2": -3.0,
        "rr": 4.0,
        "hr": 10.0,
        "crp": 0.4,
        "hgb": -0.6,
    },
    C.PLEURAL_EFFUSION: {"rr": 4.0, "spo2": -2.0, "crp": 0.7},
    C.PNEUMOTHORAX: {"hr": 22.0, "rr": 9.0, "spo2": -6.0},
    C.LUNG_NODULE: {"cea": 0.2},
    C.LUNG_CANCER: {"cea": 2.1, "hgb": -2.0, "crp": 1.1, "plt": 80.0, "ca": 0.6, "wbc": 1.5},
    C.RIB_FRACTURE: {"hr": 14.0, "rr": 4.0, "hgb": -0.8, "crp": 0.8},
    C.BRAIN_TUMOUR: {"glu": 22.0, "wbc": 2.5},
    C.STROKE: {"glu": 35.0, "hr": 6.0, "crp": 0.5, "wbc": 1.5},
}


@dataclass(frozen=True)
class Measurement:
    """One measured value with its reference range and interpretation."""

    analyte: Analyte
    value: float
    low: float | None
    high: float | None
    interpretation: str  # "H" | "L" | "N"
    when: datetime


def _activity(episode: ConditionEpisode, when: datetime) -> float:
    """How much of the episode's effect is present at ``when`` (0..1)."""
    if when < episode.onset:
        return 0.0
    if episode.abatement is None:
        return 1.0
    if when >= episode.abatement:
        return 0.0
    course = (episode.abatement - episode.onset).total_seconds()
    into = (when - episode.onset).total_seconds() / course
    return 1.0 if into < 0.4 else max(0.0, (1.0 - into) / 0.6)


class LabModel:
    """One patient's labs: personal set points, then condition effects plus noise."""

    def __init__(self, scenario: PatientScenario, rng: np.random.Generator) -> None:
        self._scenario = scenario
        self._rng = rng
        self._female = scenario.gender == "female"
        self._offsets = {key: float(rng.normal(0.0, 0.6)) for key in ANALYTES}

    def reference(self, analyte: Analyte, when: datetime) -> tuple[float | None, float | None, float]:
        """(low, high, healthy mean) for this patient at ``when``."""
        low, high, mean = analyte.low, analyte.high, analyte.mean
        if self._female and analyte.female is not None:
            low, high, mean = analyte.female
        age = self._scenario.age_at(when.date())
        if analyte.key == "ntprobnp":
            high = 450.0 if age >= 75 else 125.0
            mean = 45.0 * (1.0 + max(0.0, age - 45.0) / 15.0)
        elif analyte.key == "cea" and self._scenario.smoker:
            high, mean = 5.0, 2.4
        elif analyte.key == "creat":
            mean *= 1.0 + max(0.0, age - 60.0) / 100.0
        return low, high, mean

    def measure(self, key: str, when: datetime) -> Measurement:
        analyte = ANALYTES[key]
        low, high, mean = self.reference(analyte, when)
        shift = 0.0
        for episode in self._scenario.conditions:
            effect = _EFFECTS[episode.condition].get(key)
            if effect:
                shift += effect * (0.5 + episode.severity) * _activity(episode, when)
        noise = float(self._rng.normal(0.0, 0.8))
        z = 0.6 * self._offsets[key] + noise
        if analyte.log:
            value = math.exp(math.log(mean) + shift + analyte.sd * z)
        elif key == "hct":
            hgb = self.measure("hgb", when).value
            value = hgb * 2.95 + 0.8 * noise
        else:
            value = mean + shift + analyte.sd * z
        value = round(float(np.clip(value, *analyte.clip)), analyte.decimals)
        if analyte.log or analyte.clip[0] == 0.0:
            value = max(value, 10.0**-analyte.decimals)
        if high is not None and value > high:
            interpretation = "H"
        elif low is not None and value < low and low > 0.0:
            interpretation = "L"
        else:
            interpretation = "N"
        return Measurement(analyte, value, low, high, interpretation, when)

    def weight_at(self, when: datetime) -> float:
        """Body weight (kg): cancer and heart failure move it a little."""
        factor = 1.0
        for episode in self._scenario.conditions:
            a = _activity(episode, when)
            if episode.condition in {C.LUNG_CANCER, C.BRAIN_TUMOUR}:
                factor -= 0.06 * episode.severity * a
            elif episode.condition is C.HEART_FAILURE:
                factor += 0.03 * episode.severity * a
        return round(self._scenario.weight_kg * factor + float(self._rng.normal(0.0, 0.4)), 1)
