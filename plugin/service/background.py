"""Run the app under uvicorn in a background thread, on a real loopback port.

For tests and benchmarks that talk to the service over HTTP exactly as clients
do, inside one process (``crosscheck serve`` runs uvicorn in the foreground).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

__all__ = ["free_port", "serve_in_background"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def serve_in_background(
    app: FastAPI, *, host: str = "127.0.0.1", port: int | None = None, startup_timeout: float = 60.0
) -> Iterator[str]:
    """Serve ``app`` until the block ends; yields its base URL (``http://host:port``)."""
    port = port or free_port(host)
    # proxy_headers off: uvicorn would believe X-Forwarded-For from 127.0.0.1; the app trusts the
    # proxies its settings list (``trusted_proxies``), no others
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=False, lifespan="on", proxy_headers=False
    )
    server = uvicorn.Server(config)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:  # reported to the caller below
            errors.append(exc)

    thread = threading.Thread(target=run, name="crosscheck-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if errors or not thread.is_alive():
            raise RuntimeError(f"the service did not start: {errors[0] if errors else 'uvicorn exited'}")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the service did not start within {startup_timeout:.0f} s")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
