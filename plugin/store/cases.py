"""The fraud investigators' case queue: one case per flagged study, its status, assignee, comments
and the history of every change; and the training labels the dispositions give.

A :class:`CaseQueue` works on a :class:`~plugin.store.Store` (its transactions and clock)::

    queue = CaseQueue(store)
    case = queue.open_case_for(stored, cost_weight=cost_weight(linked_case).weight)
    queue.update_case(case.id, actor="alice", expected_version=case.version, status="in-review")

**One case per study.** A flagged result opens a case for its StudyInstanceUID; the same
result again returns that case (idempotent). When the study is scored again and the newer
result (stored later) is flagged too, the case moves to it: ``result_id`` and
``score_overall`` change (and ``cost_weight`` when one is given), each change is an event in
its history, and the status and assignee stay (a disposition is about the study, not the
model). An older result arriving late, or a newer one that is not flagged, leaves the case as
it is. Results that are not flagged open nothing.

**Rank** is ``score_overall * cost_weight`` (see :mod:`plugin.cases.cost` for the weight; 1.0
when none is given). ``cases(order_by="rank")`` lists the highest first.

**Statuses** (:class:`CaseStatus`) and the changes allowed (:data:`TRANSITIONS`)::

    new        -> in-review, confirmed-fabricated, confirmed-genuine, not-determinable
    in-review  -> new, confirmed-fabricated, confirmed-genuine, not-determinable
    confirmed-fabricated, confirmed-genuine, not-determinable  -> in-review   (reopening)

A disposition (the three closed statuses) and a reopening need a ``note`` saying why.

**What kind of fabrication** (:class:`FabricationKind`: a synthetic image, a tampered image, an
image of another patient or filed under the wrong record, other or unknown) may go with
``confirmed-fabricated``, given with the disposition or later (a change that needs a note too);
a case that leaves ``confirmed-fabricated`` loses it (an event records that). It makes the
disposition's training label precise enough to say which of the model's heads was wrong.

**Nothing is deleted.** Every change is a :class:`CaseEvent` (who, when, field, old and new
value, note); comments are never edited: a correction is a new :class:`CaseComment` that
``supersedes`` the old one, at most once. The database refuses UPDATE and DELETE on both
tables (:mod:`plugin.store.ddl`). Every change also goes to the audit trail in the same
transaction (``case.open``, ``case.update``, ``case.comment``), with ids only: notes and
comments stay out of it. Views are for the caller to audit (``case.read``).

**Optimistic locking.** A case's ``version`` grows with each change; :meth:`CaseQueue.update_case`
takes the version the caller read and raises :class:`~plugin.errors.StaleCase` when the case
changed since.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from plugin.errors import CaseChangeRefused, CaseNotFound, StaleCase
from plugin.store.models import (
    AuditEventRow,
    CaseCommentRow,
    CaseEventRow,
    CaseRow,
    FeedbackRow,
    ResultRow,
    UserRow,
)
from plugin.store.records import ActorKind, AuditAction, StoredResult
from plugin.store.store import Store, audit_detail

__all__ = [
    "CLEAN_OVERRIDE_CODES",
    "DEFAULT_COST_WEIGHT",
    "MAX_TEXT_CHARS",
    "OVERRIDE_REASON_SYSTEM",
    "TRANSITIONS",
    "Case",
    "CaseComment",
    "CaseEvent",
    "CaseOrder",
    "CaseQueue",
    "CaseStatus",
    "FabricationKind",
    "HistoryEntry",
    "LabelSource",
    "TrainingLabel",
]

logger = logging.getLogger(__name__)

#: The cost weight of a case opened without one.
DEFAULT_COST_WEIGHT = 1.0

#: The longest note or comment taken, in characters.
MAX_TEXT_CHARS = 10_000

#: The CodeSystem of this service's CDS Hooks ``overrideReasons`` (``plugin.cds.cards`` issues them).
OVERRIDE_REASON_SYSTEM = "https://imaging-crosscheck.org/fhir/CodeSystem/cds-override-reason"

#: Override reasons that say a clinician checked the study and found it genuine: a ``clean`` label.
CLEAN_OVERRIDE_CODES = frozenset({"verified-with-modality", "correct-patient-confirmed"})


class CaseStatus(StrEnum):
    """Where a case stands: ``new``, ``in-review``, or one of the dispositions."""

    NEW = "new"
    IN_REVIEW = "in-review"
    CONFIRMED_FABRICATED = "confirmed-fabricated"
    CONFIRMED_GENUINE = "confirmed-genuine"
    NOT_DETERMINABLE = "not-determinable"

    @property
    def closed(self) -> bool:
        """A disposition: the investigators decided (or found they cannot)."""
        return self not in (CaseStatus.NEW, CaseStatus.IN_REVIEW)


_DISPOSITIONS = frozenset(s for s in CaseStatus if s.closed)

#: The status changes allowed, from each status.
TRANSITIONS: dict[CaseStatus, frozenset[CaseStatus]] = {
    CaseStatus.NEW: frozenset({CaseStatus.IN_REVIEW} | _DISPOSITIONS),
    CaseStatus.IN_REVIEW: frozenset({CaseStatus.NEW} | _DISPOSITIONS),
    **{status: frozenset({CaseStatus.IN_REVIEW}) for status in _DISPOSITIONS},
}


class FabricationKind(StrEnum):
    """What the investigators found fabricated, given with a ``confirmed-fabricated`` disposition.

    ``synthetic``: the image was made by a generative model, not acquired; ``tampered``: an acquired
    image was altered (a finding injected or removed); ``wrong-patient``: the image is another
    patient's, or filed under the wrong record; ``other``: something else, or not known.
    """

    SYNTHETIC = "synthetic"
    TAMPERED = "tampered"
    WRONG_PATIENT = "wrong-patient"
    OTHER = "other"

    @property
    def description(self) -> str:
        """The words the review page's disposition form offers it with."""
        return _KIND_WORDS[self]


