"""Errors of the plugin layer.

    PluginError
     +-- UsageError            a command line that cannot work
     +-- WriteBackError        a result could not be written back to the FHIR server or the PACS
          +-- UnsuitableResult     the result or the arguments cannot be written as asked
          |                        (bad result data: fix the caller, not the write-back)
          +-- InvalidWriteBack     what the write-back built does not validate
                                   (a bug in imaging-crosscheck: report it)

Each area of the plugin (CDS Hooks, write-back, the store) adds its own branch below
``PluginError``; the service maps the branches to HTTP answers in one exception handler.
Refusals by the servers themselves are the connectors' ``ServerError`` hierarchy, not these.
"""

from __future__ import annotations

__all__ = ["InvalidWriteBack", "PluginError", "UnsuitableResult", "UsageError", "WriteBackError"]


class PluginError(Exception):
    """Base of the plugin layer's errors."""


class UsageError(PluginError):
    """A command line that cannot work (a missing, out-of-range or contradictory option)."""


class WriteBackError(PluginError):
    """A ``CrossCheckResult`` could not be written back as a FHIR resource or a DICOM SR."""


class UnsuitableResult(WriteBackError):
    """The result or the arguments given with it cannot be written as asked: bad result data.

    For example a ``DetectedIssue`` asked for a study that was not flagged, a result
    without the model that made it, a reference that is not ``Patient/[id]``, or a
    heatmap for an image that is not among the source instances.
    """


class InvalidWriteBack(WriteBackError):
    """A resource or Structured Report built from a well-formed result does not validate.

    This is a bug in imaging-crosscheck's write-back, not in the data: ``what`` names
    the object (``DetectedIssue``, ``Comprehensive 3D SR``) and ``reason`` the rule it broke.
    """

    def __init__(self, what: str, reason: str) -> None:
        self.what = what
        self.reason = reason
        super().__init__(
            f"the {what} built by imaging-crosscheck's write-back does not validate ({reason}); "
            "this is a bug in imaging-crosscheck, not in the result: please report it with the result JSON"
        )
