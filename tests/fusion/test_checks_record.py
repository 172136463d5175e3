"""record.resources-skipped: what the connectors could not read shows in the result."""

from __future__ import annotations

import dataclasses
from typing import Any

from fusion.checks import CHECKS, CheckContext, run_checks
from fusion.checks.record import check_record_problems


def test_no_finding_without_problems(cf: Any) -> None:
    case = cf.make_case("DX")
    assert check_record_problems(case, CheckContext()) == []


def test_skipped_resources_are_reported(cf: Any) -> None:
    case = cf.make_case("DX")
    assert case.record is not None
    record = dataclasses.replace(
        case.record, problems=("Observation/obs-7: status: not a code of its required value set",)
    )
    case = dataclasses.replace(case, record=record)
    (finding,) = check_record_problems(case, CheckContext())
    assert finding.code == "record.resources-skipped"
    assert finding.evidence[0].reference == "Observation/obs-7"
    assert "record.resources-skipped" in {f.code for f in run_checks(case)}
    assert "record.problems" in CHECKS
