"""A real PostgreSQL server on 127.0.0.1 for Vault's database secrets
engine: what makes a dynamic secret (a new user and password at each
read, with a lease). Run as ``nobody`` (PostgreSQL refuses root), trust
authentication, its data in a temporary directory; the tests that need it
skip, with one reason, where PostgreSQL is not installed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.openbao import free_port

NOBODY = 65534


def binary(name: str) -> str | None:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for directory in (Path("/usr/local/bin"), *versions):
        if (directory / name).exists():
            return str(directory / name)
    return shutil.which(name)


def _as_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``postgresql://{{username}}:{{password}}@127.0.0.1:PORT/postgres``, as
    Vault's connection_url wants it; the superuser is ``postgres``."""
    initdb, postgres = binary("initdb"), binary("postgres")
    if initdb is None or postgres is None:
        pytest.skip("needs PostgreSQL (initdb, postgres) for a dynamic secret")
    top = Path(tempfile.mkdtemp(prefix="ns-pg-"))
    os.chown(top, NOBODY, NOBODY)
    data, port = top / "data", free_port()
    subprocess.run(
        [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        preexec_fn=_as_nobody,
        capture_output=True,
        check=True,
        cwd=top,
    )
    log = (top / "server.log").open("wb")
    server = subprocess.Popen(
        [postgres, "-D", str(data), "-p", str(port), "-k", str(top), "-c", "listen_addresses=127.0.0.1"],
        preexec_fn=_as_nobody,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=top,
    )
    try:
        for _ in range(200):
            if b"ready to accept connections" in (top / "server.log").read_bytes():
                break
            if server.poll() is not None:
                raise RuntimeError((top / "server.log").read_text()[-2000:])
            time.sleep(0.05)
        yield f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{port}/postgres?sslmode=disable"
    finally:
        server.send_signal(signal.SIGINT)  # by PID; "fast": OpenBao may still hold connections
        server.wait(20)
        log.close()
        shutil.rmtree(top, ignore_errors=True)
