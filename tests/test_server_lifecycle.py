"""The server as a process: health, routes, limits, TLS, trust, and a
graceful stop on SIGTERM that finishes the requests in flight."""

from __future__ import annotations

import http.client
import io
import json
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import aws_config, put_secret
from support.netutil import HangingServer, RecordingProxy
from support.pki import make_pki
from support.serverutil import ROOT, Server, secret_body, server_config, write_secret

from nomad_secrets.core import config as config_module
from nomad_secrets.process.deadline import Deadline
from nomad_secrets.serve.settings import parse_settings
from nomad_secrets.serve.stores import ServerStores

SECRET = "5feceb66ffc86f38d952786c6d696c795feceb66ffc86f38d9"
DRONE = """
[drone]
secret_file = "{secret_file}"

[[drone.policy]]
repo = "octocat/*"
allow = ["aws-sm:ci/lifecycle/*"]
"""


def drone_config(tmp: Path, endpoint: str, server_extra: str = "", **kw: Any) -> tuple[Path, int]:
    secret_file = write_secret(tmp / "drone-secret", SECRET)
    return server_config(
        tmp, aws_config(endpoint) + DRONE.format(secret_file=secret_file), server_extra=server_extra, **kw
    )


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, moto_endpoint: str, secretsmanager: Any
) -> Iterator[Server]:
    put_secret(secretsmanager, "ci/lifecycle/one", json.dumps({"v": "lifecycle-hunter2"}))
    config, port = drone_config(
        tmp_path_factory.mktemp("life"), moto_endpoint, "header_seconds = 1\nrequest_seconds = 1.5\n"
    )
    with Server(config, port) as running:
        yield running


def test_healthz_and_unknown_routes(server: Server) -> None:
    before = server.log_mark()
    health = server.get("/healthz")
    assert (health.status, health.body) == (200, b"ok\n")
    assert server.get("/nope").status == 404
    wrong = server.get("/drone/secret")
    assert wrong.status == 405 and wrong.headers["allow"] == "POST"
    logged = [(line["path"], line["status"], line["outcome"]) for line in server.logged(before, 3)]
    assert logged == [
        ("/healthz", 200, "ok"),
        ("/nope", 404, "no-such-path"),
        ("/drone/secret", 405, "wrong-method"),
    ]


def test_the_access_log_writes_any_text_and_never_raises() -> None:
    """stdout is strict UTF-8, and a string from JSON may hold half of a
    surrogate pair: the line is written (escaped) all the same, and a
    stream that fails loses the line, not the request's answer."""
    from starlette.requests import Request

    from nomad_secrets.serve.app import AccessLog
    from nomad_secrets.serve.exchange import text

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/drone/admission",
        "headers": [],
        "client": ("10.0.0.7", 1),
    }
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="\n")
    AccessLog(stream).write(
        Request(scope), text(403, "no", "denied", login="mallory\ud800"), time.monotonic()
    )
    stream.seek(0)
    (line,) = stream.read().splitlines()
    assert json.loads(line)["login"] == "mallory\ud800" and "\\ud800" in line
    stream.close()  # a closed stream: writing fails, and the failure stays in the log's hands
    AccessLog(stream).write(Request(scope), text(403, "no", "denied"), time.monotonic())


def test_slow_headers_are_cut_off(server: Server) -> None:
    """Headers that never end, a byte every 0.4 s (under the 1 s header
    deadline between any two): the server hangs up while they still come,
    which it never would if each byte reset a timer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST /drone/secret HTTP/1.1\r\nHost: x\r\n")
        closed = False
        for _ in range(100):  # 40 s of bytes at most: the test's bound, not the server's
            readable, _, _ = select.select([sock], [], [], 0.4)
            try:
                closed = bool(readable) and sock.recv(1024) == b""
                if not closed:
                    sock.sendall(b"X")
            except OSError:
                closed = True
            if closed:
                break
        assert closed, "the server waited for headers that never end"


def test_a_slow_body_gets_408(server: Server) -> None:
    """A body that stops short of its Content-Length: the request deadline
    answers 408 while the rest is still awaited."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /drone/secret HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408 "), answer


