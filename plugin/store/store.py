"""``Store``: the plugin's database behind one object, safe to share between threads.

Every method runs one short transaction in its own Session (from one ``sessionmaker`` per
Store), so FastAPI's threadpool can call a shared Store from many requests at once. Writes
begin with ``BEGIN IMMEDIATE`` on SQLite (see :mod:`plugin.store.engine`).

The audit trail has no update or delete method here, and the database refuses both (see
:mod:`plugin.store.ddl`). A new score is a new row; a stored result changes only where a batch
sweep amends its duplicate findings (:meth:`Store.save_sweep_results`: the image of a study it
met later repeats this one's, so this one is now filed under two patients too).
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from fusion.result import CrossCheckResult, ModelInfo
from plugin.errors import (
    DuplicateCard,
    DuplicateSnapshot,
    ResultNotFound,
    SnapshotUnreadable,
    StoreError,
    StoreUnavailable,
)
from plugin.store.engine import DEFAULT_BUSY_TIMEOUT_S, WRITE, create_store_engine, database_url, describe_url
from plugin.store.migrate import prepare_schema
from plugin.store.models import (
    AuditEventRow,
    CardRow,
    FeedbackRow,
    JtiRow,
    RecordSnapshotRow,
    ResultRow,
    SweepResultRow,
    SweepRow,
)
from plugin.store.records import (
    Actor,
    ActorKind,
    AuditAction,
    AuditEvent,
    CardIndicator,
    CardKind,
    FeedbackOutcome,
    IssuedCard,
    OverrideReason,
    ResultSource,
    StoredFeedback,
    StoredResult,
    input_fingerprint,
)
from plugin.store.snapshots import Timeline

__all__ = ["MAX_AUDIT_DETAIL_BYTES", "Store", "audit_detail"]

logger = logging.getLogger(__name__)

#: The largest ``detail`` an audit event takes, as compact JSON.
MAX_AUDIT_DETAIL_BYTES = 4096


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Store:
    """The plugin's database: results, CDS Hooks Cards and feedback, the audit trail, used CDS ``jti``.

    Open it with :meth:`open`; use it as a context manager or call :meth:`close`.
    """

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = _utc_now) -> None:
        """Wrap an engine whose schema is already at the head; :meth:`open` is the usual way in."""
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._clock = clock
        self._where = describe_url(engine.url)

    @classmethod
    def open(
        cls,
        url: str | Path,
        *,
        migrate: bool = True,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        clock: Callable[[], datetime] = _utc_now,
    ) -> Store:
        """Open the database at ``url`` (a SQLite path, or ``postgresql+psycopg://...``), checking
        its schema revision and, with ``migrate``, upgrading it to this version's.

        Raises :class:`~plugin.errors.StoreUnavailable` when it cannot be reached,
        :class:`~plugin.errors.SchemaTooNew` for a database of a newer version,
        :class:`~plugin.errors.SchemaOutOfDate` for an older one without ``migrate``, and
        :class:`~plugin.errors.MigrationFailed`.
        """
        engine = create_store_engine(database_url(url), busy_timeout_s=busy_timeout_s)
        where = describe_url(engine.url)
        try:
            prepare_schema(engine, migrate=migrate)
        except DBAPIError as exc:
            engine.dispose()
            raise StoreUnavailable(
                f"cannot open the database {where} ({_reason(exc)}): check that the file is a SQLite "
                "database in a writable folder, or that the server is running and accepts this user"
            ) from exc
        except BaseException:
            engine.dispose()
            raise
        logger.debug("store opened at %s", where)
        return cls(engine, clock=clock)

    @property
    def url(self) -> str:
        """The database's URL, password hidden."""
        return self._where

    @property
    def engine(self) -> Engine:
        return self._engine

    def ping(self) -> None:
        """One round trip to the database (readiness probes); `StoreError` when it is not there."""
        with self._transaction(write=False) as session:
            session.execute(sa.text("SELECT 1"))

    def close(self) -> None:
        """Close every pooled connection; the Store cannot be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- results ---------------------------------------------------------------------------

    def save_result(
        self,
        result: CrossCheckResult,
        *,
        source: ResultSource | str,
        inputs: Mapping[str, str] | None = None,
        timeline: Timeline | None = None,
    ) -> StoredResult:
        """Store ``result`` under a new id. ``inputs`` are the identifiers of what was scored (file
        paths, server URLs without credentials, StudyInstanceUID, ...): a sweep finds them again
        with :meth:`result_for_inputs`. ``timeline`` is the record snapshot the result was scored
        against (`Timeline.from_case`), stored in the same transaction (:meth:`timeline` reads it)."""
        row = self._result_row(result, ResultSource(source), inputs)
        with self._transaction(write=True) as session:
            session.add(row)
            if timeline is not None:
                session.flush()  # the result row first: the snapshot's foreign key names it
                session.add(self._snapshot_row(row.id, timeline))
            stored = _stored_result(row)
        logger.debug("stored result %s for study %s", row.id, row.study_instance_uid)
        return stored

    def get_result(self, result_id: str) -> StoredResult | None:
        """The result stored under ``result_id``, or ``None``."""
        with self._transaction(write=False) as session:
            row = session.get(ResultRow, result_id)
            return None if row is None else _stored_result(row)

    def latest_result(self, study_instance_uid: str, model_sha256: str | None) -> StoredResult | None:
        """The newest result for a study (StudyInstanceUID) scored by the model with this sha256
        (``None``: results scored without a model), or ``None``."""
        query = (
            sa.select(ResultRow)
            .where(ResultRow.study_instance_uid == study_instance_uid, _same_model(model_sha256))
            .order_by(ResultRow.created_at.desc(), ResultRow.id.desc())
            .limit(1)
        )
        return self._first_result(query)

    def result_for_inputs(self, inputs: Mapping[str, str], model_sha256: str | None) -> StoredResult | None:
        """The newest result stored with these ``inputs`` (in any order) by this model, or ``None``:
        how a resumed sweep knows an input is done."""
        query = (
            sa.select(ResultRow)
            .where(ResultRow.input_fingerprint == input_fingerprint(inputs), _same_model(model_sha256))
            .order_by(ResultRow.created_at.desc(), ResultRow.id.desc())
            .limit(1)
        )
        return self._first_result(query)

    def _result_row(
        self, result: CrossCheckResult, source: ResultSource, inputs: Mapping[str, str] | None
    ) -> ResultRow:
        given = dict(inputs or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in given.items()):
            raise TypeError("inputs maps names to strings")
        model = result.model
        return ResultRow(
            id=str(uuid.uuid4()),
            study_instance_uid=result.case.study_instance_uid,
            patient_id=result.case.patient_id,
            accession_number=result.case.accession_number,
            model_name=None if model is None else model.name,
            model_version=None if model is None else model.version,
            model_sha256=None if model is None else model.sha256,
            schema_version=result.schema_version,
            score_overall=result.scores.overall,
            score_consistency=result.scores.consistency,
            score_synthetic=result.scores.synthetic,
            flagged=result.flagged,
            threshold=result.threshold,
            result_json=result.to_json(),
            source=source.value,
            input_fingerprint=input_fingerprint(given) if given else None,
            inputs=given or None,
            created_at=self._now(),
        )

    def _first_result(self, query: sa.Select[ResultRow]) -> StoredResult | None:
        with self._transaction(write=False) as session:
            row = session.scalars(query).first()
            return None if row is None else _stored_result(row)

    # -- record snapshots ------------------------------------------------------------------

    def save_timeline(self, result_id: str, timeline: Timeline) -> None:
        """Keep ``timeline`` as the record snapshot of the stored result ``result_id`` (when it was
        not saved with the result). :class:`~plugin.errors.ResultNotFound` for a result the store
        does not hold, :class:`~plugin.errors.DuplicateSnapshot` when it has a snapshot already."""
        try:
            with self._transaction(write=True, integrity_errors=True) as session:
                if session.get(ResultRow, result_id) is None:
                    raise ResultNotFound(
                        f"result {result_id} is not stored: keep a snapshot for the id save_result returned"
                    )
                session.add(self._snapshot_row(result_id, timeline))
                session.flush()
        except IntegrityError as exc:
            raise DuplicateSnapshot(
                f"result {result_id} has a record snapshot already: it is kept once and never replaced"
            ) from exc
        logger.debug("kept a record snapshot for result %s", result_id)

    def timeline(self, result_id: str) -> Timeline | None:
        """The record snapshot kept with the result ``result_id``, or None (none was kept, or no
        such result); :class:`~plugin.errors.SnapshotUnreadable` for one this version cannot read."""
        with self._transaction(write=False) as session:
            row = session.get(RecordSnapshotRow, result_id)
            snapshot = None if row is None else row.snapshot
        if snapshot is None:
            return None
        try:
            return Timeline.from_json(snapshot)
        except ValueError as exc:
            raise SnapshotUnreadable(
                f"the record snapshot of result {result_id} cannot be read ({exc})"
            ) from exc

    def _snapshot_row(self, result_id: str, timeline: Timeline) -> RecordSnapshotRow:
        return RecordSnapshotRow(
            result_id=result_id,
            schema=timeline.schema,
            entries=len(timeline.entries),
            snapshot=timeline.to_json(),
            created_at=self._now(),
        )

    # -- batch sweeps ----------------------------------------------------------------------

    def start_sweep(self, *, model: ModelInfo, description: str, studies: int) -> str:
        """Record a sweep starting with ``model`` over ``studies`` studies; its id. ``description``
        names the input (a folder, server URLs without credentials), never a patient."""
        row = SweepRow(
            id=str(uuid.uuid4()),
            started_at=self._now(),
            finished_at=None,
            model_version=model.version,
            model_sha256=model.sha256,
            description=description,
            studies=studies,
        )
        with self._transaction(write=True) as session:
            session.add(row)
        return row.id

    def finish_sweep(self, sweep_id: str) -> None:
        """Stamp the sweep's end."""
        with self._transaction(write=True) as session:
            session.execute(
                sa.update(SweepRow).where(SweepRow.id == sweep_id).values(finished_at=self._now())
            )

    def swept_fingerprints(self, model_sha256: str) -> set[str]:
        """The input fingerprints a sweep has stored a result for with this model: the work done."""
        query = sa.select(SweepResultRow.input_fingerprint).where(SweepResultRow.model_sha256 == model_sha256)
        with self._transaction(write=False) as session:
            return set(session.scalars(query))

    def save_sweep_results(
        self,
        sweep_id: str,
        items: Sequence[tuple[CrossCheckResult, Mapping[str, str]]],
        *,
        amended: Sequence[tuple[str, CrossCheckResult]] = (),
        timelines: Sequence[Timeline | None] | None = None,
    ) -> int:
        """Store the results of swept inputs, each with its ``inputs`` (see :meth:`save_result`), and
        write over the results ``amended`` names by id (a study stored before whose findings the
        batch changed), all in one transaction; how many results were stored. An input whose
        result this model already has (stored by a concurrent or earlier sweep) is skipped, never
        stored twice: the database's primary key on (model sha256, input fingerprint) decides.

        ``timelines``, when given, holds each item's record snapshot (`Timeline.from_case` of the
        case read for it; None where there is none), in the order of ``items``: stored in the same
        transaction as its result, and skipped with it."""
        snapshots = list(timelines) if timelines is not None else [None] * len(items)
        if len(snapshots) != len(items):
            raise ValueError(f"{len(snapshots)} timelines for {len(items)} results: give one per result")
        rows = []
        for result, inputs in items:
            if result.model is None or not inputs:
                raise ValueError("a swept result names its model and its inputs")
            rows.append(self._result_row(result, ResultSource.SWEEP, inputs))
        try:
            with self._transaction(write=True, integrity_errors=True) as session:
                self._add_swept(session, sweep_id, rows)
                session.add_all(
                    self._snapshot_row(row.id, timeline)
                    for row, timeline in zip(rows, snapshots, strict=True)
                    if timeline is not None
                )
                self._amend(session, amended)
            return len(rows)
        except IntegrityError:
            if len(rows) == 1 and not amended:
                logger.debug("input %s was stored already", rows[0].input_fingerprint)
                return 0
        stored = 0  # one of the batch was stored already: the others one by one
        for item, timeline in zip(items, snapshots, strict=True):
            stored += self.save_sweep_results(sweep_id, [item], timelines=[timeline])
        with self._transaction(write=True) as session:
            self._amend(session, amended)
        return stored

    def swept_result(self, model_sha256: str, fingerprint: str) -> StoredResult | None:
        """The result a sweep stored with this model for the input with this fingerprint, or ``None``."""
        query = (
            sa.select(ResultRow)
            .join(SweepResultRow, SweepResultRow.result_id == ResultRow.id)
            .where(
                SweepResultRow.model_sha256 == model_sha256, SweepResultRow.input_fingerprint == fingerprint
            )
        )
        return self._first_result(query)

    def _amend(self, session: Session, amended: Sequence[tuple[str, CrossCheckResult]]) -> None:
        """Write the amended results over theirs, each with an audit event (``result.amend``) saying
        what it was before: its flag, overall score and finding codes (no evidence: it may name
        another patient's key)."""
        for result_id, result in amended:
            row = session.get(ResultRow, result_id)
            if row is None:  # pragma: no cover - an amendment names a result stored before it
                continue
            before = CrossCheckResult.from_json(row.result_json)
            row.score_overall = result.scores.overall
            row.score_consistency = result.scores.consistency
            row.score_synthetic = result.scores.synthetic
            row.flagged = result.flagged
            row.result_json = result.to_json()
            session.add(
                self._audit_row(
                    AuditAction.RESULT_AMEND,
                    Actor(ActorKind.SYSTEM, "sweep"),
                    result_id=result_id,
                    study_instance_uid=result.case.study_instance_uid,
                    model_version=None if result.model is None else result.model.version,
                    outcome="amended",
                    detail={"before": _summary(before), "after": _summary(result)},
                )
            )
            logger.debug("amended result %s", result_id)

    def swept_results(self, model_sha256: str, fingerprints: Sequence[str]) -> list[StoredResult]:
        """The results a sweep stored with this model for these input fingerprints (in no order)."""
        query = (
            sa.select(ResultRow)
            .join(SweepResultRow, SweepResultRow.result_id == ResultRow.id)
            .where(SweepResultRow.model_sha256 == model_sha256)
        )
        wanted = set(fingerprints)
        with self._transaction(write=False) as session:
            return [_stored_result(row) for row in session.scalars(query) if row.input_fingerprint in wanted]

    @staticmethod
    def _add_swept(session: Session, sweep_id: str, rows: Sequence[ResultRow]) -> None:
        session.add_all(rows)
        session.flush()
        session.add_all(
            SweepResultRow(
                model_sha256=row.model_sha256,
                input_fingerprint=row.input_fingerprint,
                sweep_id=sweep_id,
                result_id=row.id,
            )
            for row in rows
        )
        session.flush()

    # -- CDS Hooks Cards -------------------------------------------------------------------

    def record_cards(self, cards: Sequence[IssuedCard]) -> None:
        """Store the Cards of one hook answer, all or none, stamped with the store's clock: what
        ties a later Feedback (which names only the Card's ``uuid``) to the result it came from.

        Raises :class:`~plugin.errors.DuplicateCard` for a ``uuid`` already stored or given twice,
        :class:`~plugin.errors.ResultNotFound` for a ``result_id`` the store does not hold.
        """
        uuids = [card.card_uuid for card in cards]
        repeated = sorted({u for u in uuids if uuids.count(u) > 1})
        if repeated:
            raise DuplicateCard(f"Card {repeated[0]} is given twice: give each Card its own uuid")
        if not cards:
            return
        if any(card.created_at is not None for card in cards):
            raise ValueError("the store sets created_at: leave it None in the cards to record")
        now = self._now()
        try:
            with self._transaction(write=True, integrity_errors=True) as session:
                session.add_all(
                    CardRow(
                        card_uuid=card.card_uuid,
                        service_id=card.service_id,
                        hook_instance=card.hook_instance,
                        result_id=card.result_id,
                        kind=card.kind.value,
                        indicator=card.indicator.value,
                        created_at=now,
                    )
                    for card in cards
                )
        except IntegrityError as exc:
            raise self._cards_refused(cards) from exc
        logger.debug("recorded %d Cards for hookInstance %s", len(cards), cards[0].hook_instance)

    def card(self, card_uuid: str) -> IssuedCard | None:
        """The Card recorded under ``card_uuid`` (with ``created_at``), or ``None``."""
        with self._transaction(write=False) as session:
            row = session.get(CardRow, card_uuid)
            return None if row is None else _issued_card(row)

    def _cards_refused(self, cards: Sequence[IssuedCard]) -> StoreError:
        """Why the database refused ``cards`` (looked up after the fact: no cost when it does not)."""
        named = {card.result_id for card in cards if card.result_id is not None}
        with self._transaction(write=False) as session:
            held = set(session.scalars(sa.select(ResultRow.id).where(ResultRow.id.in_(named))))
            stored = set(
                session.scalars(
                    sa.select(CardRow.card_uuid).where(CardRow.card_uuid.in_([c.card_uuid for c in cards]))
                )
            )
        for card in cards:
            if card.result_id is not None and card.result_id not in held:
                return ResultNotFound(
                    f"Card {card.card_uuid} names result {card.result_id}, which the store does not hold: "
                    "save the result first and give the id that save_result returned"
                )
        for card in cards:
            if card.card_uuid in stored:
                return DuplicateCard(
                    f"Card {card.card_uuid} is recorded already: a Card is recorded once, when it is issued; "
                    "give each new Card a new uuid"
                )
        return StoreError(f"the database {self._where} refused the Cards; none was recorded")

    # -- CDS Hooks feedback ----------------------------------------------------------------

    def record_feedback(
        self,
        *,
        service_id: str,
        card_uuid: str,
        outcome: FeedbackOutcome | str,
        outcome_timestamp: datetime,
        accepted_suggestions: Sequence[str] = (),
        override_reason: OverrideReason | None = None,
        user_comment: str | None = None,
        client_iss: str | None = None,
        client_sub: str | None = None,
        result_id: str | None = None,
    ) -> StoredFeedback:
        """Store one Feedback entry for the Card ``card_uuid`` of service ``service_id``.

        The same Card may get feedback several times (the specification allows it): each is
        kept. ``result_id`` is the result the Card came from, when known (:meth:`card` gives it
        for a Card recorded with :meth:`record_cards`); an unknown one raises
        :class:`~plugin.errors.ResultNotFound`.
        """
        outcome = FeedbackOutcome(outcome)
        if isinstance(accepted_suggestions, str):
            raise TypeError("accepted_suggestions is a sequence of suggestion uuids, not one string")
        if outcome is FeedbackOutcome.ACCEPTED and (override_reason is not None or user_comment is not None):
            raise ValueError("an overrideReason belongs to an overridden outcome, not an accepted one")
        if outcome is FeedbackOutcome.OVERRIDDEN and accepted_suggestions:
            raise ValueError("acceptedSuggestions belong to an accepted outcome, not an overridden one")
        _require_aware("outcome_timestamp", outcome_timestamp)
        row = FeedbackRow(
            service_id=service_id,
            card_uuid=card_uuid,
            outcome=outcome.value,
            accepted_suggestions=list(accepted_suggestions),
            override_reason_system=None if override_reason is None else override_reason.system,
            override_reason_code=None if override_reason is None else override_reason.code,
            override_reason_display=None if override_reason is None else override_reason.display,
            user_comment=user_comment,
            outcome_timestamp=outcome_timestamp,
            client_iss=client_iss,
            client_sub=client_sub,
            received_at=self._now(),
            result_id=result_id,
        )
        try:
            with self._transaction(write=True, integrity_errors=True) as session:
                session.add(row)
                session.flush()
                return _stored_feedback(row)
        except IntegrityError as exc:
            raise ResultNotFound(
                f"feedback for Card {card_uuid} names result {result_id}, which the store does not hold: "
                "record it without result_id, or with the id that save_result returned"
            ) from exc

    def feedback_for(
        self,
        *,
        card_uuid: str | None = None,
        result_id: str | None = None,
        service_id: str | None = None,
        limit: int = 100,
    ) -> list[StoredFeedback]:
        """Feedback matching every criterion given (all of it when none is), newest first."""
        query = sa.select(FeedbackRow).order_by(FeedbackRow.id.desc()).limit(_positive(limit))
        if card_uuid is not None:
            query = query.where(FeedbackRow.card_uuid == card_uuid)
        if result_id is not None:
            query = query.where(FeedbackRow.result_id == result_id)
        if service_id is not None:
            query = query.where(FeedbackRow.service_id == service_id)
        with self._transaction(write=False) as session:
            return [_stored_feedback(row) for row in session.scalars(query)]

    # -- audit trail -----------------------------------------------------------------------

    def audit(
        self,
        action: AuditAction | str,
        actor: Actor,
        *,
        result_id: str | None = None,
        study_instance_uid: str | None = None,
        model_version: str | None = None,
        outcome: str | None = None,
        status_code: int | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> AuditEvent:
        """Append an event to the audit trail: who (``actor``) did what (``action``) to which
        result or study, with which model version, and how it ended (``outcome``, e.g. ``ok``,
        ``refused``, ``error``; ``status_code`` the HTTP status).

        ``detail`` is small JSON (at most ``MAX_AUDIT_DETAIL_BYTES``) for what the columns do
        not hold, e.g. the hook or the Card's indicator. Callers pass ids only: never patient
        names, birth dates or tokens.
        """
        row = self._audit_row(
            action,
            actor,
            result_id=result_id,
            study_instance_uid=study_instance_uid,
            model_version=model_version,
            outcome=outcome,
            status_code=status_code,
            detail=detail,
        )
        with self._transaction(write=True) as session:
            session.add(row)
            session.flush()
            return _audit_event(row)

    def _audit_row(
        self,
        action: AuditAction | str,
        actor: Actor,
        *,
        result_id: str | None = None,
        study_instance_uid: str | None = None,
        model_version: str | None = None,
        outcome: str | None = None,
        status_code: int | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> AuditEventRow:
        """The row of an audit event (see :meth:`audit`), for a transaction that writes it with the
        change it records."""
        return AuditEventRow(
            at=self._now(),
            actor_kind=actor.kind.value,
            actor_id=actor.id,
            action=AuditAction(action).value,
            result_id=result_id,
            study_instance_uid=study_instance_uid,
            model_version=model_version,
            outcome=outcome,
            status_code=status_code,
            detail=audit_detail(detail),
        )

    def audit_events(
        self,
        limit: int = 100,
        *,
        action: AuditAction | str | None = None,
        actor: Actor | None = None,
        result_id: str | None = None,
        study_instance_uid: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before_id: int | None = None,
    ) -> list[AuditEvent]:
        """Audit events matching every criterion given, newest first, at most ``limit``.

        ``actor`` matches its kind, and its id when that is set; ``since`` is inclusive and
        ``until`` exclusive; ``before_id`` pages back (pass the last id of the previous page).
        """
        query = sa.select(AuditEventRow).order_by(AuditEventRow.id.desc()).limit(_positive(limit))
        if action is not None:
            query = query.where(AuditEventRow.action == AuditAction(action).value)
        if actor is not None:
            query = query.where(AuditEventRow.actor_kind == actor.kind.value)
            if actor.id is not None:
                query = query.where(AuditEventRow.actor_id == actor.id)
        if result_id is not None:
            query = query.where(AuditEventRow.result_id == result_id)
        if study_instance_uid is not None:
            query = query.where(AuditEventRow.study_instance_uid == study_instance_uid)
        if since is not None:
            query = query.where(AuditEventRow.at >= since)
        if until is not None:
            query = query.where(AuditEventRow.at < until)
        if before_id is not None:
            query = query.where(AuditEventRow.id < before_id)
        with self._transaction(write=False) as session:
            return [_audit_event(row) for row in session.scalars(query)]

    # -- CDS Client JWT ids ----------------------------------------------------------------

    def use_jti(self, iss: str, jti: str, expires_at: datetime, *, now: datetime | None = None) -> bool:
        """Record that the JWT ``jti`` of issuer ``iss`` is used: ``True`` the first time, ``False``
        for a replay. Atomic across threads and processes (the insert of a primary key).

        Keep ``expires_at`` at the token's ``exp`` plus the leeway the validator allows: the id
        is forgotten after it. Expired ids are purged in the same transaction.
        """
        _require_aware("expires_at", expires_at)
        moment = self._now() if now is None else _require_aware("now", now)
        try:
            with self._transaction(write=True, integrity_errors=True) as session:
                session.execute(sa.delete(JtiRow).where(JtiRow.expires_at < moment))
                session.add(JtiRow(iss=iss, jti=jti, expires_at=expires_at))
                session.flush()
        except IntegrityError:
            logger.debug("replayed jti from issuer %s", iss)
            return False
        return True

    def purge_expired_jti(self, now: datetime | None = None) -> int:
        """Forget the ids that expired before ``now`` (default: the clock's now); how many."""
        moment = self._now() if now is None else _require_aware("now", now)
        with self._transaction(write=True) as session:
            deleted = session.execute(sa.delete(JtiRow).where(JtiRow.expires_at < moment))
            return int(getattr(deleted, "rowcount", 0))

    # -- transactions ----------------------------------------------------------------------

    def _now(self) -> datetime:
        return _require_aware("the store's clock", self._clock()).astimezone(UTC)

    @contextlib.contextmanager
    def _transaction(self, *, write: bool, integrity_errors: bool = False) -> Iterator[Session]:
        """One Session and one transaction, committed when the block ends without an error.

        Database errors become :class:`StoreError` (``StoreUnavailable`` for a lost connection
        or a lock held past the busy timeout); with ``integrity_errors`` an IntegrityError is
        raised as it is, for the caller to answer.
        """
        session = self._sessions()
        try:
            session.connection(execution_options={WRITE: write})
            yield session
            session.commit()
        except IntegrityError as exc:
            session.rollback()
            if integrity_errors:
                raise
            raise StoreError(f"the database {self._where} refused a write ({_reason(exc)})") from exc
        except OperationalError as exc:
            session.rollback()
            logger.warning("store at %s unavailable: %s", self._where, _reason(exc))
            raise StoreUnavailable(
                f"the database {self._where} did not answer, or stayed locked by another writer "
                f"({_reason(exc)}): retry, and check the server or the disk if it persists"
            ) from exc
        except SQLAlchemyError as exc:
            session.rollback()
            raise StoreError(f"the database {self._where} failed ({_reason(exc)})") from exc
        finally:
            session.close()


def audit_detail(detail: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """An audit event's ``detail`` as stored: ``None`` when empty; ``TypeError`` when it is not
    JSON, ``ValueError`` when over `MAX_AUDIT_DETAIL_BYTES`."""
    body = dict(detail or {})
    size = len(json.dumps(body, separators=(",", ":")).encode("utf-8"))
    if size > MAX_AUDIT_DETAIL_BYTES:
        raise ValueError(
            f"audit detail is {size} bytes of JSON, over {MAX_AUDIT_DETAIL_BYTES}: keep it small"
        )
    return body or None


def _same_model(model_sha256: str | None) -> sa.ColumnElement[bool]:
    if model_sha256 is None:
        return ResultRow.model_sha256.is_(None)
    return ResultRow.model_sha256 == model_sha256


def _require_aware(name: str, moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime (e.g. datetime.now(UTC))")
    return moment


def _positive(limit: int) -> int:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    return limit


def _reason(exc: SQLAlchemyError) -> str:
    """The driver's error class, without its message: that can quote values."""
    orig = getattr(exc, "orig", None)
    return type(orig).__name__ if orig is not None else type(exc).__name__


def _summary(result: CrossCheckResult) -> dict[str, Any]:
    """What an amendment's audit event keeps of a result: its flag, overall score, finding codes."""
    return {
        "flagged": result.flagged,
        "overall": result.scores.overall,
        "findings": sorted(f.code for f in result.findings),
    }


def _stored_result(row: ResultRow) -> StoredResult:
    return StoredResult(
        id=row.id,
        created_at=row.created_at,
        result=CrossCheckResult.from_json(row.result_json),
        source=ResultSource(row.source),
        inputs=dict(row.inputs or {}),
        input_fingerprint=row.input_fingerprint,
    )


def _stored_feedback(row: FeedbackRow) -> StoredFeedback:
    reason = (
        None
        if row.override_reason_code is None
        else OverrideReason(
            code=row.override_reason_code,
            system=row.override_reason_system,
            display=row.override_reason_display,
        )
    )
    return StoredFeedback(
        id=row.id,
        service_id=row.service_id,
        card_uuid=row.card_uuid,
        outcome=FeedbackOutcome(row.outcome),
        accepted_suggestions=tuple(row.accepted_suggestions),
        override_reason=reason,
        user_comment=row.user_comment,
        outcome_timestamp=row.outcome_timestamp,
        client_iss=row.client_iss,
        client_sub=row.client_sub,
        received_at=row.received_at,
        result_id=row.result_id,
    )


def _issued_card(row: CardRow) -> IssuedCard:
    return IssuedCard(
        card_uuid=row.card_uuid,
        service_id=row.service_id,
        hook_instance=row.hook_instance,
        result_id=row.result_id,
        kind=CardKind(row.kind),
        indicator=CardIndicator(row.indicator),
        created_at=row.created_at,
    )


def _audit_event(row: AuditEventRow) -> AuditEvent:
    return AuditEvent(
        id=row.id,
        at=row.at,
        actor=Actor(ActorKind(row.actor_kind), row.actor_id),
        action=row.action,
        result_id=row.result_id,
        study_instance_uid=row.study_instance_uid,
        model_version=row.model_version,
        outcome=row.outcome,
        status_code=row.status_code,
        detail=dict(row.detail or {}),
    )
