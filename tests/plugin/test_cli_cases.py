"""``crosscheck users`` and ``crosscheck labels``: against a database URL; bad input exits 2, one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fusion.result import CaseRef, CrossCheckResult, ModelInfo, Scores
from plugin.cli import main
from plugin.store import CaseQueue, Store, Users

PASSWORD = "correct horse battery"


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CROSSCHECK_NEW_PASSWORD", PASSWORD)
    for name in ("CROSSCHECK_DATABASE_URL", "CROSSCHECK_DATA_DIR", "CROSSCHECK_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return f"sqlite:///{tmp_path / 'crosscheck.db'}"


def _one_error_line(capsys: pytest.CaptureFixture[str], command: str, *needles: str) -> None:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"crosscheck {command}: error: ")
    for needle in needles:
        assert needle in lines[0]


def test_users_add_list_disable(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["users", "add", "Alice", "--display-name", "Alice A.", "--database-url", db]) == 0
    assert main(["users", "add", "root", "--admin", "--database-url", db]) == 0
    assert "added admin root" in capsys.readouterr().out
    assert main(["users", "list", "--database-url", db]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "alice\tinvestigator\tactive\tAlice A.",
        "root\tadmin\tactive\t",
    ]
    assert main(["users", "disable", "alice", "--database-url", db]) == 0
    with Store.open(db) as store:
        assert Users(store).verify_password("root", PASSWORD) is not None
        assert Users(store).verify_password("alice", PASSWORD) is None
        actions = [e.action for e in store.audit_events()]
    assert actions == ["user.disable", "user.create", "user.create"]
    assert PASSWORD not in capsys.readouterr().out


def test_users_bad_input_exits_2_with_one_line(
    db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["users", "add", "alice", "--database-url", db]) == 0
    capsys.readouterr()
    assert main(["users", "add", "ALICE", "--database-url", db]) == 2
    _one_error_line(capsys, "users", "'alice' is taken")
    assert main(["users", "add", "bad name", "--database-url", db]) == 2
    _one_error_line(capsys, "users", "user name")
    assert main(["users", "disable", "nobody", "--database-url", db]) == 2
    _one_error_line(capsys, "users", "no user 'nobody'")
    monkeypatch.setenv("CROSSCHECK_NEW_PASSWORD", "short")
    assert main(["users", "add", "bob", "--database-url", db]) == 2
    _one_error_line(capsys, "users", "12 characters")
    monkeypatch.delenv("CROSSCHECK_NEW_PASSWORD")
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["users", "add", "bob", "--database-url", db]) == 2
    _one_error_line(capsys, "users", "CROSSCHECK_NEW_PASSWORD")
    assert main(["users", "list", "--database-url", "mysql://host/db"]) == 2
    _one_error_line(capsys, "users", "SQLite or PostgreSQL")


def test_users_default_to_the_data_dir(tmp_path: Path, db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSSCHECK_DATA_DIR", str(tmp_path / "data"))
    assert main(["users", "add", "carol"]) == 0
    assert (tmp_path / "data" / "crosscheck.db").is_file()


def test_labels_export(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = CrossCheckResult(
        case=CaseRef("p1", "1.2.3", "ACC-1"),
        scores=Scores(0.2, 0.9, 0.85),
        flagged=True,
        threshold=0.5,
        findings=(),
        model=ModelInfo("fusion-default", "0.2.0", "a" * 64),
    )
    with Store.open(db) as store:
        Users(store).create_user("alice", PASSWORD)
        queue = CaseQueue(store)
        case = queue.open_case_for(store.save_result(result, source="sweep"))
        assert case is not None
        queue.update_case(
            case.id,
            actor="alice",
            expected_version=1,
            status="confirmed-fabricated",
            fabrication_kind="tampered",
            note="why",
        )
    out = tmp_path / "labels.json"
    assert main(["labels", "--database", db, "--out", str(out)]) == 0
    assert "wrote 1 labels" in capsys.readouterr().out
    (label,) = json.loads(out.read_text())["labels"]
    assert (label["study_instance_uid"], label["label"], label["fabrication_kind"], label["source"]) == (
        "1.2.3",
        "manipulated",
        "tampered",
        "disposition",
    )
    assert main(["labels", "--database", db, "--out", str(tmp_path / "missing" / "labels.json")]) == 2
    _one_error_line(capsys, "labels")


def test_users_unlock_lifts_a_lock_out(tmp_path: Path, db: str, capsys: pytest.CaptureFixture[str]) -> None:
    from plugin.review.session import load_secret
    from plugin.store import LoginThrottle

    data_dir = tmp_path / "data"
    with Store.open(db) as store:
        throttle = LoginThrottle(store, load_secret(data_dir))
        while throttle.attempt("alice", "192.0.2.7") is None:
            pass  # wrong passwords until the name is locked out
        assert throttle.attempt("alice", None) is not None
    assert main(["users", "unlock", "alice", "--database-url", db, "--data-dir", str(data_dir)]) == 0
    assert "unlocked alice" in capsys.readouterr().out
    with Store.open(db) as store:
        assert LoginThrottle(store, load_secret(data_dir)).attempt("alice", None) is None
        assert store.audit_events()[0].action == "user.unlock"