def test_keep_alive_requests_each_get_their_header_deadline(server: Server) -> None:
    conn = server.connection()
    for _ in range(3):
        assert server.request("GET", "/healthz", conn=conn).status == 200
        time.sleep(0.6)  # idle between requests: the keep-alive timeout's, not the header deadline's
    conn.close()


def request_in_flight(
    running: Server, slow: RecordingProxy, reference: str
) -> tuple[threading.Thread, list[int]]:
    """A Drone request for ``reference``, started and waiting on the slow
    store; its status lands in the list once answered."""
    results: list[int] = []
    thread = threading.Thread(
        target=lambda: results.append(running.drone_secret(SECRET, secret_body(reference, "v")).status)
    )
    thread.start()
    while not slow.requests:
        time.sleep(0.02)
    return thread, results


def test_sigterm_finishes_the_request_in_flight_then_exits_0(
    tmp_path: Path, moto_endpoint: str, secretsmanager: Any
) -> None:
    put_secret(secretsmanager, "ci/lifecycle/one", json.dumps({"v": "lifecycle-hunter2"}))
    with RecordingProxy(moto_endpoint, delay=1.5) as slow:
        config, port = drone_config(tmp_path, slow.url, "request_seconds = 8\n")
        with Server(config, port) as running:
            thread, results = request_in_flight(running, slow, "aws-sm:ci/lifecycle/one")
            assert running.proc is not None
            running.proc.send_signal(15)
            time.sleep(0.3)
            with pytest.raises(OSError):
                running.get("/healthz")  # no new connection once stopping
            thread.join(10)
            assert results == [200]
            assert running.proc.wait(10) == 0
            assert "Finished server process" in "".join(running.stderr)


def test_tls_serves_with_the_configured_certificate(tmp_path: Path, moto_endpoint: str) -> None:
    pki = make_pki(tmp_path)
    config, port = drone_config(
        tmp_path, moto_endpoint, tls=(tmp_path / "server.pem", tmp_path / "server_key.pem")
    )
    with Server(config, port, ca_file=pki.server_ca) as running:
        assert running.get("/healthz").status == 200  # verified against the test CA
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
        with pytest.raises((http.client.HTTPException, OSError)):
            plain.request("GET", "/healthz")
            plain.getresponse()


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nomad_secrets", "serve", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_files_are_held_to_the_trust_rules_and_nomad_task_skips_only_the_directories(
    tmp_path: Path, moto_endpoint: str
) -> None:
    config, _ = drone_config(tmp_path, moto_endpoint)
    checked = run_serve("--config", str(config), "--check")
    assert (
        checked.returncode == 0
        and "would serve /drone/secret, /healthz on http://127.0.0.1:" in checked.stdout
    )
    (tmp_path / "drone-secret").chmod(0o620)
    refused = run_serve("--config", str(config), "--check")
    assert refused.returncode == 2 and "drone-secret is writable by group or others" in refused.stderr
    (tmp_path / "drone-secret").chmod(0o600)
    task = tmp_path / "alloc" / "task" / "secrets"  # as Nomad makes a task's directories: 0777
    task.mkdir(parents=True)
    for directory in (task, task.parent, task.parent.parent):
        directory.chmod(0o777)
    inside, _ = drone_config(task, moto_endpoint)
    refused = run_serve("--config", str(inside), "--check")
    assert refused.returncode == 2 and "writable by group or others" in refused.stderr
    accepted = run_serve("--config", str(inside), "--nomad-task", "--check")
    assert accepted.returncode == 0, accepted.stderr
    (task / "drone-secret").chmod(0o666)  # the files themselves are still checked
    refused = run_serve("--config", str(inside), "--nomad-task", "--check")
    assert refused.returncode == 2 and "drone-secret is writable by group or others" in refused.stderr


