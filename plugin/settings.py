"""Settings of ``crosscheck serve``: options, a config file, or ``CROSSCHECK_*`` variables.

Precedence, highest first: options given to `get_settings` (the command line),
``CROSSCHECK_*`` environment variables, the config file (``--config FILE`` or
``CROSSCHECK_CONFIG``; TOML or JSON, keys as the field names below), defaults.
Nothing is read at import time: the app gets its `Settings` from `get_settings`
through ``Depends`` and tests override it.

The FHIR server and the PACS are set as for every other command (`plugin.servers`:
``--fhir``, ``--dicomweb`` ... and their ``CROSSCHECK_*`` variables); this module
holds what only the service has.

| field | variable | meaning |
|---|---|---|
| ``host`` / ``port`` | ``CROSSCHECK_HOST`` / ``CROSSCHECK_PORT`` | where uvicorn listens (127.0.0.1:8080) |
| ``public_url`` | ``CROSSCHECK_PUBLIC_URL`` | the base URL clients use (links in cards; JWT ``aud``) |
| ``data_dir`` | ``CROSSCHECK_DATA_DIR`` | database, image cache and heatmaps (./crosscheck-data) |
| ``database_url`` | ``CROSSCHECK_DATABASE_URL`` | SQLAlchemy URL (default: SQLite in ``data_dir``) |
| ``model`` / ``device`` | ``CROSSCHECK_MODEL`` / ``CROSSCHECK_DEVICE`` | model bundle folder; cpu/cuda |
| ``cds_clients`` | ``CROSSCHECK_CDS_CLIENTS`` | allow-list of CDS clients (JSON file) |
| ``insecure_no_auth`` | ``CROSSCHECK_INSECURE_NO_AUTH`` | serve without any authentication (tests, demos) |
| ``api_keys`` | ``CROSSCHECK_API_KEYS`` | JSON file ``{"<name>": "sha256:<hex>"}`` for the REST API |
| ``oauth_issuer`` / ``oauth_jwks_url`` / ``oauth_audience`` | ``CROSSCHECK_OAUTH_*`` | OAuth2 bearer tokens |
| ``cds_deadline_ms`` | ``CROSSCHECK_CDS_DEADLINE_MS`` | scoring time a hook call may spend (350) |
| ``say_consistent`` | ``CROSSCHECK_SAY_CONSISTENT`` | an info card "checked, consistent" when all is well |
| ``smart_app_url`` | ``CROSSCHECK_SMART_APP_URL`` | SMART app launch URL for card links |
| ``writeback_fhir`` / ``writeback_sr`` | ``CROSSCHECK_WRITEBACK_*`` | post DetectedIssue / store a DICOM SR |
| ``writeback_fhir_mode`` | ``..._WRITEBACK_FHIR_MODE`` | conditional-create (default), update-as-create |
| ``orthanc_url`` | ``CROSSCHECK_ORTHANC_URL`` | score new studies from Orthanc's change feed |
| ``ingest_poll_s`` | ``CROSSCHECK_INGEST_POLL_S`` | seconds between polls of that feed (2) |
| ``cors_origins`` | ``CROSSCHECK_CORS_ORIGINS`` | origins allowed by CORS (JSON list; default any) |
| ``patient_view_max_studies`` | ``..._PATIENT_VIEW_MAX_STUDIES`` | studies a chart opening checks (3) |
| ``patient_view_max_age_days`` | ``..._PATIENT_VIEW_MAX_AGE_DAYS`` | ... started at most this long ago (30) |
| ``trusted_proxies`` | ``CROSSCHECK_TRUSTED_PROXIES`` | reverse proxies (IPs or networks; JSON list or |
| | | comma-separated) whose ``X-Forwarded-For``/``-Proto`` are believed (none) |
| ``login_max_failures`` | ``..._LOGIN_MAX_FAILURES`` | failed review logins per user name in the window (5) |
| ``login_max_failures_per_address`` | ``..._LOGIN_MAX_FAILURES_PER_ADDRESS`` | ... per client address (20) |
| ``login_failure_window_s`` | ``..._LOGIN_FAILURE_WINDOW_S`` | the window failures are counted in (900 s) |
| ``login_lockout_s`` | ``..._LOGIN_LOCKOUT_S`` | the first lock-out after too many failures (300 s) |
| ``login_lockout_max_s`` | ``..._LOGIN_LOCKOUT_MAX_S`` | each next lock-out doubles, up to this (3600 s) |

The review page's login throttle (`plugin.store.throttle`): past the limit for a user name or an
address, logins for that name or from that address are refused (HTTP 429 with ``Retry-After``)
until the lock-out ends, whatever the password. The address is the connection's peer; behind a
reverse proxy, list it in ``trusted_proxies`` so that the client address it forwards counts
instead (and ``X-Forwarded-Proto``, for the ``Secure`` cookie). With none listed, forwarded
headers are ignored: a client cannot choose its own address by sending them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from plugin.errors import UsageError

__all__ = ["Settings", "get_settings", "load_settings"]


class Settings(BaseSettings):
    """What ``crosscheck serve`` needs besides the server connections (see the module table)."""

    model_config = SettingsConfigDict(env_prefix="CROSSCHECK_", extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    public_url: str | None = None
    data_dir: Path = Path("crosscheck-data")
    database_url: str | None = None
    model: Path | None = None
    device: str | None = None
    cds_clients: Path | None = None
    insecure_no_auth: bool = False
    api_keys: Path | None = None
    oauth_issuer: str | None = None
    oauth_jwks_url: str | None = None
    oauth_audience: str | None = None
    cds_deadline_ms: int = Field(default=350, ge=0, le=60_000)
    say_consistent: bool = False
    smart_app_url: str | None = None
    writeback_fhir: bool = False
    writeback_sr: bool = False
    writeback_fhir_mode: Literal["conditional-create", "update-as-create"] = "conditional-create"
    orthanc_url: str | None = None
    ingest_poll_s: float = Field(default=2.0, gt=0)
    cors_origins: list[str] = Field(default_factory=lambda: ["*"])
    patient_view_max_studies: int = Field(default=3, ge=1, le=50)
    patient_view_max_age_days: float = Field(default=30.0, gt=0)
    trusted_proxies: list[str] = Field(default_factory=list)
    login_max_failures: int = Field(default=5, ge=1, le=1000)
    login_max_failures_per_address: int = Field(default=20, ge=1, le=1_000_000)
    login_failure_window_s: float = Field(default=900.0, gt=0, le=86_400)
    login_lockout_s: float = Field(default=300.0, gt=0, le=86_400)
    login_lockout_max_s: float = Field(default=3600.0, gt=0, le=86_400)

    @field_validator("public_url", "orthanc_url", "oauth_jwks_url", "smart_app_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value is not None else None

    @field_validator("trusted_proxies")
    @classmethod
    def _ip_networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network: list the reverse proxies' addresses "
                    "(e.g. 10.0.0.5 or 10.0.0.0/24)"
                ) from None
        return [entry.strip() for entry in value]

    @model_validator(mode="after")
    def _lockouts_grow(self) -> Settings:
        if self.login_lockout_max_s < self.login_lockout_s:
            raise ValueError("login_lockout_max_s cannot be shorter than login_lockout_s, the first lock-out")
        return self

    @property
    def database(self) -> str:
        """The SQLAlchemy URL of the plugin's database."""
        return self.database_url or f"sqlite:///{(self.data_dir / 'crosscheck.db').resolve()}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise UsageError(f"config file {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise UsageError(f"config file {path} is not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold one object of settings")
    return data


def load_settings(
    options: dict[str, Any] | None = None,
    *,
    config_file: Path | None = None,
    env: dict[str, str] | None = None,
) -> Settings:
    """Settings from ``options`` (None values ignored), the environment, and the config file.

    A bad value gives one `UsageError` naming the setting, never a traceback.
    """
    env = dict(os.environ) if env is None else env
    given = {k: v for k, v in (options or {}).items() if v is not None}
    config_path = config_file or (Path(env["CROSSCHECK_CONFIG"]) if env.get("CROSSCHECK_CONFIG") else None)
    from_file = _read_config_file(config_path) if config_path is not None else {}
    unknown = sorted(set(from_file) - set(Settings.model_fields))
    if unknown:
        raise UsageError(f"config file {config_path}: unknown setting(s) {', '.join(unknown)}")
    from_env = {
        name: env[f"CROSSCHECK_{name.upper()}"]
        for name in Settings.model_fields
        if env.get(f"CROSSCHECK_{name.upper()}") not in (None, "")
    }
    merged: dict[str, Any] = {**from_file, **from_env, **given}
    for name in ("cors_origins", "trusted_proxies"):  # lists: JSON, or comma-separated
        if isinstance(merged.get(name), str):
            text = merged[name].strip()
            merged[name] = json.loads(text) if text.startswith("[") else [v for v in text.split(",") if v]
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise UsageError(f"bad setting: {problems}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, from the environment and config file (cached; tests override it)."""
    return load_settings()
