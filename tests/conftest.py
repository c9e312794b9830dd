"""Shared fixtures: the built executable, moto's server, a plugin directory.

Everything talks to 127.0.0.1 only, and every config the plugin sees names
its endpoint and static test credentials, so no credential chain ever runs
(no instance metadata probe, no real AWS or Vault host).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import gocheck
from support.agent_process import stop_agent
from support.builds import Built
from support.gocheck import GoDecoder
from support.nomad import NomadClient, install_plugin, with_policy

# the real OpenBao and PostgreSQL servers' fixtures, and a fresh node's (tests/support/)
pytest_plugins = ["support.openbao", "support.postgres", "support.node"]
ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-2"


def interpreter() -> str:
    """The shebang interpreter: NOMAD_SECRETS_TEST_PYTHON, else the base
    interpreter of this venv (what an operator's /usr/bin/python3 would be)."""
    chosen = os.environ.get("NOMAD_SECRETS_TEST_PYTHON")
    if chosen:
        return chosen
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def run_build(
    output: Path, cache_dir: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """scripts/build for this run's interpreter, its output captured; its
    agents' sockets in this run's own directory unless ``extra`` names one."""
    if "--socket-dir" not in extra:
        extra = (*extra, "--socket-dir", str(SOCKETS))
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "build"),
            "--python",
            interpreter(),
            "--output",
            str(output),
            "--cache-dir",
            str(cache_dir),
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


# The builds this process made with scripts/build, by interpreter and the
# arguments but the cache directory (support/builds.py).
_BUILT: dict[tuple[str, ...], Built] = {}


def build_artifact(output: Path, cache_dir: Path, *extra: str) -> Path:
    """scripts/build's executable for ``cache_dir`` at ``output``: the first of
    these arguments built by it, later ones written again from that one
    (support/builds.py). A test of the build itself calls run_build."""
    key = (interpreter(), *extra)
    built = _BUILT.get(key)
    if built is not None:
        return built.write(output, cache_dir)
    run = run_build(output, cache_dir, *extra)
    assert run.returncode == 0, run.stdout + run.stderr
    _BUILT[key] = Built(output)
    return output


# The node agents' socket directory of every executable this process
# builds: its own (short: a unix socket path holds 107 bytes), so that no
# agent a test starts meets the machine's, nor another worker's (xdist: each
# worker is a process of its own), and every one still running at the end
# is stopped (the socket_dir fixture), that worker's only.
SOCKETS = Path(tempfile.mkdtemp(prefix="ns-run-", dir="/tmp"))
SOCKETS.chmod(0o755)


@pytest.fixture(scope="session", autouse=True)
def socket_dir() -> Iterator[Path]:
    yield SOCKETS
    stop_agents(SOCKETS)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Every process made a socket directory on import, xdist's controller
    too, which runs no test: none is left behind."""
    shutil.rmtree(SOCKETS, ignore_errors=True)


def stop_agents(directory: Path) -> None:
    """Stop every agent listening in ``directory``."""
    for sock in directory.glob("*.sock"):
        stop_agent(sock)


@pytest.fixture(scope="session")
def artifact(tmp_path_factory: pytest.TempPathFactory, socket_dir: Path) -> Path:
    """The executable under test: built here, or (CI's matrix) the one
    NOMAD_SECRETS_TEST_ARTIFACT names, built once for every Python, with its
    shebang pointed at this run's interpreter."""
    top = tmp_path_factory.mktemp("artifact")
    prebuilt = os.environ.get("NOMAD_SECRETS_TEST_ARTIFACT")
    if prebuilt:
        exe = reshebang(Path(prebuilt), top / "nomad-secrets", interpreter())
    else:
        exe = build_artifact(top / "nomad-secrets", top / "cache")
    # Unpacked here, as on a node that has run it before: a test's first
    # fetch would spend part of its deadline unpacking (a 2 s deadline in
    # test_vault_faults saw 2 reads, not 4). A first unpack is the `node`
    # fixture's (support/node.py), whose builds have caches of their own.
    run = subprocess.run([str(exe), "--help"], env={}, capture_output=True, check=False)
    assert (run.returncode, run.stderr) == (0, b""), run
    return exe


def reshebang(source: Path, output: Path, python: str) -> Path:
    """A copy of ``source`` run by ``python``. The zip inside does not mind:
    Python's zip reader finds its entries from the end of the file."""
    data = source.read_bytes()
    assert data.startswith(b"#!"), source
    body = data.split(b"\n", 1)[1]
    output.write_bytes(f"#!{python} -IS\n".encode() + body)
    output.chmod(0o755)
    return output


def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of this whole run: with xdist, the one that holds each
    worker's own (a worker's base temp is <run>/<worker id>)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def go_builds(config: pytest.Config) -> Iterator[Path]:
    """Where the Go test programs are built (pytest's cache directory, kept
    between runs), held by one process at a time. A program is compiled
    again only when its source or the toolchain changes (gocheck.build's
    key): compiling the Woodpecker signer from nothing costs 9 s of CPU.
    Under ``-p no:cacheprovider``, the run's own directory."""
    cache: pytest.Cache | None = getattr(config, "cache", None)
    if cache is not None:
        shared = cache.mkdir("go")
    else:
        shared = run_dir(config._tmp_path_factory) / "go"  # type: ignore[attr-defined]  # as below
        shared.mkdir(exist_ok=True)
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield shared


@pytest.fixture(scope="session")
def decoder(pytestconfig: pytest.Config) -> GoDecoder:
    """Go's encoding/json and go-version, as the Nomad client decodes:
    compiled once, not once a worker or a run."""
    with go_builds(pytestconfig) as shared:
        try:
            return gocheck.decoder(shared)
        except gocheck.GoMissing as missing:
            pytest.skip(str(missing))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Iterator[None]:
    """After pytest's own summary: how many tests were skipped for each thing
    this machine lacks (a skip reason that starts with "needs")."""
    yield
    needs: Counter[str] = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        if isinstance(report.longrepr, tuple):
            reason = report.longrepr[2].removeprefix("Skipped: ")
            if reason.startswith("needs"):
                needs[reason] += 1
    if needs:
        terminalreporter.section("skipped for what this machine lacks")
        for reason, count in needs.most_common():
            terminalreporter.write_line(f"{count} test{'s' * (count != 1)} skipped: {reason}")


# The unit tier (`scripts/test --unit`, or `-m unit`): every test that needs
# none of these fixtures and is not marked `process`. Such a test may start
# no process and listen on no socket (the guard below fails it if it does):
# the tier stays fast, and says so when a test stops belonging to it.
PROCESS_FIXTURES = frozenset({"artifact", "moto_endpoint", "moto_iam", "bao_binary", "decoder"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "unit: starts no process and no server (set by conftest.py)")
    config.addinivalue_line("markers", "process: starts a process or a server itself: not in the unit tier")
    config.addinivalue_line(
        "markers", "serial: runs while no other worker runs a test (pytest_runtest_protocol here)"
    )
    config.addinivalue_line(
        "markers", "long: waits seconds (a timeout, a slow store, an install): started early in its phase"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if not fixtures & PROCESS_FIXTURES and item.get_closest_marker("process") is None:
            item.add_marker(pytest.mark.unit)

    # The tests that run alone go first, one after another: a serial test
    # met later waits for every running test to end while the other workers
    # stand idle (pytest_runtest_protocol). Then the other process tests,
    # with the tests marked long spread over the first half of them: run
    # together, they left the cores a third idle while they waited; last,
    # one would hold up the end of the run alone. The unit tier fills the
    # end: tests of a few milliseconds. Stable, so every worker collects the
    # same order, as xdist requires.
    def phase(item: pytest.Item) -> str:
        for mark in ("serial", "unit", "long"):
            if item.get_closest_marker(mark) is not None:
                return mark
        return "other"

    by: dict[str, list[pytest.Item]] = {"serial": [], "unit": [], "long": [], "other": []}
    for item in items:
        by[phase(item)].append(item)
    step = len(by["other"]) / 2 / max(len(by["long"]), 1)  # one long test every `step` others
    before: dict[int, list[pytest.Item]] = {}
    for j, item in enumerate(by["long"]):
        before.setdefault(int(j * step), []).append(item)
    spread: list[pytest.Item] = []
    for i, item in enumerate(by["other"]):
        spread += before.pop(i, [])
        spread.append(item)
    spread += [item for rest in before.values() for item in rest]  # no others to go between
    items[:] = by["serial"] + spread + by["unit"]


# How many serial tests this run holds, once collected and selected.
SERIAL_TESTS = pytest.StashKey[int]()
SERIAL_WAIT_SECONDS = 300  # a serial test that never ends (a worker lost) holds no one longer


def pytest_collection_finish(session: pytest.Session) -> None:
    session.config.stash[SERIAL_TESTS] = sum(
        1 for item in session.items if item.get_closest_marker("serial") is not None
    )


@pytest.fixture(autouse=True)
def _unit_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("unit") is None:
        return

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(
            "a unit-tier test started a process or a server: mark it pytest.mark.process (tests/conftest.py)"
        )

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)
    monkeypatch.setattr(socket.socket, "listen", refuse)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """With xdist, a test marked ``serial`` (a burst that needs the cores,
    a bound only one machine's load can meet) runs alone: it holds the
    run's machine lock exclusively, every other test holds it shared. Held
    around the whole test, its fixtures' setup included: a worker's first
    test starts that worker's servers and makes its build, and that must
    not run beside a burst. The serial tests come first (their order is
    every worker's), and no other test starts until each of them has ended
    (a line each in <run>/serial.done): a test started between two of them
    held up the next one, a long one for seconds. The turnstile keeps new
    tests out while a serial one waits for the running ones to end."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    run = run_dir(item.config._tmp_path_factory)  # type: ignore[attr-defined]  # the tmp_path_factory fixture's
    serial = item.get_closest_marker("serial") is not None
    if not serial:
        after_the_serial_tests(run / "serial.done", item.config.stash.get(SERIAL_TESTS, 0))
    with open(run / "turnstile.lock", "w") as turnstile, open(run / "machine.lock", "w") as machine:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        if serial:
            fcntl.flock(machine, fcntl.LOCK_EX)
            try:
                yield
            finally:
                with open(run / "serial.done", "a") as done:
                    done.write(f"{item.nodeid}\n")
            return  # closing the files lets both go
        fcntl.flock(turnstile, fcntl.LOCK_UN)
        fcntl.flock(machine, fcntl.LOCK_SH)
        yield


# When this worker stops waiting for the serial tests: set at its first wait,
# once for the run (a serial test lost with its worker never writes its line,
# and each test waiting its own 300 s would hold the run for hours).
SERIAL_WAIT_ENDS: list[float] = []


def after_the_serial_tests(done: Path, count: int) -> None:
    """Wait until ``count`` serial tests have ended (``done`` has a line each)."""
    if not SERIAL_WAIT_ENDS:
        SERIAL_WAIT_ENDS.append(time.monotonic() + SERIAL_WAIT_SECONDS)
    while count and time.monotonic() < SERIAL_WAIT_ENDS[0]:
        with contextlib.suppress(FileNotFoundError):
            if done.read_text().count("\n") >= count:
                return
        time.sleep(0.05)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def aws_client(endpoint: str, service: str) -> Any:
    import botocore.session

    return botocore.session.Session().create_client(
        service,
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(scope="session")
def secretsmanager(moto_endpoint: str) -> Any:
    return aws_client(moto_endpoint, "secretsmanager")


@pytest.fixture(scope="session")
def ssm(moto_endpoint: str) -> Any:
    return aws_client(moto_endpoint, "ssm")


class MotoIam:
    """A second moto server with IAM enforced, and a user ``node`` allowed
    nothing but sts:GetCallerIdentity: every read there is denied."""

    def __init__(self, endpoint: str, key_id: str, secret: str) -> None:
        self.endpoint, self.key_id, self.secret = endpoint, key_id, secret

    def config(self) -> str:
        return (
            f'[aws]\nendpoint_url = "{self.endpoint}"\naccess_key_id = "{self.key_id}"\n'
            f'secret_access_key = "{self.secret}"\nregion = "{REGION}"\n'
        )


@contextlib.contextmanager
def moto_process(env: dict[str, str] | None = None) -> Iterator[str]:
    """moto's server in its own process (its own state: another AWS
    account, as far as the plugin can tell); yields its endpoint."""

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


@pytest.fixture(scope="session")
def moto_iam() -> Iterator[MotoIam]:
    import json

    # The first 5 requests are let through unauthenticated: the setup below.
    with moto_process({"INITIAL_NO_AUTH_ACTION_COUNT": "5"}) as endpoint:
        iam = aws_client(endpoint, "iam")
        iam.create_user(UserName="node")
        key = iam.create_access_key(UserName="node")["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "sts:GetCallerIdentity", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="node", PolicyName="nothing", PolicyDocument=json.dumps(policy))
        aws_client(endpoint, "secretsmanager").create_secret(Name="denied-secret", SecretString="x")
        aws_client(endpoint, "ssm").put_parameter(Name="/denied/p", Value="x", Type="String")
        yield MotoIam(endpoint, key["AccessKeyId"], key["SecretAccessKey"])


def put_secret(client: Any, name: str, value: str) -> None:
    """Create the secret, or give it a new current value: moto's server is
    shared by the whole session, and some names are used by several tests."""
    try:
        client.create_secret(Name=name, SecretString=value)
    except client.exceptions.ResourceExistsException:
        client.put_secret_value(SecretId=name, SecretString=value)


def aws_config(endpoint: str, extra: str = "") -> str:
    return (
        "[aws]\n"
        f'endpoint_url = "{endpoint}"\n'
        'access_key_id = "testing"\n'
        'secret_access_key = "testing"\n'
        f'region = "{REGION}"\n' + extra
    )


@pytest.fixture
def plugin_dir(tmp_path: Path, artifact: Path, moto_endpoint: str) -> Path:
    """A common_plugin_dir with the executable installed as ``aws``."""
    top = tmp_path / "common_plugins"
    install_plugin(artifact, top, ["aws"], aws_config(moto_endpoint))
    return top


@pytest.fixture
def nomad(plugin_dir: Path, decoder: GoDecoder) -> NomadClient:
    return NomadClient(plugin_dir, decoder)


def doc_block(doc: Path, marker: str, language: str = "toml") -> str:
    """The ```language block of ``doc`` that holds ``marker``: the example a
    test runs as the docs show it."""
    import re

    for match in re.finditer(rf"^```{language}\n(.*?)^```", doc.read_text(), re.M | re.S):
        if marker in match.group(1):
            return match.group(1)
    raise AssertionError(f"{doc.name} lost its {language} example with {marker!r}")


def write_config(plugin_dir: Path, text: str) -> Path:
    path = plugin_dir / "secrets" / "nomad-secrets.toml"
    path.write_text(with_policy(text))
    path.chmod(0o600)
    return path
