"""No patient data in the logs: a whole server check at DEBUG level logs ids and UIDs, never names,
birth dates, identifiers or credentials."""

from __future__ import annotations

import json
import logging

import pytest

from plugin.cli import main

pytestmark = pytest.mark.integration


def test_debug_logs_of_a_server_check_hold_no_patient_data(loaded, server_env, monkeypatch, caplog, capsys):
    for key, value in server_env.items():
        monkeypatch.setenv(key, value)
    bundle = json.loads((loaded / "bundles" / "pat-000001.json").read_text())
    (patient,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    secrets = {server_env["CROSSCHECK_FHIR_PASSWORD"], server_env["CROSSCHECK_DICOMWEB_PASSWORD"]}
    secrets |= {i["value"] for i in patient.get("identifier", [])}
    secrets |= {patient["birthDate"]}
    for name in patient.get("name", []):
        secrets |= {name.get("family", "")} | set(name.get("given", []))
    secrets.discard("")
    with caplog.at_level(logging.DEBUG):
        code = main(["-vv", "check", "--patient", "pat-000001", "--format", "json"])
    assert code == 0, capsys.readouterr().err
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Patient/pat-000001" in logged or "pat-000001" in logged  # ids are fine, and are there
    leaked = sorted(s for s in secrets if s in logged)
    assert not leaked, f"patient data or secrets in the logs: {len(leaked)} value(s)"
    capsys.readouterr()
