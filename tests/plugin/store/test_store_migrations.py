"""The schema: migrations from empty, models and migrations agreeing, revisions refused or upgraded."""

from __future__ import annotations

import io
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from imagehash import ImageHash

from fusion.checks.duplicates import ImageFingerprint
from plugin.errors import MigrationFailed, SchemaOutOfDate, SchemaTooNew, StoreError
from plugin.store import (
    Actor,
    ActorKind,
    AuditAction,
    CardKind,
    ImageArchive,
    IssuedCard,
    LoginThrottle,
    ResultSource,
    Store,
    Timeline,
    TimelineEntry,
)
from plugin.store.ddl import append_only_triggers
from plugin.store.engine import create_store_engine, database_url
from plugin.store.migrate import alembic_config, current_revisions, head_revisions
from plugin.store.models import Base

CASE_TABLES = {"cases", "case_events", "case_comments", "users"}
SWEEP_TABLES = {"sweeps", "sweep_results"}
SNAPSHOT_TABLES = {"record_snapshots"}
THROTTLE_TABLES = {"login_throttle"}
ARCHIVE_TABLES = {"image_fingerprints"}
TABLES = (
    {"results", "cds_feedback", "audit_events", "cds_jti", "cds_cards"}
    | CASE_TABLES
    | SWEEP_TABLES
    | SNAPSHOT_TABLES
    | THROTTLE_TABLES
    | ARCHIVE_TABLES
)
LATER_THAN_0001 = (
    {"cds_cards"} | CASE_TABLES | SWEEP_TABLES | SNAPSHOT_TABLES | THROTTLE_TABLES | ARCHIVE_TABLES
)


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _revision(path: Path) -> str:
    with sqlite3.connect(path) as db:
        return str(db.execute("SELECT version_num FROM alembic_version").fetchone()[0])


def test_open_upgrades_an_empty_database_to_the_head(db_path: Path) -> None:
    assert not db_path.exists()
    Store.open(db_path).close()
    assert TABLES | {"alembic_version"} <= _tables(db_path)
    assert (_revision(db_path),) == head_revisions()


def test_models_match_the_migrations(db_path: Path) -> None:
    """What ``alembic check`` does: autogenerate finds nothing to add, drop or alter."""
    Store.open(db_path).close()
    engine = create_store_engine(database_url(db_path))
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_a_model_change_without_a_migration_is_seen(db_path: Path) -> None:
    """The comparison above can fail: a column the migrations lack shows up in the diff."""
    Store.open(db_path).close()
    metadata = sa.MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(metadata)
    sa.Table("results", metadata, sa.Column("case_rank", sa.Integer), extend_existing=True)
    engine = create_store_engine(database_url(db_path))
    try:
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), metadata)
    finally:
        engine.dispose()
    assert [(op[0], op[3].name) for op in diff] == [("add_column", "case_rank")]


def test_opening_twice_leaves_the_revision_alone(db_path: Path) -> None:
    Store.open(db_path).close()
    Store.open(db_path).close()
    with Store.open(db_path, migrate=False):
        pass
    assert (_revision(db_path),) == head_revisions()


def test_downgrade_to_base_and_up_again(db_path: Path) -> None:
    Store.open(db_path).close()
    config = alembic_config(db_path)
    command.downgrade(config, "base")
    assert not (_tables(db_path) & TABLES)
    command.upgrade(config, "head")
    assert TABLES <= _tables(db_path)
    assert (_revision(db_path),) == head_revisions()


def test_0002_down_drops_cds_cards_only_and_up_again(db_path: Path) -> None:
    Store.open(db_path).close()
    config = alembic_config(db_path)
    command.downgrade(config, "0001")
    assert _tables(db_path) & TABLES == TABLES - LATER_THAN_0001
    assert _revision(db_path) == "0001"
    command.upgrade(config, "0002")
    assert (
        TABLES - CASE_TABLES - SWEEP_TABLES - SNAPSHOT_TABLES - THROTTLE_TABLES - ARCHIVE_TABLES
        <= _tables(db_path)
    )
    assert _revision(db_path) == "0002"


