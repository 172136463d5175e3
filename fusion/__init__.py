"""The science: cross-checks, the fusion model, training and evaluation, the simulated cohort.

Subpackages and modules: `fusion.checks` (rule-based cross-checks), `fusion.features`,
`fusion.model` (towers, factory, bundles), `fusion.train`, `fusion.calibrate`,
`fusion.evaluate`, `fusion.scorer` (the one entry point that turns a ``Case`` into a
``CrossCheckResult``), `fusion.generators` (generative models of synthetic images) and
`fusion.cohort` (the simulated cohort). ``import fusion`` itself stays light: it loads
neither torch nor FastAPI.
"""

from fusion.result import CrossCheckResult, Evidence, Finding, Scores, Severity

__all__ = ["CrossCheckResult", "Evidence", "Finding", "Scores", "Severity"]
