"""``crosscheck finetune`` fetching the labelled studies from a real PACS (Orthanc) and their records
from a real FHIR server (sekmet-fhir), and ``crosscheck sweep --study-uid`` on the same servers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from plugin.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture
def on_servers(server_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The session's servers in the CROSSCHECK_* variables, as a hospital's deployment sets them."""
    for key, value in server_env.items():
        monkeypatch.setenv(key, value)
    return server_env


def _labels(path: Path, entries: list[dict]) -> Path:
    path.write_text(json.dumps({"labels": entries}))
    return path


def test_labelled_studies_are_fetched_from_the_servers_with_their_records(
    loaded: Path, on_servers: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same labels fine-tune from the PACS as from the cohort's files: each study found, with its
    record (the FHIR server's), and a study the PACS does not hold counted as not found."""
    cases = json.loads((loaded / "manifest.json").read_text())["cases"]
    clean = next(c for c in cases if c["label"] == "clean")
    wrong = next(c for c in cases if c.get("manipulation") == "wrong-patient")
    labels = _labels(
        tmp_path / "labels.json",
        [
            {"study_instance_uid": clean["study_instance_uid"], "label": "clean"},
            {
                "study_instance_uid": wrong["study_instance_uid"],
                "label": "manipulated",
                "fabrication_kind": "wrong-patient",
            },
            {"study_instance_uid": "1.2.826.0.1.3680043.8.498.999999", "label": "clean"},
        ],
    )
    capsys.readouterr()
    out = tmp_path / "ft-servers"
    assert main(["finetune", "--labels", str(labels), "--out", str(out), "--epochs", "1", "-q"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"2 used, 0 skipped .*, 1 not found in the PACS at http://127\.0\.0\.1:\d+/dicom-web, "
                     r"0 unreadable, 0 without a record", printed), printed  # fmt: skip
    fine_tuned = json.loads((out / "config.json").read_text())["fine_tuned"]["labels"]
    assert (fine_tuned["used"], fine_tuned["not_found"], fine_tuned["without_record"]) == (2, 1, 0)
    # from the cohort's files, the same studies are found, with their records
    from_files = ["--studies", str(loaded), "--out", str(tmp_path / "ft-files"), "--epochs", "1", "-q"]
    assert main(["finetune", "--labels", str(labels), *from_files]) == 0
    assert "2 used, 0 skipped" in capsys.readouterr().out


def test_finetune_takes_a_folder_or_the_servers(
    loaded: Path, server_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    labels = _labels(tmp_path / "l.json", [{"study_instance_uid": "1.2.3", "label": "clean"}])
    for key in server_env:
        monkeypatch.delenv(key, raising=False)
    capsys.readouterr()
    assert main(["finetune", "--labels", str(labels), "--out", str(tmp_path / "o")]) == 2
    assert "give --studies FOLDER, or --dicomweb URL" in capsys.readouterr().err
    both = ["--studies", str(loaded), "--dicomweb", server_env["CROSSCHECK_DICOMWEB_URL"]]
    assert main(["finetune", "--labels", str(labels), "--out", str(tmp_path / "o"), *both]) == 2
    assert "not both" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_sweep_by_study_instance_uid_scores_those_studies(
    loaded: Path, on_servers: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uids = [c["study_instance_uid"] for c in json.loads((loaded / "manifest.json").read_text())["cases"][:3]]
    (tmp_path / "uids.txt").write_text(f"# a referral\n{uids[1]}\n{uids[2]}\n")
    capsys.readouterr()
    argv = ["sweep", "--study-uid", uids[0], "--study-uids-file", str(tmp_path / "uids.txt"),
            "--data-dir", str(tmp_path / "data"), "--workers", "1", "-q"]  # fmt: skip
    assert main(argv) == 0
    assert "3 scored and stored, 0 done before, 0 unreadable" in capsys.readouterr().out
