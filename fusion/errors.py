"""Errors raised by the fusion package.

Hierarchy::

    FusionError                the science side could not do what was asked
    ├── ModelBundleError       a model bundle that is missing, incomplete or corrupt
    ├── CaseNotScorable        a case without the pixels or headers a score needs
    └── TrainingDataError      training / evaluation data that cannot be used
"""

from __future__ import annotations

__all__ = ["CaseNotScorable", "FusionError", "ModelBundleError", "TrainingDataError"]


class FusionError(Exception):
    """Base class of every error the fusion package raises."""


class ModelBundleError(FusionError):
    """A model bundle that is missing, incomplete, or fails its checksum."""


class CaseNotScorable(FusionError):
    """A case without the pixels or headers needed to score it."""


class TrainingDataError(FusionError):
    """Training or evaluation data that cannot be used (empty, unlabelled ...)."""
