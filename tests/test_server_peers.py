"""One peer cannot hold the server, and many runners behind one address
are told "too many", never reset: connections are counted per address
(``server.max_connections_per_peer``) as well as in all
(``server.max_connections``). Up to the limit they are served; a few more
are answered 429 with Retry-After on their first request, then closed (or
closed when it does not come at once); past those a new connection is
closed at once.

127.0.0.0/8 is all loopback on Linux: the hostile peer is 127.0.0.3 and the
runner 127.0.0.2, both on this machine (the harness's own requests come
from 127.0.0.1, a third peer)."""

from __future__ import annotations

import asyncio
import http.client
import json
import select
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from conftest import put_secret
from support.pki import make_pki
from support.serverutil import Server, drone_headers, secret_body
from test_server_lifecycle import SECRET, drone_config

RUNNER = "127.0.0.2"
HOSTILE = "127.0.0.3"
HOSTILE_TOO = "127.0.0.4"


def start(tmp: Path, endpoint: str, server_extra: str) -> Server:
    return Server(*drone_config(tmp, endpoint, server_extra))


def idle_connections(port: int, count: int, source: str = HOSTILE) -> list[socket.socket]:
    """``count`` connections from ``source`` that send nothing."""
    return [
        socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
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
        if not waiting:  # every one is closed: nothing more to wait for
            break
        readable, _, _ = select.select(waiting, [], [], 0.1)
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


def runner_request(running: Server, source: str = RUNNER) -> http.client.HTTPResponse:
    """A Drone secret request from ``source``, on a connection of its own
    (as drone-go makes one per request); the answer, read whole."""
    body = secret_body("aws-sm:ci/lifecycle/peers", "password")
    conn = running.connection(source=source)
    try:
        conn.request("POST", "/drone/secret", body, drone_headers(SECRET, body))
        answer = conn.getresponse()
        data = answer.read()
        if answer.status == 200:
            assert json.loads(data)["data"] == "peers-hunter2"
        else:
            assert b"hunter2" not in data
        return answer
    finally:
        conn.close()


def test_past_its_share_a_peer_gets_429_with_retry_after_never_a_reset(
    tmp_path: Path, moto_endpoint: str, secretsmanager: Any
) -> None:
    put_secret(secretsmanager, "ci/lifecycle/peers", json.dumps({"password": "peers-hunter2"}))
    # A header deadline far longer than the test, so that only the limits can free slots.
    extra = "max_connections_per_peer = 5\nheader_seconds = 120\n"
    with start(tmp_path, moto_endpoint, extra) as running:
        held = idle_connections(running.port, 5)  # the peer's whole share, idle
        try:
            assert closed_by_server(held, settle=1.0) == []
            before = running.log_mark()
            for _ in range(3):
                answer = runner_request(running, source=HOSTILE)
                assert answer.status == 429
                assert answer.getheader("Retry-After") == "2"
                assert answer.getheader("Connection") == "close"
            told = running.logged(before, 3)
            assert [(line["status"], line["outcome"]) for line in told] == [(429, "over-peer-limit")] * 3
            assert all(line["peer"] == HOSTILE for line in told)
            assert runner_request(running).status == 200  # another address is served meanwhile
            # What the peer holds still works; once it lets one go, it is served again.
            held[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert held[0].recv(1024).startswith(b"HTTP/1.1 200 ")
            held.pop(0).close()
            time.sleep(0.5)  # the server sees the end
            assert runner_request(running, source=HOSTILE).status == 200
        finally:
            for conn in held:
                conn.close()
        lines = [line for line in running.stderr if "max_connections_per_peer" in line]
        assert len(lines) == 1  # said once, not once per answer
        assert f"answering 429 to new connections from {HOSTILE}, which has 5 open" in lines[0]


def test_many_runners_behind_one_address_are_served_or_told_never_reset(
    tmp_path: Path, moto_endpoint: str, secretsmanager: Any
) -> None:
    """drone-go opens a connection per request, and runners behind NAT
    share an address (issue 25: 443 of 600 connections reset at a limit
    of 64). Past the limit each request gets an answer it can show."""
    put_secret(secretsmanager, "ci/lifecycle/peers", json.dumps({"password": "peers-hunter2"}))
    with start(tmp_path, moto_endpoint, "max_connections_per_peer = 4\nheader_seconds = 120\n") as running:
        busy = [
            socket.create_connection(("127.0.0.1", running.port), timeout=5, source_address=(RUNNER, 0))
            for _ in range(4)
        ]  # the runners' share, taken by steps in flight
        try:
            with ThreadPoolExecutor(2) as pool:  # two more runners at once, connection after connection
                told = list(pool.map(lambda _: runner_request(running).status, range(30)))
        finally:
            for conn in busy:
                conn.close()
        assert told == [429] * 30  # an exception (a reset) would have failed the map
        time.sleep(0.5)  # the server sees the ends
        with ThreadPoolExecutor(2) as pool:
            assert set(pool.map(lambda _: runner_request(running).status, range(20))) == {200}


def test_the_limit_per_peer_is_set_in_the_config(
    tmp_path: Path, moto_endpoint: str, secretsmanager: Any
) -> None:
    put_secret(secretsmanager, "ci/lifecycle/peers", json.dumps({"password": "peers-hunter2"}))
    extra = "max_connections = 40\nmax_connections_per_peer = 5\nheader_seconds = 120\n"
    with start(tmp_path, moto_endpoint, extra) as running:
        hostile = idle_connections(running.port, 20)
        try:
            # 5 served; 4 more to be told 429, closed when they send nothing in 1 s; 11 closed at once
            assert len(closed_by_server(hostile, settle=3.0)) == 15
            assert runner_request(running).status == 200
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
    the share is counted from accept, so silent TCP connections count, and
    past twice the limit they are closed before any handshake."""
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
            # 10 served, the 4 past them closed when no handshake comes in 1 s, the rest at once
            assert len(closed_by_server(silent, settle=3.0)) == 20
            assert runner_request(running).status == 200
        finally:
            for conn in silent:
                conn.close()


def test_two_addresses_cannot_take_every_connection(
    tmp_path: Path, moto_endpoint: str, secretsmanager: Any
) -> None:
    """Hostile review of issue 25: each address held its share served and
    as many again waiting for their 429, idle until the header deadline,
    so two addresses held every one of max_connections and everyone else
    got 503. Past its share, an address has a few connections more, each
    closed unless it sends its request at once; a share is at most a
    quarter of max_connections."""
    put_secret(secretsmanager, "ci/lifecycle/peers", json.dumps({"password": "peers-hunter2"}))
    extra = "max_connections = 40\nmax_connections_per_peer = 10\nheader_seconds = 120\n"
    with start(tmp_path, moto_endpoint, extra) as running:
        held = idle_connections(running.port, 30) + idle_connections(running.port, 30, HOSTILE_TOO)
        try:
            assert len(closed_by_server(held, settle=3.0)) == 40  # each keeps its 10 served, idle
            assert runner_request(running).status == 200
            answer = runner_request(running, source=HOSTILE)  # a request sent at once is told
            assert answer.status == 429 and answer.getheader("Retry-After") == "2"
        finally:
            for conn in held:
                conn.close()


def test_an_ipv6_peer_is_its_64() -> None:
    """One IPv6 host may hold a whole /64: its addresses share one share
    (as for the OIDC key refreshes). Loopback has one IPv6 address, so
    Peers is driven here with sockets of a pair standing for accepted ones."""
    from nomad_secrets.serve.listen import OVER_LIMIT_CONNECTIONS, Peers

    async def admitted() -> list[bool]:
        peers = Peers(2, header_seconds=10)
        pairs = [socket.socketpair() for _ in range(3 + OVER_LIMIT_CONNECTIONS)]
        try:
            told = [peers.admit(a, (f"2001:db8:1:2::{n + 1}", 40000 + n)) for n, (a, _) in enumerate(pairs)]
            told.append(peers.admit(pairs[0][1], ("2001:db8:1:3::1", 40000)))  # another /64
            return told
        finally:
            for a, b in pairs:
                a.close()
                b.close()

    told = asyncio.run(admitted())
    assert told == [True, True] + [True] * OVER_LIMIT_CONNECTIONS + [False, True]
