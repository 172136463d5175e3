"""Session fixtures: a real Orthanc and a real sekmet-fhir, loaded with a small simulated cohort, and
a real PostgreSQL (a fresh database a test).

A server that cannot start is a test failure, never a skip (CI installs both).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugin.cli import main


def _load_servers():  # a plain module beside this file, shared with bench/bench_assemble.py
    name = "crosscheck_test_servers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("servers.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


servers = _load_servers()
Orthanc, Sekmet, PostgreSQL = servers.Orthanc, servers.Sekmet, servers.PostgreSQL
start_orthanc, start_sekmet, stop = servers.start_orthanc, servers.start_sekmet, servers.stop

# -- fixtures -------------------------------------------------------------------------------------

COHORT_PATIENTS = 8
COHORT_SEED = 11


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        yield server
    finally:
        stop(server.process)


@pytest.fixture(scope="session")
def sekmet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sekmet]:
    server = start_sekmet(tmp_path_factory.mktemp("sekmet"))
    try:
        yield server
    finally:
        stop(server.process)


@pytest.fixture(scope="session")
def postgresql(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgreSQL]:
    server = servers.start_postgresql(tmp_path_factory.mktemp("postgresql"))
    try:
        yield server
    finally:
        stop(server.process)


@pytest.fixture
def postgresql_url(postgresql: PostgreSQL, request: pytest.FixtureRequest) -> str:
    """The URL of a new, empty database on the session's PostgreSQL."""
    import psycopg

    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    with psycopg.connect(
        f"host=127.0.0.1 port={postgresql.port} user={postgresql.user} dbname=postgres"
    ) as db:
        db.autocommit = True
        db.execute(f'DROP DATABASE IF EXISTS "{name}"')
        db.execute(f'CREATE DATABASE "{name}"')
    return postgresql.url(name)


@pytest.fixture(scope="session")
def server_env(orthanc: Orthanc, sekmet: Sekmet) -> dict[str, str]:
    """CROSSCHECK_* variables that reach both servers with basic authentication."""
    return {
        "CROSSCHECK_FHIR_URL": sekmet.url,
        "CROSSCHECK_FHIR_USER": sekmet.user[0],
        "CROSSCHECK_FHIR_PASSWORD": sekmet.user[1],
        "CROSSCHECK_DICOMWEB_URL": orthanc.dicomweb,
        "CROSSCHECK_DICOMWEB_USER": orthanc.user[0],
        "CROSSCHECK_DICOMWEB_PASSWORD": orthanc.user[1],
    }


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    code = main(
        [
            "simulate",
            "--out",
            str(out),
            "--patients",
            str(COHORT_PATIENTS),
            "--seed",
            str(COHORT_SEED),
            "--workers",
            "1",
            "-q",
        ]
    )
    assert code == 0
    return out


@pytest.fixture(scope="session")
def loaded(cohort: Path, server_env: dict[str, str]) -> Path:
    """The cohort, loaded into sekmet (transactions) and Orthanc (STOW-RS) by `crosscheck load`."""
    mp = pytest.MonkeyPatch()
    for key, value in server_env.items():
        mp.setenv(key, value)
    try:
        assert main(["load", str(cohort), "-q"]) == 0
    finally:
        mp.undo()
    return cohort


@pytest.fixture(scope="session")
def linked_sekmet(
    tmp_path_factory: pytest.TempPathFactory, loaded: Path, orthanc: Orthanc
) -> Iterator[Sekmet]:
    """A second FHIR server with the cohort, every ImagingStudy pointing at Orthanc's DICOMweb Endpoint."""
    server = start_sekmet(tmp_path_factory.mktemp("sekmet-linked"))
    try:
        assert (
            main(
                [
                    "load",
                    str(loaded),
                    "--fhir",
                    server.url,
                    "--fhir-token",
                    server.token,
                    "--link-endpoint",
                    orthanc.dicomweb,
                    "-q",
                ]
            )
            == 0
        )
        yield server
    finally:
        stop(server.process)
