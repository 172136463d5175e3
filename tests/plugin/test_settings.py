"""Settings of the service: options over variables over the config file; bad values named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plugin.errors import UsageError
from plugin.settings import load_settings


def test_precedence_options_then_environment_then_file(tmp_path: Path) -> None:
    config = tmp_path / "crosscheck.toml"
    config.write_text('port = 9000\nhost = "0.0.0.0"\nsay_consistent = true\ncds_deadline_ms = 200\n')
    env = {"CROSSCHECK_PORT": "9100", "CROSSCHECK_CDS_DEADLINE_MS": "250"}
    settings = load_settings({"port": 9200, "host": None}, config_file=config, env=env)
    assert settings.port == 9200  # the option
    assert settings.cds_deadline_ms == 250  # the variable
    assert settings.host == "0.0.0.0" and settings.say_consistent  # the file
    assert settings.data_dir == Path("crosscheck-data")  # the default


def test_json_config_named_by_variable(tmp_path: Path) -> None:
    config = tmp_path / "crosscheck.json"
    config.write_text(
        json.dumps({"public_url": "https://crosscheck.example.org/", "cors_origins": ["https://a"]})
    )
    settings = load_settings(
        env={"CROSSCHECK_CONFIG": str(config), "CROSSCHECK_CORS_ORIGINS": "https://b,https://c"}
    )
    assert settings.public_url == "https://crosscheck.example.org"
    assert settings.cors_origins == ["https://b", "https://c"]
    assert settings.database.startswith("sqlite:///") and settings.database.endswith("crosscheck.db")


@pytest.mark.parametrize(
    ("config", "env", "words"),
    [
        ("port = 99999\n", {}, "port"),
        ("colour = 'blue'\n", {}, "unknown setting(s) colour"),
        ("port = [", {}, "not valid TOML"),
        ("", {"CROSSCHECK_PUBLIC_URL": "ftp://x"}, "public_url"),
        ("", {"CROSSCHECK_CDS_DEADLINE_MS": "soon"}, "cds_deadline_ms"),
        ("", {"CROSSCHECK_TRUSTED_PROXIES": "10.0.0.5,proxy.example"}, "'proxy.example' is not an IP"),
        ("login_lockout_s = 600\nlogin_lockout_max_s = 300\n", {}, "login_lockout_max_s cannot be shorter"),
        ("login_max_failures = 0\n", {}, "login_max_failures"),
    ],
)
def test_bad_settings_are_one_usage_error(
    tmp_path: Path, config: str, env: dict[str, str], words: str
) -> None:
    path = tmp_path / "crosscheck.toml"
    path.write_text(config)
    with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_settings(config_file=path, env=env)


def test_a_missing_config_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="config file"):
        load_settings(config_file=tmp_path / "nope.toml", env={})


def test_trusted_proxies_and_login_limits(tmp_path: Path) -> None:
    defaults = load_settings(env={})
    assert defaults.trusted_proxies == []  # forwarded headers believed from no one
    assert (defaults.login_max_failures, defaults.login_max_failures_per_address) == (5, 20)
    assert (defaults.login_failure_window_s, defaults.login_lockout_s, defaults.login_lockout_max_s) == (
        900,
        300,
        3600,
    )
    env = {"CROSSCHECK_TRUSTED_PROXIES": "10.0.0.5, 10.1.0.0/16", "CROSSCHECK_LOGIN_MAX_FAILURES": "3"}
    settings = load_settings(env=env)
    assert settings.trusted_proxies == ["10.0.0.5", "10.1.0.0/16"]
    assert settings.login_max_failures == 3
    as_json = load_settings(env={"CROSSCHECK_TRUSTED_PROXIES": '["2001:db8::1"]'})
    assert as_json.trusted_proxies == ["2001:db8::1"]
