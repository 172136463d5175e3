"""Connection settings: options win over CROSSCHECK_* variables; contradictions are usage errors."""

from __future__ import annotations

import argparse

import pytest

from connectors.dicom.dimse import DimsePeer, DimseSource
from connectors.dicom.web import DicomWebSource
from plugin.cli import main
from plugin.errors import UsageError
from plugin.servers import add_server_arguments, server_settings


def _settings(argv: list[str], env: dict[str, str]):
    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    return server_settings(parser.parse_args(argv), env)


def test_options_win_over_the_environment():
    s = _settings(["--fhir", "https://ehr.example/fhir"], {"CROSSCHECK_FHIR_URL": "https://other/fhir"})
    assert s.fhir_url == "https://ehr.example/fhir"


def test_everything_can_come_from_the_environment():
    env = {
        "CROSSCHECK_FHIR_URL": "https://ehr.example/fhir",
        "CROSSCHECK_FHIR_USER": "svc",
        "CROSSCHECK_FHIR_PASSWORD": "pw",
        "CROSSCHECK_DIMSE": "pacs.example:104:PACS",
        "CROSSCHECK_AE_TITLE": "XCHECK",
        "CROSSCHECK_STORAGE_PORT": "11113",
        "CROSSCHECK_RETRIEVE": "move",
        "CROSSCHECK_TIMEOUT": "12.5",
    }
    s = _settings([], env)
    assert s.fhir_credentials is not None and s.fhir_credentials.kind == "basic"
    assert s.dimse == DimsePeer("pacs.example", 104, "PACS")
    source = s.imaging_source()
    assert isinstance(source, DimseSource)
    assert (source.calling_ae, source.storage_port, source.retrieve, source.timeout) == (
        "XCHECK",
        11113,
        "move",
        12.5,
    )


def test_dicomweb_with_a_bearer_token():
    s = _settings(["--dicomweb", "https://pacs.example/dicom-web"], {"CROSSCHECK_DICOMWEB_TOKEN": "t0k"})
    source = s.imaging_source()
    assert isinstance(source, DicomWebSource)
    assert source._session.headers["Authorization"] == "Bearer t0k"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (
            [],
            {"CROSSCHECK_FHIR_TOKEN": "t", "CROSSCHECK_FHIR_USER": "u", "CROSSCHECK_FHIR_PASSWORD": "p"},
            "one kind",
        ),
        (["--fhir-user", "u"], {}, "needs its password"),
        (["--smart-client-id", "c"], {}, "needs both"),
        (["--dimse", "pacs:104"], {}, "HOST:PORT:AET"),
        (["--timeout", "0"], {}, "positive"),
    ],
)
def test_contradictions_are_usage_errors(argv, env, message):
    with pytest.raises(UsageError, match=message):
        _settings(argv, env)


def test_dicomweb_and_dimse_together_are_a_usage_error():
    s = _settings(["--dicomweb", "https://pacs/dicom-web", "--dimse", "pacs:104:PACS"], {})
    with pytest.raises(UsageError, match="not both"):
        s.imaging_source()


def test_repr_hides_secrets():
    s = _settings(
        ["--fhir-token", "SECRET-TOKEN"],
        {"CROSSCHECK_DICOMWEB_USER": "u", "CROSSCHECK_DICOMWEB_PASSWORD": "SECRET-PW"},
    )
    assert "SECRET" not in repr(s)


@pytest.mark.parametrize(
    "argv",
    [
        ["load", "."],  # no server
        ["check", "--dicom", ".", "--fhir", "http://127.0.0.1:9/fhir"],  # files and servers
        ["check", "--fhir", "http://127.0.0.1:9/fhir"],  # no patient or study
        ["export", "--out", "x", "--level", "group"],  # group without id
    ],
)
def test_cli_usage_errors_are_one_line(argv, capsys, monkeypatch):
    for var in ("CROSSCHECK_FHIR_URL", "CROSSCHECK_DICOMWEB_URL", "CROSSCHECK_DIMSE"):
        monkeypatch.delenv(var, raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"crosscheck {argv[0]}: error: ")
