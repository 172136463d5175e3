"""How tolerant a reader is of messy incoming data: ``ignore``, ``warn`` or ``raise``.

"Encode strictly, decode tolerantly": what we build is validated on construction,
and what comes in from clinical systems is handled under an explicit
``Strictness`` that the caller passes to each reader (never a global):

- ``raise``: the first bad item stops the read with its `ConnectorError`.
- ``warn`` (the default everywhere): the bad item is skipped, a warning naming it
  (file, resource type/id or UID, never patient data) is logged, and the item is
  recorded where the result keeps its problems.
- ``ignore``: like ``warn``, but logged at DEBUG only; it is still recorded.
"""

from __future__ import annotations

import logging
from enum import StrEnum

__all__ = ["Strictness"]


class Strictness(StrEnum):
    """What a reader does with an input item it cannot use."""

    IGNORE = "ignore"
    WARN = "warn"
    RAISE = "raise"

    @classmethod
    def of(cls, value: Strictness | str) -> Strictness:
        """Accept the enum or its string (any case) and return the enum."""
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise ValueError(f"strictness must be one of {choices}; got {value!r}") from None

    def handle(self, error: Exception, logger: logging.Logger, summary: str | None = None) -> None:
        """Raise ``error`` under RAISE; otherwise log it and return.

        Under WARN, ``summary`` (a line without resource ids, UIDs or patient data;
        the error's class name when not given) is logged at WARNING and the full
        message at DEBUG, since ids and UIDs belong in DEBUG logs only. Under
        IGNORE only the DEBUG line is written.
        """
        if self is Strictness.RAISE:
            raise error
        if self is Strictness.WARN:
            logger.warning("skipped: %s", summary or type(error).__name__)
        logger.debug("skipped: %s", error)
