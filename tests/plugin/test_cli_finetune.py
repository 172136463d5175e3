"""``crosscheck finetune``: labels file, label -> head targets, studies found by StudyInstanceUID, and a
fine-tune of the shipped model on the shared 8-patient cohort whose labels move its scores."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from connectors.domain import Case
from fusion.model.bundle import default_bundle_path, load_bundle
from fusion.result import CaseRef, CrossCheckResult, Scores
from fusion.scorer import Scorer
from plugin.cli import main
from plugin.cohort import load_cohort
from plugin.errors import LabelsFileInvalid
from plugin.finetune import (
    HEAD_TARGETS,
    find_studies,
    fine_tuned_version,
    head_targets,
    read_labels,
    targeted_case,
)
from plugin.store import CaseQueue, FabricationKind, LabelSource, Store, TrainingLabel, Users
from plugin.store.users import ScryptParams

#: The cohort's manipulated studies the shipped model flags, and the kind an investigator would record.
KINDS = {"synthetic": "synthetic", "finding-injected": "tampered", "wrong-patient": "wrong-patient"}


def _write(path: Path, labels: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"labels": labels}, indent=1))
    return path


def _flagged(cohort: Path) -> list[dict[str, Any]]:
    manifest = json.loads((cohort / "manifest.json").read_text())
    return [c for c in manifest["cases"] if c.get("manipulation") in KINDS]


def _cases(cohort: Path, uids: list[str]) -> list[Case]:
    return [lc.case for lc in load_cohort(cohort).iter_cases() if lc.case.study_instance_uid in uids]


def _scores(bundle: Path, cohort: Path, uids: list[str]) -> dict[str, float]:
    """The model-alone overall score of each study (no rule checks), as a sweep would store it."""
    results = Scorer(load_bundle(bundle, device="cpu"), checks=False).score_many(_cases(cohort, uids))
    return {r.case.study_instance_uid: r.scores.overall for r in results}


def _synthetic_logit(bundle: Path, cohort: Path, uid: str) -> float:
    """The synthetic head's logit for one study: it moves where the saturated probability does not."""
    loaded = load_bundle(bundle, device="cpu")
    with torch.no_grad():
        return float(loaded.model(loaded.preprocess.batch(_cases(cohort, [uid]))).synthetic_logit[0])


def _one_error_line(capsys: pytest.CaptureFixture[str], *needles: str) -> None:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("crosscheck finetune: error: ")
    for needle in needles:
        assert needle in lines[0]


# ----------------------------------------------------------------------------------- labels


def test_each_label_trains_the_heads_it_speaks_for() -> None:
    def label(value: str, kind: FabricationKind | None = None) -> TrainingLabel:
        return TrainingLabel("1.2.3", None, value, LabelSource.DISPOSITION, None, "r", kind)  # type: ignore[arg-type]

    assert head_targets(label("clean")) == (1.0, 0.0)
    assert head_targets(label("manipulated", FabricationKind.SYNTHETIC)) == (None, 1.0)
    assert head_targets(label("manipulated", FabricationKind.TAMPERED)) == (None, 1.0)
    assert head_targets(label("manipulated", FabricationKind.WRONG_PATIENT)) == (0.0, None)
    assert head_targets(label("manipulated", FabricationKind.OTHER)) is None
    assert head_targets(label("manipulated")) is None  # kind not said
    assert len(HEAD_TARGETS) == 4


def test_a_label_without_the_record_it_needs_trains_nothing(cohort: Path) -> None:
    (entry, *_) = _flagged(cohort)
    found = find_studies([entry["study_instance_uid"]], cohort)
    case = found.cases[entry["study_instance_uid"]]
    assert case.record is not None
    imageless = type(case)(study=case.study)  # the study alone, as a folder of DICOM without Bundles gives
    wrong = TrainingLabel(
        "x", None, "manipulated", LabelSource.DISPOSITION, None, "r", FabricationKind.WRONG_PATIENT
    )
    clean = TrainingLabel("x", None, "clean", LabelSource.CDS_FEEDBACK, None, "r")
    assert targeted_case(wrong, imageless) is None
    targeted = targeted_case(clean, imageless)
    assert targeted is not None and targeted.consistency_target is None and targeted.synthetic_target == 0.0
    with_record = targeted_case(wrong, case)
    assert with_record is not None and (with_record.consistency_target, with_record.label) == (
        0.0,
        "wrong-patient",
    )