_KIND_WORDS = {
    FabricationKind.SYNTHETIC: "synthetic image (generated, not acquired)",
    FabricationKind.TAMPERED: "tampered image (a finding injected or removed)",
    FabricationKind.WRONG_PATIENT: "image of another patient / wrong record",
    FabricationKind.OTHER: "other or unknown",
}


class CaseOrder(StrEnum):
    """How :meth:`CaseQueue.cases` sorts: ``rank`` (score x cost weight) or ``score``, highest
    first; ``created``, newest first. Ties go to the older case."""

    RANK = "rank"
    SCORE = "score"
    CREATED = "created"


class LabelSource(StrEnum):
    """Where a training label came from: an investigator's disposition or a clinician's CDS Hooks
    feedback (an override reason saying the study was checked)."""

    DISPOSITION = "disposition"
    CDS_FEEDBACK = "cds-feedback"


@dataclass(frozen=True)
class Case:
    """A case of the queue: the flagged result it stands for, the study's identifiers, its status,
    assignee (a user name) and rank fields, ``version`` for :meth:`CaseQueue.update_case`, and
    the kind of fabrication confirmed (``None`` unless ``confirmed-fabricated`` with a kind)."""

    id: int
    result_id: str
    study_instance_uid: str
    patient_id: str | None
    accession_number: str | None
    status: CaseStatus
    assignee: str | None
    score_overall: float
    cost_weight: float
    created_at: datetime
    updated_at: datetime
    version: int
    fabrication_kind: FabricationKind | None = None

    @property
    def rank(self) -> float:
        """``score_overall * cost_weight``: what the queue sorts by."""
        return self.score_overall * self.cost_weight


@dataclass(frozen=True)
class CaseEvent:
    """One change of a case: ``field`` (``status``, ``assignee``, ``result_id``, ``score_overall``,
    ``cost_weight``, ``patient_id``, ``accession_number``, ``fabrication_kind``) went from ``old``
    to ``new`` (as text, ``None`` for none), by ``actor``, with the ``note`` given with it."""

    id: int
    case_id: int
    at: datetime
    actor: str
    field: str
    old: str | None
    new: str | None
    note: str | None


