"""The fraud investigators' review page, served by ``crosscheck serve`` at ``/review``.

`routes` (the pages, behind logins: `session`), `casefile` (what a case page shows),
`imaging` (DICOM frames as PNG at a window, the heatmap overlay), `timeline` (the record
timeline drawn from the result's record snapshot: inline SVG charts and the events around the
study), `report` (the case page as a self-contained HTML or PDF file: ``crosscheck report``).
"""

from plugin.review.routes import install_review

__all__ = ["install_review"]
