"""Errors of the plugin layer."""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(Exception):
    """A command line that cannot work (a missing, out-of-range or contradictory option)."""
