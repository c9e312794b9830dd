"""One peer cannot hold the server: connections are counted per address
(``server.max_connections_per_peer``, 64 by default) as well as in all
(``server.max_connections``), so idle connections from one address take at
most their share, and the CI runners at other addresses are still served.

127.0.0.0/8 is all loopback on Linux: the hostile peer is 127.0.0.3 and the
runner 127.0.0.2, both on this machine (the harness's own requests come
from 127.0.0.1, a third peer)."""

from __future__ import annotations

import json
import select
import socket
import time
from pathlib import Path
from typing import Any

from conftest import put_secret
from pki import make_pki
from serverutil import Server, drone_headers, secret_body
from test_server_lifecycle import SECRET, drone_config

RUNNER = "127.0.0.2"
HOSTILE = "127.0.0.3"


def start(tmp: Path, endpoint: str, server_extra: str) -> Server:
    return Server(*drone_config(tmp, endpoint, server_extra))


def idle_connections(port: int, count: int) -> list[socket.socket]:
    """``count`` connections from the hostile peer that send nothing."""
    return [
        socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(HOSTILE, 0))
        for _ in range(count)
    ]


def closed_by_server(conns: list[socket.socket], settle: float = 2.0) -> list[socket.socket]:
    """The connections the server has closed (EOF or reset), once no more
    close for ``settle`` seconds. An open idle connection never becomes
    readable: the server writes nothing until it has a request."""
    closed: list[socket.socket] = []
    quiet_until = time.monotonic() + settle
    while time.monotonic() < quiet_until:
        waiting = [c for c in conns if c not in closed]
        readable, _, _ = select.select(waiting, [], [], 0.1) if waiting else ([], [], [])
        for conn in readable:
            try:
                data = conn.recv(1)
            except ConnectionResetError:
                data = b""
            assert data == b""  # nothing but the end: no answer to a request never sent
            closed.append(conn)
        if readable:
            quiet_until = time.monotonic() + settle
    return closed


def runner_request(running: Server) -> int:
    body = secret_body("aws-sm:ci/lifecycle/peers", "password")
    conn = running.connection(source=RUNNER)
    try:
        answer = running.request("POST", "/drone/secret", body, drone_headers(SECRET, body), conn=conn)
    finally:
        conn.close()
    if answer.status == 200:
        assert answer.json()["data"] == "peers-hunter2"
    return answer.status


def test_one_peer_gets_its_share_and_a_runner_elsewhere_is_still_served(
    tmp_path: Path, moto_endpoint: str, secretsmanager: Any
) -> None:
    put_secret(secretsmanager, "ci/lifecycle/peers", json.dumps({"password": "peers-hunter2"}))
    # All the slots, then some, from one address; a header deadline far
    # longer than the test, so that only the per-peer limit can free them.
    with start(tmp_path, moto_endpoint, "max_connections = 100\nheader_seconds = 120\n") as running:
        hostile = idle_connections(running.port, 110)
        try:
            assert runner_request(running) == 200
            closed = closed_by_server(hostile)
            assert len(closed) == 110 - 64  # the default max_connections_per_peer
            kept = [c for c in hostile if c not in closed]
            # What the peer kept still works, and a request of its own is served.
            kept[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert kept[0].recv(1024).startswith(b"HTTP/1.1 200 ")
            # One more is refused at once; once it lets some go, it may
            # connect again: the share is of open connections.
            assert len(closed_by_server(idle_connections(running.port, 1))) == 1
            for conn in kept[:8]:
                conn.close()
            time.sleep(0.5)  # the server sees the ends
            again = idle_connections(running.port, 8)
            assert closed_by_server(again, settle=1.0) == []
            hostile += again
            assert runner_request(running) == 200
        finally:
            for conn in hostile:
                conn.close()
        refusals = [line for line in running.stderr if "max_connections_per_peer" in line]
        assert refusals and f"refused a connection from {HOSTILE}, which has 64 open" in refusals[0]
        assert len(refusals) == 1  # said once, not once per refused connection


def test_the_limit_per_peer_is_set_in_the_config(
    tmp_path: Path, moto_endpoint: str, secretsmanager: Any
) -> None:
    put_secret(secretsmanager, "ci/lifecycle/peers", json.dumps({"password": "peers-hunter2"}))
    extra = "max_connections = 20\nmax_connections_per_peer = 5\nheader_seconds = 120\n"
    with start(tmp_path, moto_endpoint, extra) as running:
        hostile = idle_connections(running.port, 20)
        try:
            assert len(closed_by_server(hostile)) == 15
            assert runner_request(running) == 200
        finally:
            for conn in hostile:
                conn.close()


def test_idle_connections_are_still_closed_at_the_header_deadline(tmp_path: Path, moto_endpoint: str) -> None:
    with start(tmp_path, moto_endpoint, "header_seconds = 1\n") as running:
        idle = idle_connections(running.port, 10)
        try:
            assert len(closed_by_server(idle, settle=3.0)) == 10
        finally:
            for conn in idle:
                conn.close()


def test_connections_that_never_start_tls_count_too(
    tmp_path: Path, moto_endpoint: str, secretsmanager: Any
) -> None:
    """With TLS, uvicorn sees a connection only once its handshake is done;
    the share is counted from accept, so silent TCP connections count."""
    put_secret(secretsmanager, "ci/lifecycle/peers", json.dumps({"password": "peers-hunter2"}))
    pki = make_pki(tmp_path)
    config, port = drone_config(
        tmp_path,
        moto_endpoint,
        "max_connections_per_peer = 10\n",
        tls=(tmp_path / "server.pem", tmp_path / "server_key.pem"),
    )
    with Server(config, port, ca_file=pki.server_ca) as running:
        silent = idle_connections(port, 30)
        try:
            assert len(closed_by_server(silent)) == 20
            assert runner_request(running) == 200
        finally:
            for conn in silent:
                conn.close()