def _triggers(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}


def test_0004_down_drops_the_sweep_tables_only_and_up_again(db_path: Path) -> None:
    Store.open(db_path).close()
    config = alembic_config(db_path)
    command.downgrade(config, "0003")
    assert (
        _tables(db_path) & TABLES
        == TABLES - SWEEP_TABLES - SNAPSHOT_TABLES - THROTTLE_TABLES - ARCHIVE_TABLES
    )
    assert _revision(db_path) == "0003"
    command.upgrade(config, "0004")
    assert TABLES - SNAPSHOT_TABLES - THROTTLE_TABLES - ARCHIVE_TABLES <= _tables(db_path)


def test_0005_down_drops_the_record_snapshots_only_and_up_again(db_path: Path, make_result) -> None:
    """A database of 0004 with results upgrades to 0005; they are kept, without snapshots, and a
    snapshot can be kept for one of them afterwards."""
    with Store.open(db_path) as store:
        kept = store.save_result(make_result(), source="cds", timeline=_snapshot())
    config = alembic_config(db_path)
    command.downgrade(config, "0004")
    assert _tables(db_path) & TABLES == TABLES - SNAPSHOT_TABLES - THROTTLE_TABLES - ARCHIVE_TABLES
    assert _revision(db_path) == "0004"
    with Store.open(db_path) as store:  # upgrades to the head again
        assert SNAPSHOT_TABLES <= _tables(db_path)
        assert store.get_result(kept.id) == kept
        assert store.timeline(kept.id) is None  # dropped with its table
        store.save_timeline(kept.id, _snapshot())
        assert store.timeline(kept.id) == _snapshot()


def test_0007_down_drops_the_login_throttle_only_and_up_again(db_path: Path) -> None:
    """A lock-out recorded at the head; down to 0006 the table goes (the rest stays), up again it is
    back, empty, and counts anew."""
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    with Store.open(db_path) as store:
        throttle = LoginThrottle(store, bytes(32))
        for _ in range(5):
            assert throttle.attempt("alice", "192.0.2.1", now=now) is None
        assert throttle.attempt("alice", "192.0.2.1", now=now) is not None
        event = store.audit(AuditAction.USER_LOGIN_THROTTLED, Actor(ActorKind.ANONYMOUS), status_code=429)
    assert "ix_login_throttle_updated_at" in _indexes(db_path)
    config = alembic_config(db_path)
    command.downgrade(config, "0006")
    assert _tables(db_path) & TABLES == TABLES - THROTTLE_TABLES - ARCHIVE_TABLES
    assert "ix_login_throttle_updated_at" not in _indexes(db_path)
    assert _revision(db_path) == "0006"
    with Store.open(db_path) as store:  # upgrades to the head again
        assert THROTTLE_TABLES <= _tables(db_path)
        assert store.audit_events() == [event]
        throttle = LoginThrottle(store, bytes(32))
        assert throttle.attempt("alice", "192.0.2.1", now=now) is None  # the lock-out went with the table


def test_0008_down_drops_the_image_archive_only_and_up_again(db_path: Path, make_result) -> None:
    """Fingerprints kept at the head; down to 0007 the archive goes (results stay), up again it is
    back, empty, and keeps anew."""
    with Store.open(db_path) as store:
        kept = store.save_result(make_result(), source="cds")
        ImageArchive(store).keep([("pat-1", _fingerprint())], source=ResultSource.CDS)
        assert len(ImageArchive(store).index()) == 1
    assert "ix_image_fingerprints_recorded_at" in _indexes(db_path)
    config = alembic_config(db_path)
    command.downgrade(config, "0007")
    assert _tables(db_path) & TABLES == TABLES - ARCHIVE_TABLES
    assert "ix_image_fingerprints_input_fingerprint" not in _indexes(db_path)
    with Store.open(db_path) as store:  # upgrades to the head again
        assert ARCHIVE_TABLES <= _tables(db_path)
        assert store.get_result(kept.id) == kept
        assert len(ImageArchive(store).index()) == 0
        ImageArchive(store).keep([("pat-1", _fingerprint())], source=ResultSource.CDS)
        assert len(ImageArchive(store).index()) == 1