def test_short_secrets_and_missing_tls_are_refused_at_start(tmp_path: Path, moto_endpoint: str) -> None:
    config, _ = drone_config(tmp_path, moto_endpoint)
    write_secret(tmp_path / "drone-secret", "too-short\n")
    refused = run_serve("--config", str(config), "--check")
    assert refused.returncode == 2 and "has 9 bytes; it needs at least 32" in refused.stderr
    no_tls = tmp_path / "no-tls.toml"
    write_secret(no_tls, config.read_text().replace("plain_http = true\n", ""))
    refused = run_serve("--config", str(no_tls), "--check")
    assert refused.returncode == 2 and "has no TLS" in refused.stderr


def test_aws_clients_are_made_once_and_shared_by_requests(moto_endpoint: str) -> None:
    config = config_module.parse(
        (
            aws_config(moto_endpoint)
            + '[drone]\nsecret_file = "x"\n[[drone.policy]]\nallow = ["*:**"]\n[server]\nplain_http = true\n'
        ).encode(),
        "t.toml",
    )
    settings = parse_settings(config)
    pool = ServerStores(settings.config, 5, "aws-sm")
    seen = []
    for _ in range(2):
        with pool.backends(Deadline(5)) as backend_for:
            seen.append((backend_for("aws-sm"), backend_for("aws-ssm")))
    assert seen[0][0] is seen[1][0] and seen[0][1] is seen[1][1]
    assert seen[0][0].client._endpoint.http_session._max_pool_connections >= 32  # type: ignore[attr-defined]
    assert len(pool.pool) == 2  # the pool the node agent keeps too


def test_a_store_the_server_cannot_read_is_said_at_start_and_per_request(
    tmp_path: Path, moto_endpoint: str
) -> None:
    config, port = drone_config(tmp_path, moto_endpoint)
    write_secret(config, config.read_text().replace('region = "us-east-2"\n', ""))
    with Server(config, port) as running:
        answer = running.drone_secret(SECRET, secret_body("aws-sm:ci/lifecycle/one", "v"))
        warned = "".join(running.stderr)
    assert "warning: the server cannot read aws-sm (no AWS region): set aws.region" in warned
    assert answer.status == 500 and b"the server cannot read aws-sm (no AWS region)" in answer.body


def test_the_plugin_executable_does_not_serve(artifact: Path) -> None:
    ran = subprocess.run([str(artifact), "serve"], capture_output=True, text=True, env={}, timeout=30)
    assert (
        ran.returncode == 2
        and "serve is not part of this executable" in ran.stderr
        and "docs/ci.md" in ran.stderr
    )


