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