@dataclass(frozen=True)
class CaseComment:
    """A comment on a case. ``supersedes`` is the comment it corrects; ``superseded_by`` the one
    that corrects it (``None`` while it is the current version)."""

    id: int
    case_id: int
    at: datetime
    author: str
    text: str
    supersedes: int | None
    superseded_by: int | None = None


#: An entry of a case's history.
HistoryEntry = CaseEvent | CaseComment


@dataclass(frozen=True)
class TrainingLabel:
    """A label for fine-tuning: the study (StudyInstanceUID, patient id), ``manipulated`` or
    ``clean``, where it came from, the result and model (sha256) that scored it, and for a
    ``manipulated`` label the kind of fabrication confirmed, when the investigators said.

    ``to_json`` gives the entry of ``crosscheck labels``' output file; ``from_json`` reads one back
    (``ValueError`` saying which field is wrong).
    """

    study_instance_uid: str
    patient_id: str | None
    label: Literal["clean", "manipulated"]
    source: LabelSource
    model_sha256: str | None
    result_id: str
    fabrication_kind: FabricationKind | None = None

    def __post_init__(self) -> None:
        if self.label not in ("clean", "manipulated"):
            raise ValueError(f"label must be 'clean' or 'manipulated', not {self.label!r}")
        if self.fabrication_kind is not None and self.label != "manipulated":
            raise ValueError("only a 'manipulated' label has a fabrication_kind")

    def to_json(self) -> dict[str, Any]:
        return {
            "study_instance_uid": self.study_instance_uid,
            "patient_id": self.patient_id,
            "label": self.label,
            "fabrication_kind": None if self.fabrication_kind is None else self.fabrication_kind.value,
            "source": self.source.value,
            "model_sha256": self.model_sha256,
            "result_id": self.result_id,
        }

    @classmethod
    def from_json(cls, data: Any) -> TrainingLabel:
        """A label from an entry of ``crosscheck labels``' file (``fabrication_kind`` may be absent:
        files written before it existed)."""
        if not isinstance(data, dict):
            raise ValueError(f"a label is a JSON object, not {type(data).__name__}")
        uid = data.get("study_instance_uid")
        if not isinstance(uid, str) or not uid.strip():
            raise ValueError("study_instance_uid must be a non-empty string")
        label = data.get("label")
        if label not in ("clean", "manipulated"):
            raise ValueError(f"label must be 'clean' or 'manipulated', not {label!r}")
        kind = data.get("fabrication_kind")
        if kind is not None and not isinstance(kind, str):
            raise ValueError(f"fabrication_kind must be a string or null, not {kind!r}")
        source = data.get("source", LabelSource.DISPOSITION.value)
        if source not in set(LabelSource):
            raise ValueError(f"source must be {' or '.join(s.value for s in LabelSource)}, not {source!r}")
        optional = {name: data.get(name) for name in ("patient_id", "model_sha256", "result_id")}
        for name, value in optional.items():
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string or null")
        return cls(
            study_instance_uid=uid.strip(),
            patient_id=optional["patient_id"],
            label=label,
            source=LabelSource(source),
            model_sha256=optional["model_sha256"],
            result_id=optional["result_id"] or "",
            fabrication_kind=None if kind is None else _fabrication_kind(kind),
        )