def test_a_busy_port_is_said_before_anything_is_announced(tmp_path: Path, moto_endpoint: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config, _ = drone_config(tmp_path, moto_endpoint, port=port)
        ran = run_serve("--config", str(config))
    assert ran.returncode == 3  # docs/ci.md: cannot listen
    assert f"cannot listen on 127.0.0.1:{port}: the address is in use" in ran.stderr
    assert "http://" not in ran.stderr  # no "serving on" before the failure
    assert "Traceback" not in ran.stderr


def test_plain_http_off_loopback_is_warned_at_check_and_at_start(tmp_path: Path, moto_endpoint: str) -> None:
    config, port = drone_config(tmp_path, moto_endpoint)
    quiet = run_serve("--config", str(config), "--check")
    assert quiet.returncode == 0 and "warning" not in quiet.stderr  # 127.0.0.1 is loopback
    # 192.0.2.1 (TEST-NET-1, for documentation) is no address of this host:
    # the server cannot listen there, so nothing is ever reachable or sent.
    write_secret(config, config.read_text().replace('listen = "127.0.0.1:', 'listen = "192.0.2.1:'))
    warning = f"warning: server.plain_http = true on 192.0.2.1:{port}, which is not a loopback address"
    checked = run_serve("--config", str(config), "--check")
    assert checked.returncode == 0 and "would serve" in checked.stdout  # warned, not refused
    assert warning in checked.stderr and "clear text" in checked.stderr
    started = run_serve("--config", str(config))
    assert warning in started.stderr
    assert started.returncode == 3
    assert f"cannot listen on 192.0.2.1:{port}: 192.0.2.1 is not an address of this host" in started.stderr


@pytest.mark.parametrize("listen", ["[::1]", "localhost", "127.0.0.2"])
def test_plain_http_on_loopback_is_not_warned(tmp_path: Path, moto_endpoint: str, listen: str) -> None:
    config, _ = drone_config(tmp_path, moto_endpoint)
    write_secret(config, config.read_text().replace('listen = "127.0.0.1', f'listen = "{listen}'))
    checked = run_serve("--config", str(config), "--check")
    assert checked.returncode == 0 and checked.stderr == ""


@pytest.mark.process
def test_a_store_too_slow_gets_504_naming_the_servers_setting(tmp_path: Path) -> None:
    with HangingServer() as hanging:
        config, port = drone_config(tmp_path, hanging.url, "request_seconds = 1\n")
        with Server(config, port) as running:
            answer = running.drone_secret(SECRET, secret_body("aws-sm:ci/lifecycle/one", "v"))
    assert answer.status == 504
    message = answer.body.decode()
    assert "'aws-sm:ci/lifecycle/one' (AWS Secrets Manager)" in message
    assert "no answer within the server's 1 s deadline" in message
    assert "server.request_seconds" in message
    assert "plugin" not in message


def test_a_secret_file_readable_by_everyone_is_refused(tmp_path: Path, moto_endpoint: str) -> None:
    pki = make_pki(tmp_path)
    key = tmp_path / "server_key.pem"
    config, _ = drone_config(tmp_path, moto_endpoint, tls=(tmp_path / "server.pem", key))
    secret = tmp_path / "drone-secret"
    for path, name in ((secret, "drone.secret_file"), (key, "server.tls_key")):
        for mode in (0o644, 0o604):
            path.chmod(mode)
            refused = run_serve("--config", str(config), "--check")
            assert refused.returncode == 2
            assert f"the file of {name} ({path}) is readable by everyone (mode {mode:04o})" in refused.stderr
            assert f"chmod o-r {path}" in refused.stderr
        path.chmod(0o640)  # a group the operator chose (Debian's ssl-cert): allowed
        accepted = run_serve("--config", str(config), "--check")
        assert accepted.returncode == 0, accepted.stderr
        path.chmod(0o600)
    assert pki.server_ca.exists()


def test_sighup_stops_it_as_sigterm_does(tmp_path: Path, moto_endpoint: str, secretsmanager: Any) -> None:
    """An operator sends SIGHUP after replacing a key file: its default ended
    the server mid-request with nothing said (exit 129). Now the request in
    flight is answered, the server says why it stops, and exits 0."""
    put_secret(secretsmanager, "ci/lifecycle/hup", json.dumps({"v": "lifecycle-hunter2"}))
    with RecordingProxy(moto_endpoint, delay=1.5) as slow:
        config, port = drone_config(tmp_path, slow.url, "request_seconds = 8\n")
        with Server(config, port) as running:
            thread, results = request_in_flight(running, slow, "aws-sm:ci/lifecycle/hup")
            assert running.proc is not None
            running.proc.send_signal(signal.SIGHUP)
            thread.join(10)
            assert results == [200]
            assert running.proc.wait(10) == 0
            assert "SIGHUP: stopping as for SIGTERM" in "".join(running.stderr)


def test_a_path_answered_before_routing_never_shows_the_endpoint_token() -> None:
    """The 429 past a peer's share is answered before any route matched:
    its log line showed the Woodpecker endpoint token in full."""
    from starlette.requests import Request

    from nomad_secrets.serve.app import shown_path

    scope = {"type": "http", "method": "POST", "path": "/woodpecker/secrets/" + "s3cret" * 8, "headers": []}
    assert shown_path(Request(scope)) == "/woodpecker/secrets/{token}"
    assert shown_path(Request({**scope, "path": "/drone/secret"})) == "/drone/secret"
