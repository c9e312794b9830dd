"""A key server that hangs, drips or answers garbage delays no request
that need not wait for it (issue 25): a token whose key is cached is
checked at once, a Drone request is never held up, tokens with made-up key
ids start at most one refresh per address per interval and hold a bounded
share of the door threads, and a stuck refresh is cut off in bounded time.

The key server is ``KeyServerDouble``: a double, because no real issuer
can be made to drip or hang on demand. Every check is an event (an answer
arrived while the refresh was still stuck; the double saw its client hang
up), never a measured time."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import aws_config, put_secret
from cryptography.hazmat.primitives.asymmetric import rsa
from support.serverutil import Server, drone_headers, secret_body, server_config, write_secret
from test_bitbucket import AUDIENCE, WORKSPACE, jwk, signed_token, step_claims

from nomad_secrets.process.deadline import Deadline
from nomad_secrets.serve import oidc

DRIP_EVERY = 0.5  # seconds between two bytes of a dripping answer
BUSY = b"too many requests are waiting for the issuer's keys; try again\n"
DRONE_SECRET = "d" * 64
RULE = f"""
[[bitbucket.rule]]
workspace = "{WORKSPACE}"
secrets = {{ NPM_TOKEN = "aws-sm:ci/keys/npm#token" }}
"""
DRONE = """
[drone]
secret_file = "{secret_file}"