def test_read_labels_refuses_what_is_not_a_labels_file(tmp_path: Path) -> None:
    with pytest.raises(LabelsFileInvalid, match=r"no labels file at .*crosscheck labels --out"):
        read_labels(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LabelsFileInvalid, match="is not JSON"):
        read_labels(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(LabelsFileInvalid, match=r'expected \{"labels"'):
        read_labels(tmp_path / "list.json")
    _write(tmp_path / "entry.json", [{"study_instance_uid": "1.2", "label": "clean"}, {"label": "clean"}])
    with pytest.raises(LabelsFileInvalid, match="label #2 is unusable: study_instance_uid"):
        read_labels(tmp_path / "entry.json")
    _write(tmp_path / "twice.json", [{"study_instance_uid": "1.2", "label": "clean"}] * 2)
    with pytest.raises(LabelsFileInvalid, match="label #2 labels a study labelled before"):
        read_labels(tmp_path / "twice.json")
    good = _write(tmp_path / "good.json", [{"study_instance_uid": "1.2", "label": "clean"}])
    read = read_labels(good)
    assert read.sha256 == hashlib.sha256(good.read_bytes()).hexdigest() and len(read.labels) == 1


def test_fine_tuned_version() -> None:
    assert fine_tuned_version("0.3.0", "1a2b3c4d" + "0" * 56) == "0.3.0+ft.1a2b3c4d"
    assert fine_tuned_version("0.3.0+ft.1a2b3c4d", "99" * 32) == "0.3.0+ft.1a2b3c4d.ft.99999999"


def test_studies_are_found_in_a_plain_folder_too(cohort: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"  # Bundles and DICOM without the manifest, as `crosscheck check` reads them
    shutil.copytree(cohort / "bundles", plain / "bundles")
    shutil.copytree(cohort / "dicom", plain / "dicom")
    uids = [e["study_instance_uid"] for e in _flagged(cohort)]
    found = find_studies([*uids, "1.2.3.4.5.6"], plain)
    assert sorted(found.cases) == sorted(uids) and found.missing == ("1.2.3.4.5.6",)
    assert all(case.record is not None for case in found.cases.values())


# ----------------------------------------------------------------------------------- the command


@pytest.mark.slow
def test_confirmed_genuine_labels_bring_the_flagged_studies_scores_down(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The shipped model flags the cohort's synthetic, finding-injected and wrong-patient studies.
    Labelled confirmed-genuine, fine-tuning on them (with the rest of the cohort as replay) brings
    their scores down; labelled with what was really done to them, the same run keeps them high:
    the labels, not the fine-tuning itself, move the scores."""
    flagged = _flagged(cohort)
    uids = [e["study_instance_uid"] for e in flagged]
    parent = _scores(default_bundle_path(), cohort, uids)
    threshold = load_bundle(default_bundle_path()).calibration.threshold
    assert all(score >= threshold for score in parent.values()), parent

    extra = [
        {"study_instance_uid": "1.2.826.0.1.3680043.8.498.999", "label": "clean"},  # not in the cohort
        {"study_instance_uid": uids[0] + ".9", "label": "manipulated", "fabrication_kind": "other"},
    ]
    genuine = _write(
        tmp_path / "genuine.json", [{"study_instance_uid": u, "label": "clean"} for u in uids] + extra
    )
    truth = _write(
        tmp_path / "truth.json",
        [
            {
                "study_instance_uid": e["study_instance_uid"],
                "label": "manipulated",
                "fabrication_kind": KINDS[k],
            }
            for e in flagged
            for k in [e["manipulation"]]
        ],
    )
    common = ["--studies", str(cohort), "--data", str(cohort), "--seed", "3", "-q"]
    with caplog.at_level(logging.DEBUG, logger="plugin.finetune"):
        assert main(["finetune", "--labels", str(genuine), "--out", str(tmp_path / "ft"), *common]) == 0
    out = capsys.readouterr().out
    assert "5 labels in" in out and "3 used, 1 skipped" in out and "1 not found in" in out
    assert "on 3 labelled studies and 9 replay cases" in out and "the parent's calibration kept" in out
    assert any(
        "1.2.826.0.1.3680043.8.498.999" in r.getMessage() and r.levelno == logging.DEBUG
        for r in caplog.records
    )
    assert not any(
        "1.2.826.0.1.3680043.8.498.999" in r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG
    )

    after = _scores(tmp_path / "ft", cohort, uids)
    assert all(after[u] <= parent[u] + 1e-3 for u in uids), (parent, after)
    assert sum(after.values()) / 3 < sum(parent.values()) / 3 - 0.3, (parent, after)
    # the two flagged through the consistency head are no longer flagged; the synthetic one, whose
    # synthetic head is sure (p 0.999), moves little in 5 small steps: a few labels do not wreck a head
    unflagged = [u for u in uids if after[u] < threshold]
    assert len(unflagged) >= 2, (threshold, after)

    assert main(["finetune", "--labels", str(truth), "--out", str(tmp_path / "truth"), *common]) == 0
    kept = _scores(tmp_path / "truth", cohort, uids)
    assert all(kept[u] > parent[u] - 0.02 for u in uids), (parent, kept)
    assert all(kept[u] > after[u] + 0.3 for u in unflagged), (kept, after)
    # the synthetic study: its clean label pushed the synthetic head down, its true label did not
    (synthetic,) = [e["study_instance_uid"] for e in flagged if e["manipulation"] == "synthetic"]
    logits = {b: _synthetic_logit(b, cohort, synthetic) for b in (default_bundle_path(), tmp_path / "ft")}
    truth_logit = _synthetic_logit(tmp_path / "truth", cohort, synthetic)
    assert logits[tmp_path / "ft"] < min(logits[default_bundle_path()] - 0.4, truth_logit - 0.3), (
        logits,
        truth_logit,
    )

    loaded = load_bundle(tmp_path / "ft")
    parent_bundle = load_bundle(default_bundle_path())
    digest = hashlib.sha256(genuine.read_bytes()).hexdigest()
    assert loaded.version == f"{parent_bundle.version}+ft.{digest[:8]}" and loaded.name == parent_bundle.name
    meta = json.loads((tmp_path / "ft" / "config.json").read_text())["fine_tuned"]
    assert meta["parent"]["sha256"] == parent_bundle.sha256
    labels_meta = meta["labels"]
    assert (labels_meta["sha256"], labels_meta["used"], labels_meta["not_found"], labels_meta["skipped"]) == (
        digest,
        3,
        1,
        1,
    )
    assert parent_bundle.sha256 in (tmp_path / "ft" / "MODEL_CARD.md").read_text()


def test_the_labels_file_of_crosscheck_labels_fine_tunes(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dispositions recorded in the queue -> ``crosscheck labels`` -> ``crosscheck finetune``."""
    for name in ("CROSSCHECK_DATABASE_URL", "CROSSCHECK_DATA_DIR", "CROSSCHECK_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    db = f"sqlite:///{tmp_path / 'crosscheck.db'}"
    wrong_patient, synthetic = (
        next(e for e in _flagged(cohort) if e["manipulation"] == kind)
        for kind in ("wrong-patient", "synthetic")
    )
    with Store.open(db) as store:
        Users(store, params=ScryptParams(n=2**4, r=1, p=1)).create_user("alice", "correct horse battery")
        queue = CaseQueue(store)
        for entry, status, kind in (
            (wrong_patient, "confirmed-fabricated", "wrong-patient"),
            (synthetic, "confirmed-genuine", None),
        ):
            result = CrossCheckResult(
                case=CaseRef(entry["patient_id"], entry["study_instance_uid"]),
                scores=Scores(0.1, 0.9, 0.95),
                flagged=True,
                threshold=0.5,
                findings=(),
                model=None,
            )
            case = queue.open_case_for(store.save_result(result, source="sweep"))
            assert case is not None
            queue.update_case(
                case.id,
                actor="alice",
                expected_version=1,
                status=status,
                fabrication_kind=kind,
                note="checked",
            )
    labels = tmp_path / "labels.json"
    assert main(["labels", "--database", db, "--out", str(labels)]) == 0
    out = tmp_path / "ft"
    assert (
        main(
            [
                "finetune",
                "--labels",
                str(labels),
                "--studies",
                str(cohort),
                "--out",
                str(out),
                "--epochs",
                "1",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "2 labels in" in printed and "2 used, 0 skipped" in printed
    assert "clean (1):" in printed and "wrong-patient (1):" in printed
    assert json.loads((out / "config.json").read_text())["fine_tuned"]["labels"]["used"] == 2


def test_finetune_errors_are_one_line_and_exit_2(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(labels: Path, *more: str) -> int:
        return main(
            [
                "finetune",
                "--labels",
                str(labels),
                "--studies",
                str(cohort),
                "--out",
                str(tmp_path / "o"),
                *more,
            ]
        )

    assert run(tmp_path / "missing.json") == 2
    _one_error_line(capsys, "no labels file at", "crosscheck labels --out")
    (tmp_path / "bad.json").write_text('{"labels": [')
    assert run(tmp_path / "bad.json") == 2
    _one_error_line(capsys, "is not JSON")
    assert run(_write(tmp_path / "empty.json", [])) == 2
    _one_error_line(capsys, "holds no labels")
    other = _write(tmp_path / "other.json", [{"study_instance_uid": "1.2", "label": "manipulated"}])
    assert run(other) == 2
    _one_error_line(capsys, "can train a head", "record the kind")
    elsewhere = _write(tmp_path / "elsewhere.json", [{"study_instance_uid": "1.2.3.4.5", "label": "clean"}])
    assert run(elsewhere) == 2
    _one_error_line(capsys, "none of the 1 labelled study is in", "StudyInstanceUID")
    assert not (tmp_path / "o").exists()
    assert run(elsewhere, "--epochs", "0") == 2
    _one_error_line(capsys, "--epochs")
    for bad in ("-1", "nan", "inf"):
        assert run(elsewhere, "--lr", bad) == 2
        _one_error_line(capsys, "--lr")


def test_crosscheck_train_with_labels_fine_tunes_as_finetune_does(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``crosscheck train --labels`` is `crosscheck finetune` with --data the replay cohort: the same
    labels, replay and calibration, and the same weights within float rounding (fine-tuning is
    seeded; BLAS may sum in another order between runs)."""
    flagged = _flagged(cohort)[:2]
    labels = _write(
        tmp_path / "l.json",
        [{"study_instance_uid": e["study_instance_uid"], "label": "clean"} for e in flagged],
    )
    common = ["--labels", str(labels), "--studies", str(cohort), "--data", str(cohort), "--epochs", "1"]
    assert main(["train", *common, "--out", str(tmp_path / "train")]) == 0
    assert main(["finetune", *common, "--out", str(tmp_path / "finetune")]) == 0
    printed = capsys.readouterr().out
    assert printed.count("2 used, 0 skipped") == 2
    configs = [json.loads((tmp_path / name / "config.json").read_text()) for name in ("train", "finetune")]
    assert configs[0]["fine_tuned"] == configs[1]["fine_tuned"]
    assert configs[0]["fine_tuned"]["labels"]["used"] == 2
    weights = [
        load_bundle(tmp_path / name, device="cpu").model.state_dict() for name in ("train", "finetune")
    ]
    for name, tensor in weights[0].items():
        torch.testing.assert_close(tensor, weights[1][name], rtol=1e-4, atol=1e-5)


def test_crosscheck_train_with_half_the_fine_tuning_options_is_one_line_and_exit_2(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for more, needle in (
        (["--labels", str(tmp_path / "l.json")], "give both --labels and --studies"),
        (["--studies", str(cohort)], "give both --labels and --studies"),
        (["--model", str(default_bundle_path())], "give it with --labels and --studies"),
        (["--labels", "l.json", "--studies", str(cohort), "--resume"], "from scratch"),
    ):
        assert main(["train", "--data", str(cohort), "--out", str(tmp_path / "o"), *more]) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("crosscheck train: error: ") and needle in lines[0], (
            lines
        )
    assert not (tmp_path / "o").exists()
