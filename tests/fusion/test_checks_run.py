import logging
import re

import fusion.checks as checks
from fusion.checks import CHECKS, CheckContext, run_checks
from fusion.result import Finding, Severity

CODE = re.compile(r"^[a-z0-9]+(\.[a-z0-9-]+)+$")


def test_all_is_sorted_and_complete():
    assert checks.__all__ == sorted(checks.__all__)
    public = {n for n in vars(checks) if (not n.startswith("_") and n[0].isupper()) or n == "run_checks"}
    public -= {"Case", "Evidence", "Finding", "Mapping", "MappingProxyType", "Severity"}
    assert public <= set(checks.__all__)


def test_consistent_case_has_no_findings(cf):
    for modality in ("DX", "CT", "MR"):
        assert run_checks(cf.make_case(modality, n_instances=3), cf.ctx()) == ()


def test_findings_are_ordered_by_severity_and_codes_are_valid(cf):
    case = cf.with_dicom_patient(cf.make_case(), age="030Y", sex="M")  # warning + critical
    case = cf.with_equipment(case, serial_number="X")
    findings = run_checks(case, cf.ctx())
    ranks = [f.severity.rank for f in findings]
    assert ranks == sorted(ranks, reverse=True)
    assert {f.code for f in findings} >= {"identity.age-mismatch", "identity.sex-mismatch", "device.unknown"}
    assert all(CODE.match(f.code) for f in findings)


def test_a_failing_check_does_not_sink_the_others(cf, caplog):
    def broken(case, ctx):
        raise KeyError("MRN-12345")  # the message may hold PHI: it must not be logged

    def fine(case, ctx):
        return [Finding("test.fine", Severity.WARNING, "fine")]

    with caplog.at_level(logging.WARNING):
        findings = run_checks(cf.make_case(), CheckContext(), checks={"broken": broken, "fine": fine})
    assert [(f.code, f.severity) for f in findings] == [
        ("test.fine", Severity.WARNING),
        ("internal.check-failed", Severity.INFO),
    ]
    assert "broken" in findings[1].message
    assert "broken" in caplog.text and "MRN-12345" not in caplog.text


def test_registry_names_are_unique_functions():
    assert len(set(CHECKS.values())) == len(CHECKS)
    assert all(CODE.match(name) for name in CHECKS)


def test_default_context_runs(cf):
    assert run_checks(cf.make_case()) == ()