[[drone.policy]]
repo = "octocat/*"
allow = ["aws-sm:ci/keys/*"]
"""


class KeyServerDouble:
    """An OIDC issuer's discovery document and keys that answer as told by
    ``mode``: "ok"; "drip" (a status line, then a header one byte every
    DRIP_EVERY seconds, never ending); "hang" (the request read, nothing
    answered); "garbage" (200 with a body that is not JSON). ``stuck`` is
    set when a request starts to drip or hang; ``cut_off`` when the client
    of such a request hangs up."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.mode = "ok"
        self.fetches: list[str] = []
        self.stuck = threading.Event()
        self.cut_off = threading.Event()
        self._stop = threading.Event()
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                double.fetches.append(self.path)
                if double.mode == "ok":
                    self._json(double.document(self.path))
                elif double.mode == "garbage":
                    self._raw(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n<html>oops")
                else:
                    double.stuck.set()
                    self._drip() if double.mode == "drip" else self._hang()

            def _json(self, document: Any) -> None:
                data = json.dumps(document).encode()
                self.send_response(200 if document else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _raw(self, data: bytes) -> None:
                self.wfile.write(data)
                self.wfile.flush()

            def _drip(self) -> None:
                try:
                    self._raw(b"HTTP/1.1 200 OK\r\nX-Drip: ")
                    while not double._stop.wait(DRIP_EVERY):
                        self._raw(b"a")
                except OSError:  # the client shut the connection: its own bound
                    double.cut_off.set()

            def _hang(self) -> None:
                self.connection.settimeout(None)
                try:
                    while self.connection.recv(1):
                        pass
                except OSError:
                    pass
                double.cut_off.set()  # the client hung up (or the double stopped)

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def document(self, path: str) -> dict[str, Any]:
        if path == "/.well-known/openid-configuration":
            return {"issuer": self.url, "jwks_uri": self.url + "/keys"}
        if path == "/keys":
            return {"keys": [jwk(self.key, "k1")]}
        return {}

    def token(self, kid: str = "k1") -> str:
        return signed_token(self.key, step_claims(self.url), kid)

    def close(self) -> None:
        self._stop.set()
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def keys() -> Iterator[KeyServerDouble]:
    double = KeyServerDouble()
    yield double
    double.close()


def start(tmp: Path, endpoint: str, keys: KeyServerDouble, server_extra: str) -> Server:
    secret_file = write_secret(tmp / "drone-secret", DRONE_SECRET)
    body = (
        aws_config(endpoint)
        + DRONE.format(secret_file=secret_file)
        + f'[bitbucket]\nissuer = "{keys.url}"\naudience = "{AUDIENCE}"\n'
        + RULE
    )
    return Server(*server_config(tmp, body, server_extra=server_extra))


def step(running: Server, token: str, source: str) -> tuple[int, bytes]:
    conn = running.connection(timeout=60, source=source)
    try:
        bearer = {"Authorization": f"Bearer {token}"}
        answer = running.request("GET", "/bitbucket/secrets", None, bearer, conn)
    finally:
        conn.close()
    return answer.status, answer.body


def drone(running: Server, source: str) -> tuple[int, bytes]:
    body = secret_body("aws-sm:ci/keys/npm", "token", repo="octocat/hello-world")
    conn = running.connection(timeout=60, source=source)
    try:
        answer = running.request("POST", "/drone/secret", body, drone_headers(DRONE_SECRET, body), conn)
    finally:
        conn.close()
    return answer.status, answer.body


def in_background(pool: ThreadPoolExecutor, call: Any, *args: Any) -> Future[tuple[int, bytes]]:
    future: Future[tuple[int, bytes]] = pool.submit(call, *args)
    return future


@pytest.mark.process  # a listening socket of its own
def test_a_read_that_hangs_to_the_cutoff_is_named_as_the_cutoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read blocked for the whole time times out at the same instant as
    the cut-off's timer, and either may be first. The run above once got
    "no answer from ... (TimeoutError)" where the timer's words were due:
    here the timer always loses, and the words are still the cut-off's."""
    import socket

    from nomad_secrets.serve import fetchjson

    monkeypatch.setattr(fetchjson._Cutoff, "_fire", lambda self: None)  # the read's timeout comes first
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (the backlog), never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/keys"
        with pytest.raises(fetchjson.NoAnswer) as raised:
            fetchjson.Fetcher().get(url, {}, Deadline(0.3), 1024)
    assert str(raised.value) == f"no complete answer from {url} within 0.3 s"


@pytest.mark.long
@pytest.mark.parametrize("mode", ["drip", "hang", "garbage"])
def test_a_cached_key_is_not_held_up_by_a_refresh_that_is(
    tmp_path: Path, moto_endpoint: str, secretsmanager: Any, keys: KeyServerDouble, mode: str
) -> None:
    put_secret(secretsmanager, "ci/keys/npm", json.dumps({"token": "npm-hunter2"}))
    with start(tmp_path, moto_endpoint, keys, "request_seconds = 8\n") as running:
        assert step(running, keys.token(), "127.0.0.4") == (200, b'{"NPM_TOKEN":"npm-hunter2"}')
        keys.mode = mode
        time.sleep(oidc.MIN_GAP_SECONDS + 0.1)  # past the least gap between two refreshes
        with ThreadPoolExecutor(1) as pool:
            # A token with a key id not among the keys: a refresh, which this request waits for.
            rotated = in_background(pool, step, running, keys.token(kid="k-new"), "127.0.0.5")
            if mode != "garbage":
                assert keys.stuck.wait(30)
                # The refresh is stuck; a token whose key is cached is answered now.
                assert step(running, keys.token(), "127.0.0.6")[0] == 200
                assert not rotated.done() and not keys.cut_off.is_set()
                assert drone(running, "127.0.0.2")[0] == 200
                # The refresh has a total bound, drip or not: the key server sees it hang up.
                assert keys.cut_off.wait(60)
                status, body = rotated.result(60)
                # It waited for the refresh (a quarter of its deadline shorter), which failed.
                assert status == 503 and body.startswith(b"cannot check the token: no complete answer from ")
                assert body.endswith(b"/.well-known/openid-configuration within 6 s\n")
            else:
                status, body = rotated.result(60)
                assert status == 503 and body.endswith(
                    b"/.well-known/openid-configuration answered 200, not a JSON object\n"
                )
                assert step(running, keys.token(), "127.0.0.6")[0] == 200
        said = [line for line in running.stderr if "cannot refresh the OIDC keys" in line]
        end = time.monotonic() + 10
        while not said and time.monotonic() < end:  # stderr reaches us a little later
            time.sleep(0.1)
            said = [line for line in running.stderr if "cannot refresh the OIDC keys" in line]
        assert said and "keeping the 1 key(s) there are" in said[0]
        expected = "within 6 s" if mode != "garbage" else "not a JSON object"
        assert expected in said[0]


@pytest.mark.long
def test_made_up_key_ids_start_one_refresh_per_address_and_hold_few_threads(
    tmp_path: Path, moto_endpoint: str, secretsmanager: Any, keys: KeyServerDouble
) -> None:
    """As issue 25's attack: junk tokens with fresh kids (anyone can make
    them), from one address, then from many, while the key server hangs."""
    put_secret(secretsmanager, "ci/keys/npm", json.dumps({"token": "npm-hunter2"}))
    # An eighth of 8 door threads: one request may wait for the keys at a time.
    with start(tmp_path, moto_endpoint, keys, "max_concurrent_reads = 8\n") as running:
        assert step(running, keys.token(), "127.0.0.4")[0] == 200
        fetched = len(keys.fetches)
        time.sleep(oidc.MIN_GAP_SECONDS + 0.1)
        # One address, ten made-up kids: one refresh (discovery and keys), the rest refused at once.
        assert [step(running, keys.token(kid=f"junk-{n}"), "127.0.0.8")[0] for n in range(10)] == [401] * 10
        assert keys.fetches[fetched:] == ["/.well-known/openid-configuration", "/keys"]
        # Now the key server hangs, and junk comes from twenty addresses at once.
        keys.mode = "hang"
        time.sleep(oidc.MIN_GAP_SECONDS + 0.1)
        with ThreadPoolExecutor(20) as pool:
            junk = [
                in_background(pool, step, running, keys.token(kid=f"flood-{n}"), f"127.0.1.{n + 1}")
                for n in range(20)
            ]
            end = time.monotonic() + 60
            while sum(f.done() for f in junk) < 19 and time.monotonic() < end:
                time.sleep(0.05)
            told = [f.result() for f in junk if f.done()]
            assert told == [(503, b"cannot check the token: " + BUSY)] * 19
            # One waits for the stuck refresh; the door threads are free for everyone else.
            assert keys.stuck.is_set()
            assert drone(running, "127.0.0.2")[0] == 200
            assert step(running, keys.token(), "127.0.0.6")[0] == 200
            (waiting,) = [f for f in junk if not f.done()]
            assert waiting.result(60)[0] == 503


class Clock:
    """The key cache's clock, moved by the test: the intervals pass at once."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.process
def test_a_failing_key_server_is_asked_again_no_sooner_than_the_interval(keys: KeyServerDouble) -> None:
    """While keys are cached, tokens with made-up kids from ever new
    addresses (each may start one refresh) must not make the server ask a
    failing key server once per MIN_GAP_SECONDS: a failed refresh is tried
    again no sooner than MIN_REFRESH_SECONDS later (hostile review of
    issue 25: about once a second). The cache's clock is the test's."""
    clock = Clock()
    issuer = oidc.IssuerKeys(keys.url, 3600, refresh_seconds=5, max_waiting=8, clock=clock)
    issuer.key("k1", Deadline(10), "127.0.0.1")
    assert keys.fetches == ["/.well-known/openid-configuration", "/keys"]
    keys.mode = "garbage"
    clock.advance(oidc.MIN_GAP_SECONDS)
    with pytest.raises(oidc.IssuerUnavailable, match="not a JSON object"):
        issuer.key("junk-1", Deadline(10), "127.0.2.1")
    assert len(keys.fetches) == 3  # the refresh it started, which failed at discovery
    failed_at = clock.now
    for n in (2, 3):  # new addresses, each past the least gap, within the interval
        clock.advance(oidc.MIN_GAP_SECONDS)
        with pytest.raises(oidc.IssuerUnavailable, match="not a JSON object"):
            issuer.key(f"junk-{n}", Deadline(10), f"127.0.2.{n}")
    clock.now = failed_at + oidc.MIN_REFRESH_SECONDS - 0.001  # the last moment within the interval
    with pytest.raises(oidc.IssuerUnavailable, match="not a JSON object"):
        issuer.key("junk-5", Deadline(10), "127.0.2.5")
    assert len(keys.fetches) == 3
    assert issuer.key("k1", Deadline(10), "127.0.2.9") is not None  # the cached key still serves
    clock.now = failed_at + oidc.MIN_REFRESH_SECONDS  # the interval since the failure has passed
    keys.mode = "ok"
    with pytest.raises(oidc.InvalidToken):  # asked again: the kid is not among the keys
        issuer.key("junk-4", Deadline(10), "127.0.2.4")
    assert len(keys.fetches) == 5