class CaseQueue:
    """The case queue on a :class:`~plugin.store.Store` (see the module docstring for its rules).

    Like the Store, safe to share between threads: each method is one transaction.
    """

    def __init__(self, store: Store) -> None:
        self._store = store

    # -- opening ---------------------------------------------------------------------------

    def open_case_for(
        self, stored: StoredResult, *, cost_weight: float | None = None, actor: str = "system"
    ) -> Case | None:
        """The case of a flagged result's study, opened or moved to this result; ``None`` for a
        result that is not flagged. ``cost_weight`` (positive; default 1.0 for a new case, else
        unchanged) comes from :func:`plugin.cases.cost.cost_weight`."""
        if not stored.result.flagged:
            return None
        if cost_weight is not None and not (math.isfinite(cost_weight) and cost_weight > 0):
            raise ValueError(f"cost_weight must be a positive number, not {cost_weight}")
        try:
            return self._open(stored, cost_weight, actor)
        except IntegrityError:
            # another process opened the study's case between our read and our insert
            return self._open(stored, cost_weight, actor)

    def _open(self, stored: StoredResult, cost_weight: float | None, actor: str) -> Case:
        result = stored.result
        uid = result.case.study_instance_uid
        with self._store._transaction(write=True, integrity_errors=True) as session:
            row = session.scalars(sa.select(CaseRow).where(CaseRow.study_instance_uid == uid)).first()
            now = self._store._now()
            if row is None:
                if session.get(ResultRow, stored.id) is None:
                    raise CaseChangeRefused(
                        f"result {stored.id} is not stored: open a case for the result save_result returned"
                    )
                row = CaseRow(
                    result_id=stored.id,
                    study_instance_uid=uid,
                    patient_id=result.case.patient_id,
                    accession_number=result.case.accession_number,
                    status=CaseStatus.NEW.value,
                    assignee=None,
                    score_overall=result.scores.overall,
                    cost_weight=DEFAULT_COST_WEIGHT if cost_weight is None else cost_weight,
                    created_at=now,
                    updated_at=now,
                    version=1,
                )
                session.add(row)
                session.flush()
                session.add(_event(row.id, now, actor, "status", None, CaseStatus.NEW, f"result {stored.id}"))
                session.add(self._audit(AuditAction.CASE_OPEN, actor, row, now, {"case": row.id}))
                logger.debug("opened case %d for study %s", row.id, uid)
                return _case(row)
            if row.result_id == stored.id or not self._newer(session, stored, row.result_id):
                return _case(row)
            changes: dict[str, Any] = {
                "result_id": stored.id,
                "score_overall": result.scores.overall,
                "patient_id": result.case.patient_id,
                "accession_number": result.case.accession_number,
            }
            if cost_weight is not None:
                changes["cost_weight"] = cost_weight
            model = result.model
            note = f"re-scored as result {stored.id}" + (
                "" if model is None else f" by {model.name} {model.version}"
            )
            fields = self._apply(session, row, changes, actor, now, note)
            session.add(
                self._audit(AuditAction.CASE_UPDATE, actor, row, now, {"case": row.id, "fields": fields})
            )
            logger.debug("case %d moved to result %s", row.id, stored.id)
            return _case(row)

    @staticmethod
    def _newer(session: Session, stored: StoredResult, current_id: str) -> bool:
        current = session.get(ResultRow, current_id)
        assert current is not None  # a foreign key
        return (stored.created_at, stored.id) > (current.created_at, current.id)

    # -- reading ---------------------------------------------------------------------------

    def case(self, case_id: int) -> Case | None:
        """The case with this id, or ``None``."""
        with self._store._transaction(write=False) as session:
            row = session.get(CaseRow, case_id)
            return None if row is None else _case(row)

    def case_for_study(self, study_instance_uid: str) -> Case | None:
        """The case of a study (StudyInstanceUID), or ``None``: how a link to any of the study's
        results finds its case."""
        query = sa.select(CaseRow).where(CaseRow.study_instance_uid == study_instance_uid)
        with self._store._transaction(write=False) as session:
            row = session.scalars(query).first()
            return None if row is None else _case(row)

    def cases(
        self,
        status: CaseStatus | str | Iterable[CaseStatus | str] | None = None,
        assignee: str | None = None,
        search: str | None = None,
        order_by: CaseOrder | str = CaseOrder.RANK,
        limit: int = 50,
        offset: int = 0,
        *,
        unassigned: bool = False,
    ) -> list[Case]:
        """Cases matching every filter given, sorted by ``order_by`` (see :class:`CaseOrder`).

        ``status``: one status or several; ``assignee``: a user name; ``unassigned``: only cases
        without one; ``search``: the start of a patient id, accession number or
        StudyInstanceUID, case-insensitive. ``limit`` (1 to 1000) and ``offset`` page.
        """
        if not 1 <= limit <= 1000:
            raise ValueError(f"limit must be between 1 and 1000, not {limit}")
        if offset < 0:
            raise ValueError(f"offset must not be negative, not {offset}")
        order = CaseOrder(order_by)
        key: sa.ColumnElement[Any]
        if order is CaseOrder.RANK:
            key = (CaseRow.score_overall * CaseRow.cost_weight).desc()
        elif order is CaseOrder.SCORE:
            key = CaseRow.score_overall.desc()
        else:
            key = CaseRow.created_at.desc()
        query = self._filtered(sa.select(CaseRow), status, assignee, search, unassigned)
        query = query.order_by(key, CaseRow.id).limit(limit).offset(offset)
        with self._store._transaction(write=False) as session:
            return [_case(row) for row in session.scalars(query)]

    def count_cases(
        self,
        status: CaseStatus | str | Iterable[CaseStatus | str] | None = None,
        assignee: str | None = None,
        search: str | None = None,
        *,
        unassigned: bool = False,
    ) -> int:
        """How many cases :meth:`cases` would list with these filters, without paging."""
        query = self._filtered(sa.select(sa.func.count(CaseRow.id)), status, assignee, search, unassigned)
        with self._store._transaction(write=False) as session:
            return int(session.scalar(query) or 0)

    @staticmethod
    def _filtered(
        query: sa.Select[Any],
        status: CaseStatus | str | Iterable[CaseStatus | str] | None,
        assignee: str | None,
        search: str | None,
        unassigned: bool,
    ) -> sa.Select[Any]:
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            query = query.where(CaseRow.status.in_([CaseStatus(s).value for s in wanted]))
        if assignee is not None and unassigned:
            raise ValueError("give assignee or unassigned=True, not both")
        if assignee is not None:
            query = query.where(CaseRow.assignee == _user_name(assignee))
        if unassigned:
            query = query.where(CaseRow.assignee.is_(None))
        if search is not None and search.strip():
            prefix = search.strip().lower()
            query = query.where(
                sa.or_(
                    *(
                        sa.func.lower(column).startswith(prefix, autoescape=True)
                        for column in (
                            CaseRow.patient_id,
                            CaseRow.accession_number,
                            CaseRow.study_instance_uid,
                        )
                    )
                )
            )
        return query

    def history(self, case_id: int) -> list[HistoryEntry]:
        """A case's events and comments, oldest first (an event before a comment made at the same
        moment; then in the order they were recorded)."""
        with self._store._transaction(write=False) as session:
            if session.get(CaseRow, case_id) is None:
                raise CaseNotFound(f"there is no case {case_id}: give an id that cases() listed")
            events = session.scalars(sa.select(CaseEventRow).where(CaseEventRow.case_id == case_id))
            entries: list[tuple[tuple[datetime, int, int], HistoryEntry]] = [
                ((e.at, 0, e.id), _case_event(e)) for e in events
            ]
            comments = list(
                session.scalars(sa.select(CaseCommentRow).where(CaseCommentRow.case_id == case_id))
            )
        superseded_by = {c.supersedes_id: c.id for c in comments if c.supersedes_id is not None}
        entries += [((c.at, 1, c.id), _case_comment(c, superseded_by.get(c.id))) for c in comments]
        return [entry for _, entry in sorted(entries, key=lambda pair: pair[0])]

    # -- changing --------------------------------------------------------------------------

    def update_case(
        self,
        case_id: int,
        *,
        actor: str,
        expected_version: int,
        status: CaseStatus | str | None = None,
        assignee: str | None = None,
        unassign: bool = False,
        note: str | None = None,
        fabrication_kind: FabricationKind | str | None = None,
        clear_fabrication_kind: bool = False,
    ) -> Case:
        """Change a case's status, assignee (``unassign`` clears it) and/or the kind of fabrication
        confirmed (with ``confirmed-fabricated`` only; ``clear_fabrication_kind`` sets it back to
        not said), as ``actor`` (a user name), if it is still at ``expected_version``; the events and
        the audit record are written in the same transaction. Returns the case as it now is (its
        version one higher). A case that leaves ``confirmed-fabricated`` loses its kind.

        Raises :class:`~plugin.errors.CaseNotFound`, :class:`~plugin.errors.StaleCase` when the
        case changed since it was read, :class:`~plugin.errors.CaseChangeRefused` for a change the
        rules do not allow (see the module docstring), ``ValueError`` for nothing to change.
        """
        new_status = None if status is None else CaseStatus(status)
        if assignee is not None and unassign:
            raise ValueError("give assignee or unassign=True, not both")
        new_kind = None if fabrication_kind is None else _fabrication_kind(fabrication_kind)
        if new_kind is not None and clear_fabrication_kind:
            raise ValueError("give fabrication_kind or clear_fabrication_kind=True, not both")
        note = _text("note", note) if note is not None else None
        new_assignee = None if assignee is None else _user_name(assignee)
        with self._store._transaction(write=True) as session:
            row = session.get(CaseRow, case_id)
            if row is None:
                raise CaseNotFound(f"there is no case {case_id}: give an id that cases() listed")
            if row.version != expected_version:
                raise _stale(row, expected_version)
            changes: dict[str, Any] = {}
            current = CaseStatus(row.status)
            if new_status is not None and new_status is not current:
                _check_transition(current, new_status, note)
                changes["status"] = new_status.value
            if new_assignee is not None and new_assignee != row.assignee:
                _check_assignee(session, new_assignee)
                changes["assignee"] = new_assignee
            if unassign and row.assignee is not None:
                changes["assignee"] = None
            changes.update(_kind_change(row, new_status or current, new_kind, clear_fabrication_kind, note))
            if not changes:
                raise ValueError(
                    f"case {case_id} already has this status, assignee and fabrication kind: nothing to "
                    "change (a remark without a change is a comment)"
                )
            now = self._store._now()
            fields = self._apply(session, row, changes, actor, now, note, expected_version=expected_version)
            detail = {
                "case": row.id,
                "fields": fields,
                **({"status": row.status} if "status" in changes else {}),
            }
            session.add(self._audit(AuditAction.CASE_UPDATE, actor, row, now, detail, kind=ActorKind.USER))
            return _case(row)

    def _apply(
        self,
        session: Session,
        row: CaseRow,
        changes: dict[str, Any],
        actor: str,
        now: datetime,
        note: str | None,
        *,
        expected_version: int | None = None,
    ) -> list[str]:
        """Write ``changes`` to the case (only if still at ``expected_version`` when given) with one
        event per changed field, the note on the first; the fields changed."""
        changed = {name: value for name, value in changes.items() if getattr(row, name) != value}
        if not changed:
            return []
        version = row.version if expected_version is None else expected_version
        done = session.execute(
            sa.update(CaseRow)
            .where(CaseRow.id == row.id, CaseRow.version == version)
            .values(**changed, updated_at=now, version=version + 1)
            .execution_options(synchronize_session=False)
        )
        if getattr(done, "rowcount", 1) != 1:
            session.refresh(row)
            raise _stale(row, version)
        for n, (name, value) in enumerate(changed.items()):
            session.add(_event(row.id, now, actor, name, getattr(row, name), value, note if n == 0 else None))
        session.flush()
        session.refresh(row)
        return list(changed)

    def comment(self, case_id: int, author: str, text: str, supersedes: int | None = None) -> CaseComment:
        """Add a comment to a case, or (``supersedes``) a correction of one of its comments that
        has not been corrected yet. Comments are never changed or removed."""
        text = _text("text", text)
        if not author.strip():
            raise ValueError("a comment needs its author's user name")
        try:
            with self._store._transaction(write=True, integrity_errors=True) as session:
                row = session.get(CaseRow, case_id)
                if row is None:
                    raise CaseNotFound(f"there is no case {case_id}: give an id that cases() listed")
                if supersedes is not None:
                    old = session.get(CaseCommentRow, supersedes)
                    if old is None or old.case_id != case_id:
                        raise CaseNotFound(f"case {case_id} has no comment {supersedes} to supersede")
                now = self._store._now()
                comment = CaseCommentRow(
                    case_id=case_id, at=now, author=author, text=text, supersedes_id=supersedes
                )
                session.add(comment)
                session.flush()
                detail = {"case": case_id, "comment": comment.id}
                if supersedes is not None:
                    detail["supersedes"] = supersedes
                session.add(
                    self._audit(AuditAction.CASE_COMMENT, author, row, now, detail, kind=ActorKind.USER)
                )
                return _case_comment(comment, None)
        except IntegrityError as exc:
            raise CaseChangeRefused(
                f"comment {supersedes} of case {case_id} is superseded already: supersede its newest version"
            ) from exc

    def _audit(
        self,
        action: AuditAction,
        actor: str,
        row: CaseRow,
        now: datetime,
        detail: dict[str, Any],
        *,
        kind: ActorKind = ActorKind.SYSTEM,
    ) -> AuditEventRow:
        return AuditEventRow(
            at=now,
            actor_kind=kind.value,
            actor_id=actor,
            action=action.value,
            result_id=row.result_id,
            study_instance_uid=row.study_instance_uid,
            outcome="ok",
            detail=audit_detail(detail),
        )

    # -- labels ----------------------------------------------------------------------------

    def training_labels(self) -> list[TrainingLabel]:
        """Labels for fine-tuning, one per study, ordered by StudyInstanceUID.

        ``confirmed-fabricated`` -> ``manipulated`` with the case's fabrication kind (``None`` when
        not said), ``confirmed-genuine`` -> ``clean`` (the case's result); a CDS Hooks feedback
        ``overridden`` with a reason in :data:`CLEAN_OVERRIDE_CODES` -> ``clean`` (the result its Card
        came from; the newest such feedback of a study). A disposition wins over feedback for the
        same study: it is the investigators' deliberate finding.
        """
        labels: dict[str, TrainingLabel] = {}
        dispositions = (
            sa.select(CaseRow.status, CaseRow.fabrication_kind, ResultRow)
            .join(ResultRow, ResultRow.id == CaseRow.result_id)
            .where(
                CaseRow.status.in_(
                    [CaseStatus.CONFIRMED_FABRICATED.value, CaseStatus.CONFIRMED_GENUINE.value]
                )
            )
        )
        feedback = (
            sa.select(ResultRow)
            .join(FeedbackRow, FeedbackRow.result_id == ResultRow.id)
            .where(
                FeedbackRow.outcome == "overridden",
                FeedbackRow.override_reason_code.in_(sorted(CLEAN_OVERRIDE_CODES)),
                sa.or_(
                    FeedbackRow.override_reason_system.is_(None),
                    FeedbackRow.override_reason_system == OVERRIDE_REASON_SYSTEM,
                ),
            )
            .order_by(FeedbackRow.id)
        )
        with self._store._transaction(write=False) as session:
            for result in session.scalars(feedback):  # oldest first: the newest stays
                labels[result.study_instance_uid] = _label(result, "clean", LabelSource.CDS_FEEDBACK)
            for status, kind, result in session.execute(dispositions):
                if status == CaseStatus.CONFIRMED_FABRICATED.value:
                    labels[result.study_instance_uid] = _label(
                        result,
                        "manipulated",
                        LabelSource.DISPOSITION,
                        None if kind is None else FabricationKind(kind),
                    )
                else:
                    labels[result.study_instance_uid] = _label(result, "clean", LabelSource.DISPOSITION)
        return [labels[uid] for uid in sorted(labels)]


