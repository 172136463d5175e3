"""The cost weight of a case: how much a study would cost if it were fabricated.

The case queue ranks cases by ``score_overall * cost_weight`` (:mod:`plugin.store.cases`);
the caller that opens a case computes the weight here from the linked :class:`Case` (a study
and the patient's record around it) and passes it in. The formula::

    cost_weight = modality_weight * (BILLED_FACTOR if a follow-on order rests on this study else 1)

``modality_weight`` is the highest :data:`MODALITY_WEIGHTS` entry among the study's series
(CT, MR and PET cost most to make up and to bill; radiographs least; 1.0 for anything else).

A *follow-on order* is an imaging or procedure ``ServiceRequest`` of the record, other than
the order the study fulfils, placed after the study (``authoredOn``, else its occurrence,
later than the study's date), whose ``reasonReference`` names the study's ``ImagingStudy``,
a ``DiagnosticReport`` about it, or a ``Condition`` the study shows, or whose ``reasonCode``
is the code of such a Condition. A reference to the ImagingStudy or its report counts even
without dates (it can only come after the study). The Conditions a study shows are those
whose code appears in the ``conclusionCode`` of a report about it.

``Procedure`` resources are not counted yet: the connectors' :class:`Procedure` does not carry
``reasonReference``; once it does, a Procedure performed after the study counts as an order
does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from connectors.domain import Case, ImagingOrder, PatientRecord
from plugin.store.snapshots import as_utc

__all__ = ["BILLED_FACTOR", "MODALITY_WEIGHTS", "CostWeight", "cost_weight"]

#: Weight by DICOM Modality; a study takes its highest.
MODALITY_WEIGHTS: dict[str, float] = {
    "CT": 3.0,
    "MR": 3.0,
    "PT": 3.0,
    "NM": 2.5,
    "XA": 2.0,
    "MG": 2.0,
    "US": 1.5,
    "RF": 1.5,
    "CR": 1.0,
    "DX": 1.0,
}

#: Multiplier when the record shows a follow-on order resting on the study.
BILLED_FACTOR = 2.0


@dataclass(frozen=True)
class CostWeight:
    """A case's cost weight and why: the modality that set ``modality_weight`` (``None`` when no
    series had a weighted one) and the follow-on orders (``ServiceRequest/<id>``) that raised it."""

    weight: float
    modality: str | None
    modality_weight: float
    follow_on_orders: tuple[str, ...]


def cost_weight(case: Case, record: PatientRecord | None = None) -> CostWeight:
    """The cost weight of ``case`` (see the module docstring), from ``record`` (default: the
    case's own record; without one, the modality alone)."""
    record = record if record is not None else case.record
    weighted = [(MODALITY_WEIGHTS[m], m) for m in case.study.modalities if m in MODALITY_WEIGHTS]
    modality_weight, modality = max(weighted) if weighted else (1.0, None)
    follow_on = (
        () if record is None else tuple(f"ServiceRequest/{o.id}" for o in _follow_on_orders(case, record))
    )
    factor = BILLED_FACTOR if follow_on else 1.0
    return CostWeight(modality_weight * factor, modality, modality_weight, follow_on)


def _follow_on_orders(case: Case, record: PatientRecord) -> Iterable[ImagingOrder]:
    imaging_study_id = case.imaging_study.id if case.imaging_study is not None else None
    reports = [
        r for r in record.reports if imaging_study_id is not None and imaging_study_id in r.imaging_study_ids
    ]
    if case.report is not None and case.report not in reports:
        reports.append(case.report)
    direct = {f"DiagnosticReport/{r.id}" for r in reports}
    if imaging_study_id is not None:
        direct.add(f"ImagingStudy/{imaging_study_id}")
    shown_codes = {(c.system, c.code) for r in reports for c in r.conclusion_codes}
    shown = [c for c in record.conditions if any((k.system, k.code) in shown_codes for k in c.codes)]
    condition_refs = {f"Condition/{c.id}" for c in shown}
    condition_codes = {(k.system, k.code) for c in shown for k in c.codes}
    study_time = case.study.study_datetime or (case.imaging_study.started if case.imaging_study else None)
    own = case.order.id if case.order is not None else None
    for order in record.orders:
        if order.id == own:
            continue
        if direct & set(order.reason_references) and _not_before(order, study_time, unknown=True):
            yield order
            continue
        by_condition = condition_refs & set(order.reason_references) or any(
            (c.system, c.code) in condition_codes for c in order.reason_codes
        )
        if by_condition and _not_before(order, study_time, unknown=False):
            yield order


def _not_before(order: ImagingOrder, study_time: datetime | None, *, unknown: bool) -> bool:
    """Whether the order was placed after the study; ``unknown`` when a date is missing."""
    placed = order.authored or order.occurrence
    if placed is None or study_time is None:
        return unknown
    return as_utc(placed) > as_utc(study_time)
