"""The fraud investigators' review page, served by ``crosscheck serve`` at ``/review``.

`routes` (the pages, behind logins: `session`), `casefile` (what a case page shows),
`imaging` (DICOM frames as PNG at a window, the heatmap overlay).
"""

from plugin.review.routes import install_review

__all__ = ["install_review"]
