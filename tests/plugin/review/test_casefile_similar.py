"""Similar images of a case from its result's duplicate findings (a sweep's index is not the service's)."""

from __future__ import annotations

from fusion.checks.duplicates import DuplicateMatch, duplicate_findings
from fusion.result import CaseRef, CrossCheckResult, ModelInfo, Scores
from plugin.review.casefile import SimilarImage, _duplicates_found


def test_the_duplicates_a_result_found_are_its_similar_images() -> None:
    matches = (
        DuplicateMatch("1.2.9", "p2", "1.2.9.1", 3, 1, False, 0.97),
        DuplicateMatch("1.2.8", "p1", "1.2.8.1", 5, 2, True, None),
    )
    result = CrossCheckResult(
        case=CaseRef("p1", "1.2.3", None),
        scores=Scores(consistency=0.9, synthetic=0.1, overall=0.99),
        flagged=True,
        threshold=0.5,
        findings=tuple(duplicate_findings("1.2.3", matches)),
        model=ModelInfo("m", "1", "0" * 64),
        timings_ms={},
    )
    assert _duplicates_found(result) == [
        SimilarImage("1.2.9", False, 3, 1, 0.97, None, "1.2.9.1"),
        SimilarImage("1.2.8", True, 5, 2, None, None, "1.2.8.1"),
    ]
