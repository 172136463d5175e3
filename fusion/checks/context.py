"""``CheckContext``: what the cross-checks know beyond the case itself.

The site profile (its UID roots and devices), an index of perceptual hashes of
studies already seen, the current time, and the tolerances the checks apply.
Everything is explicit: checks never read the environment or the clock, so the
same case and context always give the same findings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from connectors.domain import Case, SiteProfile
from fusion.result import Finding

if TYPE_CHECKING:
    from fusion.checks.duplicates import PerceptualHashIndex

__all__ = ["Check", "CheckContext"]


@dataclass(frozen=True)
class CheckContext:
    """Site knowledge and tolerances shared by every check.

    ``site``: without it the device and UID-root checks are skipped.
    ``hash_index``: without it the duplicate check is skipped.
    ``now``: without it the "study in the future" check is skipped.
    """

    site: SiteProfile | None = None
    hash_index: PerceptualHashIndex | None = None
    now: datetime | None = None
    age_tolerance_years: float = 1.0
    order_tolerance: timedelta = timedelta(hours=1)  # study may start this long before authoredOn
    report_tolerance: timedelta = timedelta(hours=1)  # ... and this long after the report was issued
    future_tolerance: timedelta = timedelta(days=1)  # clock skew / time zones
    acquisition_tolerance: timedelta = timedelta(days=1)  # acquisition vs the study day
    pixel_instances_per_series: int = 3  # first, middle, last
    ct_outlier_fraction: float = 0.005  # CT pixels outside [-1100, 4000] HU beyond padding


Check = Callable[[Case, CheckContext], list[Finding]]
"""The signature every check function has."""