def _check_transition(current: CaseStatus, new: CaseStatus, note: str | None) -> None:
    if new not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(TRANSITIONS[current]))
        raise CaseChangeRefused(f"a case that is {current} can become {allowed}, not {new}")
    if note is None and new.closed:
        raise CaseChangeRefused(f"a disposition ({new}) needs a note saying why")
    if note is None and current.closed:
        raise CaseChangeRefused(f"reopening a case that is {current} needs a note saying why")


def _fabrication_kind(value: FabricationKind | str) -> FabricationKind:
    try:
        return FabricationKind(value)
    except ValueError:
        known = ", ".join(k.value for k in FabricationKind)
        raise ValueError(f"fabrication_kind must be one of {known}, not {value!r}") from None


def _kind_change(
    row: CaseRow, status: CaseStatus, kind: FabricationKind | None, clear: bool, note: str | None
) -> dict[str, str | None]:
    """The ``fabrication_kind`` change that goes with a case becoming (or staying) ``status``."""
    fabricated = status is CaseStatus.CONFIRMED_FABRICATED
    if (kind is not None or clear) and not fabricated:
        raise CaseChangeRefused(
            f"a fabrication kind goes with a {CaseStatus.CONFIRMED_FABRICATED} disposition, not with {status}"
        )
    wanted = row.fabrication_kind if fabricated else None
    if kind is not None:
        wanted = kind.value
    elif clear:
        wanted = None
    if wanted == row.fabrication_kind:
        return {}
    if note is None and row.status == status.value:  # the disposition's own note covers it otherwise
        raise CaseChangeRefused("changing the fabrication kind of a disposition needs a note saying why")
    return {"fabrication_kind": wanted}


