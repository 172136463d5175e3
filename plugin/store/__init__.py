"""The plugin's database: results (each with the record snapshot it was scored against: a
:class:`Timeline`), the CDS Hooks Cards issued and their feedback, the audit trail, and the used
CDS Client JWT ids (``jti``).

SQLite file by default, PostgreSQL by URL (``postgresql+psycopg://user@host/db``, with
``pip install 'imaging-crosscheck[postgresql]'``); the schema is migrated with Alembic
from code when the store opens::

    with Store.open("crosscheck.db") as store:
        stored = store.save_result(result, source="cds", timeline=Timeline.from_case(case))
        store.audit(AuditAction.RESULT_CREATE, Actor(ActorKind.CDS_CLIENT, iss), result_id=stored.id)

A :class:`Store` is safe to share between threads; :class:`StoreReplayCache` gives the CDS
Hooks authentication an async ``use(iss, jti, expires_at)``. The investigators' case queue
(:class:`CaseQueue`, :mod:`plugin.store.cases`), their logins (:class:`Users`,
:mod:`plugin.store.users`), the throttle of failed logins (:class:`LoginThrottle`,
:mod:`plugin.store.throttle`) and the archive of image fingerprints the duplicate check searches
(:class:`ImageArchive`, :mod:`plugin.store.archive`) work on a Store::

    queue, users, throttle = CaseQueue(store), Users(store), LoginThrottle(store, secret)
    index = ImageArchive(store).index()
"""

from plugin.store.archive import ImageArchive
from plugin.store.cases import (
    Case,
    CaseComment,
    CaseEvent,
    CaseOrder,
    CaseQueue,
    CaseStatus,
    FabricationKind,
    HistoryEntry,
    LabelSource,
    TrainingLabel,
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
from plugin.store.replay import StoreReplayCache
from plugin.store.snapshots import EntryKind, Timeline, TimelineEntry
from plugin.store.store import MAX_AUDIT_DETAIL_BYTES, Store
from plugin.store.throttle import LoginLock, LoginThrottle, ThrottleKey, ThrottleKind, ThrottlePolicy
from plugin.store.users import User, UserRole, Users

__all__ = [
    "MAX_AUDIT_DETAIL_BYTES",
    "Actor",
    "ActorKind",
    "AuditAction",
    "AuditEvent",
    "CardIndicator",
    "CardKind",
    "Case",
    "CaseComment",
    "CaseEvent",
    "CaseOrder",
    "CaseQueue",
    "CaseStatus",
    "EntryKind",
    "FabricationKind",
    "FeedbackOutcome",
    "HistoryEntry",
    "ImageArchive",
    "IssuedCard",
    "LabelSource",
    "LoginLock",
    "LoginThrottle",
    "OverrideReason",
    "ResultSource",
    "Store",
    "StoreReplayCache",
    "StoredFeedback",
    "StoredResult",
    "ThrottleKey",
    "ThrottleKind",
    "ThrottlePolicy",
    "Timeline",
    "TimelineEntry",
    "TrainingLabel",
    "User",
    "UserRole",
    "Users",
    "input_fingerprint",
]
