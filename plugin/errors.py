"""Errors of the plugin layer.

    PluginError
     +-- UsageError        a command line that cannot work

Each area of the plugin (CDS Hooks, write-back, the store) adds its own branch below
``PluginError``; the service maps the branches to HTTP answers in one exception handler.
"""

from __future__ import annotations

__all__ = ["PluginError", "UsageError"]


class PluginError(Exception):
    """Base of the plugin layer's errors."""


class UsageError(PluginError):
    """A command line that cannot work (a missing, out-of-range or contradictory option)."""
