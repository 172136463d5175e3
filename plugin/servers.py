"""Connection settings for FHIR servers and PACS: command-line options or ``CROSSCHECK_*`` variables.

Each setting is an option and an environment variable; the option wins. Secrets
(passwords, tokens, the SMART private key) are best given by environment
variable or file, never echoed, and never logged.

| option | environment variable |
|---|---|
| ``--fhir URL`` | ``CROSSCHECK_FHIR_URL`` |
| ``--fhir-token`` | ``CROSSCHECK_FHIR_TOKEN`` |
| ``--fhir-user`` / ``--fhir-password`` | ``CROSSCHECK_FHIR_USER`` / ``CROSSCHECK_FHIR_PASSWORD`` |
| ``--smart-client-id`` / ``--smart-key FILE`` | ``CROSSCHECK_SMART_CLIENT_ID`` / ``CROSSCHECK_SMART_KEY`` |
| ``--smart-alg`` (RS384, ES384) / ``--smart-kid`` | ``CROSSCHECK_SMART_ALG`` / ``CROSSCHECK_SMART_KID`` |
| ``--smart-token-url`` / ``--smart-scope`` | ``CROSSCHECK_SMART_TOKEN_URL`` / ``CROSSCHECK_SMART_SCOPE`` |
| ``--dicomweb URL`` | ``CROSSCHECK_DICOMWEB_URL`` |
| ``--dicomweb-token`` | ``CROSSCHECK_DICOMWEB_TOKEN`` |
| ``--dicomweb-user`` | ``CROSSCHECK_DICOMWEB_USER`` |
| ``--dicomweb-password`` | ``CROSSCHECK_DICOMWEB_PASSWORD`` |
| ``--dimse HOST:PORT:AET`` | ``CROSSCHECK_DIMSE`` |
| ``--ae-title`` (ours, default CROSSCHECK) | ``CROSSCHECK_AE_TITLE`` |
| ``--storage-port`` (our C-MOVE SCP) | ``CROSSCHECK_STORAGE_PORT`` |
| ``--retrieve get\\|move`` | ``CROSSCHECK_RETRIEVE`` |
| ``--timeout SECONDS`` (default 30) | ``CROSSCHECK_TIMEOUT`` |
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from connectors.auth import SMART_ALGORITHMS, Credentials, SmartClient
from connectors.dicom import DicomLimits
from connectors.dicom.dimse import DimsePeer, DimseSource
from connectors.dicom.web import DicomWebSource
from connectors.fhir.rest import FhirClient
from connectors.http import RetryPolicy, Timeouts
from plugin.errors import UsageError

__all__ = ["SETTINGS", "ServerSettings", "add_server_arguments", "server_settings"]

#: (option dest, environment variable, help); the option is ``--`` + dest with dashes.
SETTINGS: tuple[tuple[str, str, str], ...] = (
    ("fhir", "CROSSCHECK_FHIR_URL", "FHIR R4 base URL of the EHR"),
    ("fhir_token", "CROSSCHECK_FHIR_TOKEN", "bearer token for the FHIR server"),
    ("fhir_user", "CROSSCHECK_FHIR_USER", "HTTP basic user for the FHIR server"),
    ("fhir_password", "CROSSCHECK_FHIR_PASSWORD", "HTTP basic password (prefer the variable)"),
    ("smart_client_id", "CROSSCHECK_SMART_CLIENT_ID", "SMART Backend Services client id"),
    ("smart_key", "CROSSCHECK_SMART_KEY", "PEM file with the SMART client's private key"),
    ("smart_alg", "CROSSCHECK_SMART_ALG", "SMART assertion algorithm: RS384 (default) or ES384"),
    ("smart_kid", "CROSSCHECK_SMART_KID", "key id (kid) of the SMART client's key"),
    (
        "smart_token_url",
        "CROSSCHECK_SMART_TOKEN_URL",
        "token endpoint (default: from .well-known/smart-configuration)",
    ),
    ("smart_scope", "CROSSCHECK_SMART_SCOPE", "scopes to ask for (default system/*.read)"),
    ("dicomweb", "CROSSCHECK_DICOMWEB_URL", "DICOMweb base URL of the PACS"),
    ("dicomweb_token", "CROSSCHECK_DICOMWEB_TOKEN", "bearer token for the PACS"),
    ("dicomweb_user", "CROSSCHECK_DICOMWEB_USER", "HTTP basic user for the PACS"),
    (
        "dicomweb_password",
        "CROSSCHECK_DICOMWEB_PASSWORD",
        "HTTP basic password for the PACS (prefer the variable)",
    ),
    ("dimse", "CROSSCHECK_DIMSE", "DIMSE peer as HOST:PORT:AET (instead of DICOMweb)"),
    ("ae_title", "CROSSCHECK_AE_TITLE", "our AE title (default CROSSCHECK)"),
    ("storage_port", "CROSSCHECK_STORAGE_PORT", "port of our storage SCP for C-MOVE"),
    ("retrieve", "CROSSCHECK_RETRIEVE", "DIMSE retrieval: get (C-GET, default) or move (C-MOVE)"),
    ("timeout", "CROSSCHECK_TIMEOUT", "seconds to wait for a server (default 30)"),
)


@dataclass(frozen=True)
class ServerSettings:
    """Resolved connection settings; credentials stay out of ``repr``."""

    fhir_url: str | None = None
    fhir_credentials: Credentials | None = None
    dicomweb_url: str | None = None
    dicomweb_credentials: Credentials | None = None
    dimse: DimsePeer | None = None
    ae_title: str = "CROSSCHECK"
    storage_port: int | None = None
    retrieve: str = "get"
    timeout: float = 30.0

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts(connect=min(self.timeout, 10.0), read=self.timeout)

    def fhir_client(self, retry: RetryPolicy = RetryPolicy()) -> FhirClient:
        if self.fhir_url is None:
            raise UsageError("no FHIR server: give --fhir URL or set CROSSCHECK_FHIR_URL")
        return FhirClient(
            self.fhir_url, credentials=self.fhir_credentials, timeouts=self.timeouts, retry=retry
        )

    def imaging_source(self, limits: DicomLimits = DicomLimits()) -> DicomWebSource | DimseSource | None:
        """The configured PACS (DICOMweb or DIMSE), or None."""
        if self.dicomweb_url is not None and self.dimse is not None:
            raise UsageError("give either --dicomweb or --dimse, not both")
        if self.dicomweb_url is not None:
            return self.dicomweb_source(self.dicomweb_url, limits)
        if self.dimse is not None:
            return DimseSource(
                self.dimse,
                calling_ae=self.ae_title,
                storage_port=self.storage_port,
                timeout=self.timeout,
                limits=limits,
                retrieve=self.retrieve,
            )
        return None

    def dicomweb_source(self, url: str, limits: DicomLimits = DicomLimits()) -> DicomWebSource:
        return DicomWebSource(
            url, credentials=self.dicomweb_credentials, timeouts=self.timeouts, limits=limits
        )


def add_server_arguments(parser: argparse.ArgumentParser, *, dimse: bool = True) -> None:
    """Add the connection options (all optional: each falls back to its variable)."""
    group = parser.add_argument_group("servers (each option falls back to its CROSSCHECK_* variable)")
    for dest, env, help_text in SETTINGS:
        if not dimse and dest in {"dimse", "ae_title", "storage_port", "retrieve"}:
            continue
        flag = "--" + dest.replace("_", "-")
        group.add_argument(flag, dest=dest, default=None, help=f"{help_text} [{env}]")


def server_settings(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> ServerSettings:
    """Resolve options and environment into `ServerSettings`; `UsageError` for contradictions."""
    env = os.environ if env is None else env

    def get(dest: str) -> str | None:
        value = getattr(args, dest, None)
        if value is None:
            variable = next(e for d, e, _ in SETTINGS if d == dest)
            value = env.get(variable) or None
        return value

    try:
        fhir_credentials = _credentials(
            token=get("fhir_token"),
            user=get("fhir_user"),
            password=get("fhir_password"),
            smart=_smart(get),
            what="FHIR server",
        )
        dicomweb_credentials = _credentials(
            token=get("dicomweb_token"),
            user=get("dicomweb_user"),
            password=get("dicomweb_password"),
            smart=None,
            what="PACS",
        )
        dimse_text = get("dimse")
        storage_port = get("storage_port")
        timeout = float(get("timeout") or 30.0)
        if timeout <= 0:
            raise ValueError("--timeout must be positive")
        retrieve = (get("retrieve") or "get").lower()
        return ServerSettings(
            fhir_url=get("fhir"),
            fhir_credentials=fhir_credentials,
            dicomweb_url=get("dicomweb"),
            dicomweb_credentials=dicomweb_credentials,
            dimse=DimsePeer.parse(dimse_text) if dimse_text else None,
            ae_title=get("ae_title") or "CROSSCHECK",
            storage_port=int(storage_port) if storage_port else None,
            retrieve=retrieve,
            timeout=timeout,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _credentials(
    *, token: str | None, user: str | None, password: str | None, smart: SmartClient | None, what: str
) -> Credentials | None:
    given = [
        name for name, v in (("a token", token), ("a user", user), ("a SMART client", smart)) if v is not None
    ]
    if len(given) > 1:
        raise ValueError(f"the {what} takes one kind of credentials; got {' and '.join(given)}")
    if user is not None and password is None:
        raise ValueError(f"a user for the {what} needs its password (set the *_PASSWORD variable)")
    if password is not None and user is None:
        raise ValueError(f"a password for the {what} needs its user")
    if not given:
        return None
    return Credentials(token=token, username=user, password=password, smart=smart)


def _smart(get: Callable[[str], str | None]) -> SmartClient | None:
    client_id, key = get("smart_client_id"), get("smart_key")
    if client_id is None and key is None:
        return None
    if client_id is None or key is None:
        raise ValueError("SMART Backend Services needs both --smart-client-id and --smart-key")
    algorithm = (get("smart_alg") or "RS384").upper()
    if algorithm not in SMART_ALGORITHMS:
        raise ValueError(f"--smart-alg must be one of {', '.join(SMART_ALGORITHMS)}")
    return SmartClient.from_key_file(
        client_id,
        Path(key),
        algorithm=algorithm,
        key_id=get("smart_kid"),
        scope=get("smart_scope") or "system/*.read",
        token_url=get("smart_token_url"),
    )