def _check_assignee(session: Session, user_name: str) -> None:
    user = session.scalars(sa.select(UserRow).where(UserRow.user_name == user_name)).first()
    if user is None or not user.active:
        raise CaseChangeRefused(
            f"{user_name!r} is not an active user: assign cases to an investigator's login"
        )


def _stale(row: CaseRow, expected: int) -> StaleCase:
    return StaleCase(
        f"case {row.id} changed since it was read (version {expected}, now {row.version}): "
        "read it again and retry with its current version",
        current_version=row.version,
    )


def _text(name: str, value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError(f"the {name} is empty")
    if len(value) > MAX_TEXT_CHARS:
        raise ValueError(f"the {name} is {len(value)} characters long, over {MAX_TEXT_CHARS}")
    return value


def _user_name(name: str) -> str:
    """User names are compared case-insensitively: stored and looked up in lower case."""
    return name.strip().lower()


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    return value.value if isinstance(value, StrEnum) else str(value)


def _event(
    case_id: int, at: datetime, actor: str, field: str, old: Any, new: Any, note: str | None
) -> CaseEventRow:
    return CaseEventRow(
        case_id=case_id, at=at, actor=actor, field=field, old=_as_text(old), new=_as_text(new), note=note
    )


def _label(
    result: ResultRow,
    label: Literal["clean", "manipulated"],
    source: LabelSource,
    kind: FabricationKind | None = None,
) -> TrainingLabel:
    return TrainingLabel(
        study_instance_uid=result.study_instance_uid,
        patient_id=result.patient_id,
        label=label,
        source=source,
        model_sha256=result.model_sha256,
        result_id=result.id,
        fabrication_kind=kind,
    )


def _case(row: CaseRow) -> Case:
    values = {f.name: getattr(row, f.name) for f in fields(Case)}
    kind = None if row.fabrication_kind is None else FabricationKind(row.fabrication_kind)
    return Case(**{**values, "status": CaseStatus(row.status), "fabrication_kind": kind})


def _case_event(row: CaseEventRow) -> CaseEvent:
    return CaseEvent(**{f.name: getattr(row, f.name) for f in fields(CaseEvent)})


def _case_comment(row: CaseCommentRow, superseded_by: int | None) -> CaseComment:
    values = {f.name: getattr(row, f.name) for f in fields(CaseComment) if hasattr(row, f.name)}
    return CaseComment(**{**values, "supersedes": row.supersedes_id, "superseded_by": superseded_by})
