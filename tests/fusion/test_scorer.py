"""The Scorer: results valid against the schema, no-record and undecodable-pixel paths, findings."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import jsonschema
import pytest
import torch

import fusion.scorer as scorer_module
from fusion.calibrate import Calibration
from fusion.checks import finding_order, run_checks
from fusion.errors import ModelBundleError
from fusion.model import LoadedModel, create_model, load_bundle, save_bundle
from fusion.result import CrossCheckResult, Evidence, Finding, Severity, load_schema
from fusion.scorer import Scorer, with_check_findings


def _load_model_cases() -> ModuleType:
    name = "tests_fusion_model_cases"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("_model_cases.py"))
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


mc = _load_model_cases()
VALIDATOR = jsonschema.Draft202012Validator(load_schema())


def _bundle(tmp_path: Path, *, threshold: float = 0.5, contradict: float | None = None) -> LoadedModel:
    torch.manual_seed(0)
    model, _ = create_model("tiny")
    if contradict is not None:  # every record token contradicts the image strongly
        with torch.no_grad():
            last = model.token_head[-1]
            last.weight.zero_()
            last.bias.fill_(contradict)
    save_bundle(tmp_path / "bundle", model, Calibration(threshold=threshold), name="tiny-test", version="0")
    return load_bundle(tmp_path / "bundle", device="cpu")


def _valid(result: CrossCheckResult) -> None:
    errors = sorted(VALIDATOR.iter_errors(result.to_json()), key=str)
    assert not errors, [e.message for e in errors]
    back = CrossCheckResult.from_json(result.to_json())
    assert back.scores == result.scores and back.findings == result.findings


@pytest.mark.parametrize("modality", ["DX", "CT", "MR"])
def test_result_validates_against_schema(tmp_path: Path, modality: str) -> None:
    scorer = Scorer(_bundle(tmp_path), checks=False)
    result = scorer.score(mc.make_case(5, modality=modality, lesion=True, size=40))
    _valid(result)
    assert result.scores.consistency is not None and result.scores.synthetic is not None
    assert result.model is not None and result.model.sha256 == scorer.bundle.sha256
    assert set(result.timings_ms) == {"features", "model", "checks", "total"}
    assert result.timings_ms["total"] >= result.timings_ms["model"] > 0
    assert result.flagged == (result.scores.overall >= result.threshold)
    assert 0 < len(result.contributions) <= 5
    weights = [c["weight"] for c in result.contributions]
    assert weights == sorted(weights, reverse=True)


def test_results_with_the_rule_based_checks_validate(tmp_path: Path) -> None:
    scorer = Scorer(_bundle(tmp_path))  # runs fusion.checks when it is there
    _valid(scorer.score(mc.make_case(6, size=40)))


def test_no_record_scores_the_image_only(tmp_path: Path) -> None:
    result = Scorer(_bundle(tmp_path, threshold=0.0, contradict=3.0), checks=False).score(
        mc.make_case(7, with_record=False, size=40)
    )
    _valid(result)
    assert result.scores.consistency is None
    assert result.scores.synthetic is not None
    assert result.contributions == ()
    assert not any(f.code == "model.inconsistent" for f in result.findings)
    assert result.case.patient_id == "MRN7"  # the DICOM PatientID without a record


def test_undecodable_pixels_still_give_a_flagged_result(tmp_path: Path) -> None:
    result = Scorer(_bundle(tmp_path, threshold=0.7), checks=False).score(
        mc.make_case(8, undecodable=True, size=40)
    )
    _valid(result)
    assert result.scores.synthetic is None
    assert result.scores.consistency is None
    assert any(f.severity is Severity.CRITICAL for f in result.findings)
    assert result.flagged and result.scores.overall >= result.threshold


def test_inconsistent_finding_names_the_contradicting_items(tmp_path: Path) -> None:
    result = Scorer(_bundle(tmp_path, threshold=0.2, contradict=2.0), checks=False).score(
        mc.make_case(9, lesion=False, size=40)
    )
    _valid(result)
    finding = next(f for f in result.findings if f.code == "model.inconsistent")
    assert finding.severity is Severity.CRITICAL  # p(inconsistent) ~ 1 with every token contradicting
    assert "most contradicting items" in finding.message
    refs = {c["reference"] for c in result.contributions}
    assert any(r and r.startswith(("Observation/", "Condition/", "Patient/")) for r in refs)
    assert any(e.kind == "fhir" for e in finding.evidence)
    assert result.flagged and result.scores.consistency is not None and result.scores.consistency < 0.2


def test_score_many_matches_score(tmp_path: Path) -> None:
    scorer = Scorer(_bundle(tmp_path), checks=False)
    cases = [
        mc.make_case(i, modality=m, lesion=bool(i % 2), size=40)
        for i, m in enumerate(("DX", "CT", "MR", "DX"))
    ]
    many = scorer.score_many(cases, batch_size=3)
    assert [r.case.study_instance_uid for r in many] == [c.study_instance_uid for c in cases]
    for case, r in zip(cases, many, strict=True):
        one = scorer.score(case)
        assert one.scores.overall == pytest.approx(r.scores.overall, abs=1e-5)
        assert one.scores.consistency == pytest.approx(r.scores.consistency, abs=1e-5)


def test_missing_default_bundle_says_to_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scorer_module, "default_bundle_path", lambda: tmp_path / "absent")
    with pytest.raises(ModelBundleError, match="run `crosscheck train`"):
        Scorer()


def test_check_findings_replaced_where_run_checks_puts_them(tmp_path: Path) -> None:
    result = Scorer(_bundle(tmp_path, threshold=0.99), checks=True).score(mc.make_case(7, size=40))
    assert not result.flagged
    duplicate = Finding(
        "duplicate.other-patient",
        Severity.CRITICAL,
        "The image is the same as 1 image(s) filed under another patient.",
        (Evidence("dicom", "StudyInstanceUID", "1.2.3"),),
    )
    record = Finding("record.resources-skipped", Severity.WARNING, "A resource did not validate.", ())
    assert not any(f.code.startswith("model.") for f in result.findings)
    base = dataclasses.replace(result, findings=tuple(sorted([*result.findings, record], key=finding_order)))
    amended = with_check_findings(base, "duplicate", [duplicate])
    assert amended.flagged and amended.scores.overall >= amended.threshold
    codes = [f.code for f in amended.findings]
    assert codes.index("duplicate.other-patient") < codes.index("record.resources-skipped")
    assert sorted(amended.findings, key=finding_order) == list(amended.findings)
    assert with_check_findings(amended, "duplicate", [duplicate]) is amended  # nothing to change
    cleared = with_check_findings(amended, "duplicate", [])
    assert [f.code for f in cleared.findings] == [f.code for f in base.findings]
    assert cleared.scores.overall == pytest.approx(base.scores.overall)


def test_finding_order_is_the_order_of_run_checks() -> None:
    case = mc.make_case(8, size=40)
    findings = run_checks(case)
    assert list(findings) == sorted(findings, key=finding_order)
