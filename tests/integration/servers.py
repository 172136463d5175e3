"""Real servers for the integration tests and the benchmarks: Orthanc (PACS), sekmet-fhir (FHIR R4)
and PostgreSQL (the store's other database).

Each is started as our own process on free loopback ports with its own storage
folder and configuration, with authentication on, waited for until it answers,
and ended by its PID (never by name).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins")
ORTHANC_USER = ("crosscheck", "orthanc-test-password")
FHIR_USER = ("crosscheck", "fhir-test-password")
FHIR_TOKEN = "fhir-test-bearer-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Orthanc:
    process: subprocess.Popen[bytes]
    http_port: int
    dicom_port: int
    aet: str
    folder: Path
    storage_port: int  # our C-MOVE storage SCP, registered on Orthanc as CROSSCHECK
    user: tuple[str, str] = ORTHANC_USER

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"


@dataclass
class Sekmet:
    process: subprocess.Popen[bytes]
    port: int
    folder: Path
    smart_key: Path  # RS384 private key of SMART client "crosscheck-rs"
    smart_key_es: Path  # ES384 private key of SMART client "crosscheck-es"
    user: tuple[str, str] = FHIR_USER
    token: str = FHIR_TOKEN

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"


def start_orthanc(folder: Path) -> Orthanc:
    binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    if not Path(binary).exists():
        raise RuntimeError("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb orthanc-gdcm)")
    http_port, dicom_port, storage_port = free_port(), free_port(), free_port()
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "crosscheck-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {ORTHANC_USER[0]: ORTHANC_USER[1]},
        "Plugins": [
            str(ORTHANC_PLUGINS / "libOrthancDicomWeb.so"),
            str(ORTHANC_PLUGINS / "libOrthancGdcm.so"),
        ],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        },
        "Gdcm": {"Enable": True},
        "DicomModalities": {
            "crosscheck": {
                "AET": "CROSSCHECK",
                "Host": "127.0.0.1",
                "Port": storage_port,
                "AllowEcho": True,
                "AllowFind": True,
                "AllowGet": True,
                "AllowMove": True,
                "AllowStore": True,
            }
        },
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomCheckCalledAet": True,
        "DicomCheckModalityHost": False,
        "StableAge": 1,
        "HttpTimeout": 60,
    }
    (folder / "orthanc.json").write_text(json.dumps(config, indent=2))
    log = (folder / "orthanc.log").open("wb")
    process = subprocess.Popen(
        [binary, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT, cwd=folder
    )
    server = Orthanc(process, http_port, dicom_port, "ORTHANC", folder, storage_port)
    _wait(
        lambda: httpx.get(f"{server.url}/system", auth=ORTHANC_USER, timeout=2).status_code == 200,
        process,
        folder / "orthanc.log",
        "Orthanc",
    )
    return server


def start_sekmet(folder: Path) -> Sekmet:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    binary = Path(sys.executable).with_name("sekmet")
    if not binary.exists():
        raise RuntimeError("sekmet-fhir is not installed (pip install sekmet-fhir)")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP384R1())
    keys = {}
    for name, key in (("rs", rsa_key), ("es", ec_key)):
        path = folder / f"smart-{name}.pem"
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        keys[name] = path
    rs_jwk = json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key()))
    es_jwk = json.loads(ECAlgorithm.to_jwk(ec_key.public_key()))
    rs_jwk.update(kid="crosscheck-rs-1", alg="RS384")
    es_jwk.update(kid="crosscheck-es-1", alg="ES384")
    base = f"http://127.0.0.1:{port}/fhir"
    settings = {
        "base_url": base,
        "host": "127.0.0.1",
        "port": port,
        "data_dir": str(folder / "data"),
        "simulator": {"enabled": False},
        "log_inbound": False,
        "server_auth": {
            "types": ["basic", "bearer", "smart"],
            "users": {FHIR_USER[0]: FHIR_USER[1]},
            "tokens": [FHIR_TOKEN],
            "smart_clients": [
                {"client_id": "crosscheck-rs", "jwks": {"keys": [rs_jwk]}, "scopes": "system/*.*"},
                {"client_id": "crosscheck-es", "jwks": {"keys": [es_jwk]}, "scopes": "system/*.read"},
            ],
        },
    }
    (folder / "settings.yaml").write_text(json.dumps(settings))  # JSON is YAML
    log = (folder / "sekmet.log").open("wb")
    process = subprocess.Popen(
        [str(binary), "serve", "-c", str(folder / "settings.yaml")],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=folder,
    )
    server = Sekmet(process, port, folder, keys["rs"], keys["es"])
    _wait(
        lambda: httpx.get(f"{base}/metadata", timeout=2).status_code == 200,
        process,
        folder / "sekmet.log",
        "sekmet-fhir",
    )
    return server


@dataclass
class PostgreSQL:
    process: subprocess.Popen[bytes]
    port: int
    folder: Path
    user: str

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"


def start_postgresql(folder: Path) -> PostgreSQL:
    """A private PostgreSQL cluster (Debian's ``postgresql`` package): initdb into ``folder``, trust
    authentication on loopback only, our own port and socket folder. PostgreSQL refuses to run as
    root, so as root the cluster belongs to the ``postgres`` user the package creates."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    bin_dir = found[-1].parent
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data"
    as_user: list[str] = []
    user = os.environ.get("USER") or "postgres"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        for parent in folder.parents:  # the socket and data folders must be reachable by postgres
            if parent == Path(parent.anchor):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o011)
        as_user, user = ["runuser", "-u", "postgres", "--"], "postgres"
    log = folder / "postgresql.log"
    init = subprocess.run(
        [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8"],
        capture_output=True,
        text=True,
        check=False,
    )
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed: {init.stderr[-2000:]}")
    port = free_port()
    process = subprocess.Popen(
        [
            *as_user,
            str(bin_dir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(folder),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    server = PostgreSQL(process, port, folder, user)

    def ready() -> bool:
        check = subprocess.run(
            [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
            capture_output=True,
            check=False,
        )
        return check.returncode == 0

    _wait(ready, process, log, "PostgreSQL")
    return server


def stop(process: subprocess.Popen[bytes], *, grace: float = 10.0) -> None:
    """SIGTERM, wait, SIGKILL if needed; by PID only."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def _wait(
    ready: Callable[[], bool], process: subprocess.Popen[bytes], log: Path, name: str, timeout: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{name} exited with {process.returncode}: {log.read_text(errors='replace')[-2000:]}"
            )
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop(process)
    raise RuntimeError(
        f"{name} did not answer within {timeout:.0f} s: {log.read_text(errors='replace')[-2000:]}"
    )
