"""The duplicate check of a sweep: every study ends with the findings of the whole sweep's index,
whatever the order, the batches, or the runs its studies were scored in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from fusion.cohort.simulate import simulate
from plugin.cli import main
from plugin.store import AuditAction, CaseQueue, ImageArchive, Store
from plugin.store.models import ImageFingerprintRow
from plugin.sweep import run_sweep, units_from_folder
from plugin.sweep.local import LocalEngine


@pytest.fixture(scope="module")
def refiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cohort where images are filed again under other patients (wrong-patient cases)."""
    out = tmp_path_factory.mktemp("dup") / "cohort"
    simulate(out, 6, 5, manipulated_rate=0.5, kinds=["wrong-patient"], workers=1, progress=False)
    return out


def _check(cohort: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, list[str]]:
    capsys.readouterr()
    args = ["check", "--bundle", str(cohort / "bundles"), "--dicom", str(cohort / "dicom")]
    assert main([*args, "--site", str(cohort / "site.json"), "--format", "json"]) == 0
    codes = {}
    for line in capsys.readouterr().out.splitlines():
        r = json.loads(line)
        codes[r["case"]["study_instance_uid"]] = [f["code"] for f in r["findings"]]
    return codes


def _swept(store: Store, sha256: str, fingerprints: list[str]) -> dict[str, tuple[list[str], bool]]:
    return {
        s.result.case.study_instance_uid: ([f.code for f in s.result.findings], s.result.flagged)
        for s in store.swept_results(sha256, fingerprints)
    }


@pytest.mark.parametrize("split", [None, 3], ids=["one-run", "resumed"])
def test_every_study_gets_the_duplicates_of_the_whole_sweep(
    refiled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], split: int | None
) -> None:
    expected = _check(refiled, capsys)
    doubled = {uid for uid, codes in expected.items() if "duplicate.other-patient" in codes}
    assert len(doubled) >= 2  # an image and its copy under another patient: the test needs one
    found = units_from_folder(refiled)
    units = list(found.units)
    with Store.open(tmp_path / "s.db") as store:
        # one study a batch and one reader: the first of a pair is stored before its copy is read
        kwargs = {"store": store, "description": "t", "site": found.site, "workers": 1, "batch_size": 1}
        if split is not None:  # a first run that stopped after a few studies
            run_sweep(units[:split], progress=False, **kwargs)  # type: ignore[arg-type]
        report = run_sweep(units, progress=False, **kwargs)  # type: ignore[arg-type]
        assert report.failed == 0
        swept = _swept(store, report.model.sha256, [u.fingerprint for u in units])
        assert {uid: codes for uid, (codes, _) in swept.items()} == expected
        flagged = {uid for uid, (_, flag) in swept.items() if flag}
        assert doubled <= flagged
        cases = {c.study_instance_uid for c in CaseQueue(store).cases(limit=100)}
        assert cases == flagged  # a study flagged by an amendment is in the queue too
        # each amendment is audited with what the result was before: the earlier of each pair
        amends = [e for e in store.audit_events(limit=500) if e.action == AuditAction.RESULT_AMEND]
        assert amends and {e.study_instance_uid for e in amends} <= doubled
        for e in amends:
            assert e.actor.id == "sweep" and e.detail is not None
            assert set(e.detail["after"]["findings"]) - set(e.detail["before"]["findings"]) <= {
                "duplicate.other-patient",
                "duplicate.same-patient",
            }
        newest = {}
        for e in amends:  # newest first
            newest.setdefault(e.study_instance_uid, e)
        for uid, e in newest.items():  # the last amendment left the result as it is stored
            assert e.detail is not None and e.detail["after"]["findings"] == sorted(swept[uid][0])
            assert e.detail["after"]["flagged"] == swept[uid][1]


def test_a_resumed_sweep_reads_the_fingerprints_it_kept_instead_of_the_studies(
    refiled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each batch keeps its fingerprints in the image archive; the next run indexes the studies done
    before from there, hashing again only one whose fingerprint is missing (a pre-0008 database)."""
    expected = _check(refiled, capsys)
    found = units_from_folder(refiled)
    units = list(found.units)
    hashed: list[str] = []
    fingerprints = LocalEngine.fingerprints

    def counted(self: LocalEngine, todo: list) -> object:
        hashed.extend(u.fingerprint for u in todo)
        return fingerprints(self, todo)

    monkeypatch.setattr(LocalEngine, "fingerprints", counted)
    with Store.open(tmp_path / "s.db") as store:
        kwargs = {"store": store, "description": "t", "site": found.site, "workers": 1, "batch_size": 2}
        run_sweep(units[:4], progress=False, **kwargs)  # type: ignore[arg-type]
        archive = ImageArchive(store)
        kept = archive.for_inputs([u.fingerprint for u in units])
        assert set(kept) == {u.fingerprint for u in units[:4]}
        assert {key for key, _ in kept.values()} == {u.patient_id for u in units[:4]}
        with store._transaction(write=True) as session:  # as if the first study were swept before 0008
            session.execute(
                sa.delete(ImageFingerprintRow).where(
                    ImageFingerprintRow.input_fingerprint == units[0].fingerprint
                )
            )
        report = run_sweep(units, progress=False, **kwargs)  # type: ignore[arg-type]
        assert hashed == [units[0].fingerprint]
        swept = _swept(store, report.model.sha256, [u.fingerprint for u in units])
        assert {uid: codes for uid, (codes, _) in swept.items()} == expected
        assert set(archive.for_inputs([u.fingerprint for u in units])) == {u.fingerprint for u in units}
