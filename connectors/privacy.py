"""Keeping patient data out of logs that are not ours.

The connectors log resource ids and UIDs at DEBUG, never names, birth dates or
identifiers. Libraries underneath do not promise that: httpx and urllib3 log
request URLs (QIDO and FHIR search queries carry patient identifiers),
dicomweb-client logs URLs and headers, pynetdicom logs whole C-FIND identifiers.
An application that configures logging (the CLI, the service) calls
`quiet_third_party_loggers` so those stay at WARNING whatever its own level.
"""

from __future__ import annotations

import logging

__all__ = ["THIRD_PARTY_LOGGERS", "quiet_third_party_loggers"]

#: Loggers that write request URLs, headers or DICOM identifiers below WARNING.
THIRD_PARTY_LOGGERS = ("httpx", "httpcore", "urllib3", "requests", "dicomweb_client", "pynetdicom")


def quiet_third_party_loggers(level: int = logging.WARNING) -> None:
    """Raise every logger in `THIRD_PARTY_LOGGERS` to at least ``level``."""
    for name in THIRD_PARTY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < level:
            logger.setLevel(level)