def _fingerprint() -> ImageFingerprint:
    bits = np.random.default_rng(0).random((2, 16, 16)) < 0.5
    return ImageFingerprint("1.2.3.4", "1.2.3.4.1", ImageHash(bits[0]), ImageHash(bits[1][:8, :8]))


def _indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


def _snapshot() -> Timeline:
    entry = TimelineEntry("lab", "Observation/obs-1", "Hemoglobin", value=12.0, low=13.5, high=17.5)
    return Timeline("1.2.826.0.1.3680043.8.498.1", "pat-1", None, (entry,))


def test_0003_down_drops_the_case_queue_only_and_up_again(db_path: Path, make_result) -> None:
    with Store.open(db_path) as store:
        kept = store.save_result(make_result(), source="sweep")
    assert {"case_events_no_update", "case_comments_no_delete"} <= _triggers(db_path)
    config = alembic_config(db_path)
    command.downgrade(config, "0002")
    assert (
        _tables(db_path) & TABLES
        == TABLES - CASE_TABLES - SWEEP_TABLES - SNAPSHOT_TABLES - THROTTLE_TABLES - ARCHIVE_TABLES
    )
    assert _triggers(db_path) == {"audit_events_no_update", "audit_events_no_delete"}
    assert _revision(db_path) == "0002"
    command.upgrade(config, "head")
    assert TABLES <= _tables(db_path)
    assert {"case_events_no_update", "case_events_no_delete", "case_comments_no_update"} <= _triggers(db_path)
    with Store.open(db_path, migrate=False) as store:
        assert store.get_result(kept.id) == kept


def test_a_database_at_0001_with_data_upgrades_to_0002_keeping_its_rows(db_path: Path, make_result) -> None:
    """A database written by the previous version: its results, feedback and audit trail survive,
    and an old result can be named by a Card after the upgrade."""
    command.upgrade(alembic_config(db_path), "0001")
    engine = create_store_engine(database_url(db_path))
    old = Store(engine)  # the tables of 0001 are all an old Store wrote to
    try:
        result = old.save_result(make_result(), source="ingest", inputs={"study": "1.2.3"})
        feedback = old.record_feedback(
            service_id="s",
            card_uuid="card-before-0002",
            outcome="overridden",
            outcome_timestamp=result.created_at,
            result_id=result.id,
        )
        event = old.audit(AuditAction.RESULT_CREATE, Actor(ActorKind.SYSTEM), result_id=result.id)
    finally:
        old.close()
    assert _revision(db_path) == "0001"
    assert "cds_cards" not in _tables(db_path)

    with Store.open(db_path) as store:
        assert (_revision(db_path),) == head_revisions()  # 0002 and every later revision
        assert store.get_result(result.id) == result
        assert store.feedback_for() == [feedback]
        assert store.audit_events() == [event]
        store.record_cards([IssuedCard("card-after-0002", "s", None, result.id, CardKind.FLAG, "warning")])
        card = store.card("card-after-0002")
        assert card is not None and card.result_id == result.id


def test_a_database_from_a_newer_version_is_refused(db_path: Path) -> None:
    Store.open(db_path).close()
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE alembic_version SET version_num = '0099'")
    for migrate in (True, False):
        with pytest.raises(SchemaTooNew, match=r"revision 0099.*newer version; upgrade imaging-crosscheck"):
            Store.open(db_path, migrate=migrate)
    assert _revision(db_path) == "0099"  # not touched


def test_without_migrate_an_old_database_is_refused(db_path: Path) -> None:
    with pytest.raises(SchemaOutOfDate, match="migrate=True"):
        Store.open(db_path, migrate=False)
    assert not (_tables(db_path) & TABLES)


def test_a_failed_migration_is_rolled_back(db_path: Path) -> None:
    """A file that already has a ``results`` table of its own: the upgrade fails as a whole."""
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE TABLE results (something TEXT)")
    with pytest.raises(MigrationFailed, match="left at none") as info:
        Store.open(db_path)
    assert isinstance(info.value, StoreError)
    assert _tables(db_path) == {"results"}  # no alembic_version, no half-made tables


def test_current_revisions_of_an_empty_database(db_path: Path) -> None:
    engine = create_store_engine(database_url(db_path))
    try:
        with engine.connect() as connection:
            assert current_revisions(connection) == ()
    finally:
        engine.dispose()


def test_postgresql_sql_is_rendered_offline() -> None:
    """The migrations as PostgreSQL SQL (what a DBA would apply), without a server or a driver."""
    config = alembic_config("postgresql+psycopg://crosscheck@db.example/crosscheck")
    config.output_buffer = io.StringIO()
    command.upgrade(config, "head", sql=True)
    sql = config.output_buffer.getvalue()
    assert "JSONB" in sql
    assert "TIMESTAMP WITH TIME ZONE" in sql
    for table in ("audit_events", "case_events", "case_comments"):
        for statement in append_only_triggers(table, "postgresql"):
            assert statement in sql
    assert "INSERT INTO alembic_version (version_num) VALUES ('0001')" in sql
    assert "CONSTRAINT fk_cds_cards_result_id_results FOREIGN KEY(result_id) REFERENCES results (id)" in sql
    assert "UPDATE alembic_version SET version_num='0002' WHERE alembic_version.version_num = '0001'" in sql
    assert "UPDATE alembic_version SET version_num='0003' WHERE alembic_version.version_num = '0002'" in sql
    assert "UPDATE alembic_version SET version_num='0004' WHERE alembic_version.version_num = '0003'" in sql
    assert "UPDATE alembic_version SET version_num='0005' WHERE alembic_version.version_num = '0004'" in sql
    assert "UPDATE alembic_version SET version_num='0006' WHERE alembic_version.version_num = '0005'" in sql
    assert "UPDATE alembic_version SET version_num='0007' WHERE alembic_version.version_num = '0006'" in sql
    assert "CREATE TABLE login_throttle" in sql
    assert "UPDATE alembic_version SET version_num='0008' WHERE alembic_version.version_num = '0007'" in sql
    assert "CONSTRAINT pk_image_fingerprints PRIMARY KEY (patient_key, study_instance_uid)" in sql
    assert "phash BYTEA NOT NULL" in sql
    assert "CONSTRAINT pk_login_throttle PRIMARY KEY (kind, key_hash)" in sql
    assert "CREATE INDEX ix_login_throttle_updated_at ON login_throttle (updated_at)" in sql
    assert (
        "CONSTRAINT fk_record_snapshots_result_id_results FOREIGN KEY(result_id) REFERENCES results (id)"
        in sql
    )


def test_append_only_triggers_exist_for_the_two_dialects_only() -> None:
    assert len(append_only_triggers("audit_events", "sqlite")) == 2
    with pytest.raises(ValueError, match="mysql"):
        append_only_triggers("audit_events", "mysql")


def test_concurrent_opens_of_an_empty_database_migrate_once(db_path: Path) -> None:
    """Four workers starting at once on a new file: one upgrades, the others wait and find it done."""
    barrier = threading.Barrier(4)

    def open_close(_: int) -> None:
        barrier.wait()
        Store.open(db_path).close()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(open_close, range(4)))
    assert (_revision(db_path),) == head_revisions()
