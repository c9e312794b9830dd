"""The node agent through the built executable: the plugin forwards to it
when the operator sets agent.socket, gets the same answers, imports no
store library on that path, and fetches in process whenever the agent is
absent, refuses, hangs or is not root's."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_process import AgentProcess, socket_path
from conftest import aws_config, interpreter, put_secret, write_config
from nomad import NomadClient, limited, nomad_env, with_policy

from nomad_secrets.agent.server import OUT_OF_MEMORY

REGION_ENV = {"AWS_REGION": "us-east-2"}
MiB = 1 << 20


def agent_config(endpoint: str, sock: Path, log: Path | None = None, extra: str = "") -> str:
    text = aws_config(endpoint, extra) + f'[agent]\nsocket = "{sock}"\n'
    if log is not None:
        text += f'[plugin]\ndebug_log = "{log}"\n'
    return text


@pytest.fixture
def sock() -> Iterator[Path]:
    with socket_path() as path:
        yield path


@pytest.fixture
def agent(nomad: NomadClient, moto_endpoint: str, sock: Path, tmp_path: Path) -> Iterator[AgentProcess]:
    write_config(nomad.plugin_dir, agent_config(moto_endpoint, sock, tmp_path / "debug.log"))
    running = AgentProcess(nomad.executable("aws"))
    running.wait_for("listening")
    yield running
    assert running.stop() == 0
    assert "stopped" in running.lines[-1]


def test_forwarded_fetch_gives_the_same_answers(
    nomad: NomadClient, agent: AgentProcess, secretsmanager: Any, tmp_path: Path
) -> None:
    canary = "agent-" + uuid.uuid4().hex
    put_secret(secretsmanager, "agent/db", json.dumps({"password": canary}))
    fetched = nomad.fetch("aws", "agent/db", REGION_ENV, job_id="web")
    assert fetched.ok and fetched.result == {"password": canary}
    agent.wait_for("answered provider='aws' namespace='default' job='web' outcome='ok'")
    # The same messages as a fetch in process: a missing secret, a bad env key.
    missing = nomad.fetch("aws", "agent/missing", REGION_ENV, job_id="web")
    assert "'agent/missing' (AWS Secrets Manager): not found" in (missing.plugin_error or "")
    # The agent's journal has the job's error too (our message: names, never values).
    agent.wait_for("outcome='error' error=\"'agent/missing' (AWS Secrets Manager): not found")
    refused = nomad.fetch("aws", "agent/db", {**REGION_ENV, "HTTPS_PROXY": "http://x"}, job_id="web")
    assert "the secret block's env sets 'HTTPS_PROXY'" in (refused.plugin_error or "")
    assert len([line for line in agent.lines if line.startswith("answered")]) == 3
    log = (tmp_path / "debug.log").read_text() if (tmp_path / "debug.log").exists() else ""
    assert "agent-not-used" not in log
    assert canary not in "\n".join(agent.lines)


def test_the_forwarding_plugin_imports_no_store_library(
    nomad: NomadClient, agent: AgentProcess, secretsmanager: Any, tmp_path: Path
) -> None:
    """-X importtime writes to fd 2, which the plugin points at its debug
    log: the whole list of what a forwarded fetch imported."""
    put_secret(secretsmanager, "agent/imports", "v")
    argv = [
        interpreter(),
        "-I",
        "-S",
        "-X",
        "importtime",
        str(nomad.executable("aws")),
        "fetch",
        "agent/imports",
    ]
    proc = subprocess.run(argv, env=nomad_env("fetch", REGION_ENV, "web", "default"), capture_output=True)
    assert json.loads(proc.stdout) == {"result": {"value": "v"}}
    imported = [
        line.split("|")[-1].strip()
        for line in (tmp_path / "debug.log").read_text().splitlines()
        if "import time:" in line
    ]
    assert "nomad_secrets.agent.client" in imported
    assert not [
        name for name in imported if name.split(".")[0] in ("botocore", "urllib3", "dateutil", "jmespath")
    ]
    assert "nomad_secrets.fetch" not in imported


def test_the_agent_keeps_its_clients_warm(
    nomad: NomadClient, agent: AgentProcess, secretsmanager: Any
) -> None:
    """One client per store and region, made once; a job's region is another."""
    put_secret(secretsmanager, "agent/warm", "v")
    for _ in range(3):
        assert nomad.fetch("aws", "agent/warm", REGION_ENV).result == {"value": "v"}
    nomad.fetch("aws", "agent/warm", {"AWS_REGION": "eu-west-1"})
    pools = [line.rsplit("clients=", 1)[1] for line in agent.lines if line.startswith("answered")]
    assert pools == ["1", "1", "1", "2"]


def test_no_agent_running_means_a_fetch_in_process(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, sock: Path, tmp_path: Path
) -> None:
    log = tmp_path / "debug.log"
    write_config(nomad.plugin_dir, agent_config(moto_endpoint, sock, log))
    put_secret(secretsmanager, "agent/fallback", "v")
    assert nomad.fetch("aws", "agent/fallback", REGION_ENV).result == {"value": "v"}
    assert f"agent-not-used reason='cannot check the agent socket {sock}" in log.read_text()


class AgentDouble:
    """A stand-in for an agent gone wrong (a test double: the real agent
    cannot be made to hang or to break its framing): it accepts and then
    closes, never acknowledges, or acknowledges and never answers."""

    def __init__(self, path: Path, behaviour: str) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(8)
        self.behaviour = behaviour
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if self.behaviour == "close":
                conn.close()
            elif self.behaviour == "ack-then-hang":
                conn.recv(1 << 16)
                conn.sendall(b"+")
                self.held.append(conn)
            elif self.behaviour == "garbage":
                conn.recv(1 << 16)
                conn.sendall(b"+" + len(b"not json").to_bytes(4, "big") + b"not json")
                conn.close()
            else:  # silent
                self.held.append(conn)

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("close", "closed the connection|Broken pipe|Connection reset"),
        ("silent", "timed out"),
        ("ack-then-hang", "did not answer within"),
        ("garbage", "is not JSON"),
    ],
)
def test_a_broken_agent_means_a_fetch_in_process(
    nomad: NomadClient,
    moto_endpoint: str,
    secretsmanager: Any,
    sock: Path,
    tmp_path: Path,
    behaviour: str,
    reason: str,
) -> None:
    log = tmp_path / "debug.log"
    config = agent_config(moto_endpoint, sock, log, extra="")
    if behaviour == "ack-then-hang":  # give the agent little of the deadline
        config += "deadline_seconds = 4\n"
    write_config(nomad.plugin_dir, config)
    put_secret(secretsmanager, "agent/broken", "v")
    double = AgentDouble(sock, behaviour)
    try:
        fetched = nomad.fetch("aws", "agent/broken", REGION_ENV)
    finally:
        double.close()
    assert fetched.ok and fetched.result == {"value": "v"}, fetched.error
    assert re.search(f"agent-not-used reason=.*({reason})", log.read_text())


def test_a_socket_owned_by_another_user_is_refused(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, sock: Path, tmp_path: Path
) -> None:
    log = tmp_path / "debug.log"
    write_config(nomad.plugin_dir, agent_config(moto_endpoint, sock, log))
    put_secret(secretsmanager, "agent/owner", "v")
    double = AgentDouble(sock, "garbage")
    os.chown(sock, 65534, 65534)
    try:
        assert nomad.fetch("aws", "agent/owner", REGION_ENV).result == {"value": "v"}
    finally:
        double.close()
    assert f"the agent socket {sock} is owned by uid 65534, not root" in log.read_text()


def test_the_agent_refuses_a_client_that_is_not_root(
    nomad: NomadClient, moto_endpoint: str, sock: Path, tmp_path: Path
) -> None:
    """SO_PEERCRED, not the socket's mode, decides: with agent.users set the
    socket is open to all, and uid 65534 still gets no acknowledgement."""
    write_config(nomad.plugin_dir, agent_config(moto_endpoint, sock, extra="") + 'users = ["0"]\n')
    agent = AgentProcess(nomad.executable("aws"))
    try:
        agent.wait_for("listening")
        client = (
            "import socket\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            f"s.connect({str(sock)!r})\n"
            "s.settimeout(2)\n"
            "print(repr(s.recv(1)))\n"
        )
        proc = subprocess.run(
            [interpreter(), "-I", "-S", "-c", client],
            user=65534,
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert proc.stdout.strip() == "b''", proc  # closed, never acknowledged
        agent.wait_for("refused uid=65534")
    finally:
        assert agent.stop() == 0


def test_sigterm_lets_the_request_in_flight_finish(
    nomad: NomadClient, moto_endpoint: str, sock: Path, secretsmanager: Any, tmp_path: Path
) -> None:
    """The agent reads through a proxy that holds each answer for a while;
    SIGTERM arrives meanwhile, and the plugin still gets the secret."""
    from netutil import RecordingProxy

    put_secret(secretsmanager, "agent/inflight", "v")
    with RecordingProxy(moto_endpoint, delay=1.5) as slow:
        write_config(nomad.plugin_dir, agent_config(slow.url, sock, tmp_path / "debug.log"))
        agent = AgentProcess(nomad.executable("aws"))
        agent.wait_for("listening")
        result: dict[str, Any] = {}
        fetching = threading.Thread(
            target=lambda: result.update(f=nomad.fetch("aws", "agent/inflight", REGION_ENV))
        )
        fetching.start()
        while not slow.requests:
            time.sleep(0.02)
        assert agent.stop() == 0
        fetching.join()
    assert result["f"].result == {"value": "v"}
    assert "agent-not-used" not in (tmp_path / "debug.log").read_text()
    agent.wait_for("answered")


def test_systemd_socket_activation(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, sock: Path, tmp_path: Path
) -> None:
    """As systemd's socket unit does: the listening socket arrives as fd 3,
    with LISTEN_FDS=1 and LISTEN_PID the agent's own pid."""
    write_config(nomad.plugin_dir, agent_config(moto_endpoint, sock, tmp_path / "debug.log"))
    put_secret(secretsmanager, "agent/activated", "v")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock))
    listener.listen(16)
    launcher = (
        "import os, sys\n"
        "os.dup2(int(sys.argv[1]), 3)\n"
        "os.execve(sys.argv[2], [sys.argv[2], 'agent'],"
        " {'LISTEN_FDS': '1', 'LISTEN_PID': str(os.getpid())})\n"
    )
    proc = subprocess.Popen(
        [interpreter(), "-I", "-S", "-c", launcher, str(listener.fileno()), str(nomad.executable("aws"))],
        pass_fds=[listener.fileno()],
        stderr=subprocess.PIPE,
    )
    listener.close()  # the agent holds it now
    try:
        assert nomad.fetch("aws", "agent/activated", REGION_ENV).result == {"value": "v"}
        assert "agent-not-used" not in (tmp_path / "debug.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert b"listening on='fd 3 (systemd)'" in err and b"answered provider='aws'" in err


def test_the_shipped_systemd_units_verify(tmp_path: Path, artifact: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("needs systemd-analyze (package systemd)")
    units = Path(__file__).resolve().parent.parent / "examples" / "systemd"
    for unit in units.iterdir():
        text = unit.read_text().replace("/opt/nomad/data/common_plugins/nomad-secrets ", f"{artifact} ")
        (tmp_path / unit.name).write_text(text)
    proc = subprocess.run(
        [analyze, "verify", *(str(p) for p in sorted(tmp_path.iterdir()))], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    service = (units / "nomad-secrets-agent.service").read_text()
    assert "ExecStart=/opt/nomad/data/common_plugins/nomad-secrets agent --config" in service
    assert "ListenStream=/run/nomad-secrets/agent.sock" in (units / "nomad-secrets-agent.socket").read_text()


def test_a_second_agent_does_not_take_the_socket(agent: AgentProcess, nomad: NomadClient) -> None:
    """It used to unlink the first one's socket and bind its own: the first
    was left orphaned, and every fetch ran in process once the second
    stopped."""
    second = AgentProcess(nomad.executable("aws"))
    assert second.proc.wait(timeout=15) != 0
    second.stop()
    assert any("an agent already listens on" in line for line in second.lines), second.lines
    assert agent.proc.poll() is None


def test_an_agent_of_another_build_is_not_used_and_an_upgraded_one_stops(
    tmp_path: Path, decoder: Any, moto_endpoint: str, secretsmanager: Any, sock: Path
) -> None:
    """After an upgrade the agent kept answering with the old code while the
    node said the new version. A plugin sends its build; an agent of another
    build does not acknowledge (the plugin fetches in process), and one whose
    own executable is now another build stops, for systemd's socket to start
    the installed build on the next fetch."""
    from conftest import build_artifact
    from test_install import install

    builds = [
        build_artifact(tmp_path / v / "nomad-secrets", tmp_path / "cache", "--version", v)
        for v in ("0.2.0", "0.3.0")
    ]
    plugins = tmp_path / "common_plugins"
    assert install(builds[0], plugins, "--as", "aws").returncode == 0
    log = tmp_path / "debug.log"
    write_config(plugins, agent_config(moto_endpoint, sock, log))
    put_secret(secretsmanager, "agent/upgrade", "v")
    nomad = NomadClient(plugins, decoder)
    # As the shipped unit starts it: the common plugin dir's name, the plugin directory's config.
    old = AgentProcess(plugins / "nomad-secrets", "--config", str(plugins / "secrets" / "nomad-secrets.toml"))
    try:
        old.wait_for("listening")
        assert nomad.fetch("aws", "agent/upgrade", REGION_ENV).result == {"value": "v"}
        old.wait_for("answered provider='aws'")
        assert install(builds[1], plugins, "--as", "aws", "--force").returncode == 0
        assert nomad.fetch("aws", "agent/upgrade", REGION_ENV).result == {"value": "v"}  # in process
        old.wait_for("stopping reason='the executable is another build now'")
        assert old.proc.wait(timeout=15) == 0
    finally:
        old.stop()
    assert "agent-not-used" in log.read_text()
    assert len(old.answered()) == 1


def test_check_says_whether_fetches_reach_the_agent(
    nomad: NomadClient, moto_endpoint: str, sock: Path, tmp_path: Path
) -> None:
    from nomad import run_plugin

    write_config(nomad.plugin_dir, agent_config(moto_endpoint, sock))
    absent = run_plugin(nomad.executable("aws"), ["check"], {}).stdout.decode()
    assert f"WARNING  cannot check the agent socket {sock}" in absent and "fetches run in process" in absent
    running = AgentProcess(nomad.executable("aws"))
    try:
        running.wait_for("listening")
        present = run_plugin(nomad.executable("aws"), ["check"], {}).stdout.decode()
    finally:
        assert running.stop() == 0
    assert f"ok       an agent running as root listens at {sock}; fetches go to it" in present


@pytest.mark.parametrize("seconds", [float("nan"), float("inf"), True, "8", None])
def test_a_request_with_no_usable_time_is_refused(seconds: object) -> None:
    from nomad_secrets.agent.server import valid_request

    request = {"executable": "/p/secrets/aws", "path": "x", "environ": {}, "seconds": 4.0}
    assert valid_request(request)
    assert not valid_request({**request, "seconds": seconds})


def test_an_agent_out_of_memory_leaves_the_fetch_to_the_plugin(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, sock: Path, tmp_path: Path
) -> None:
    """The agent under its own unit's LimitAS (72 MiB) and a block of eight
    secrets of 3 MiB, far more than it has room for: memory runs out where it
    will (a reader, a thread that cannot start, OpenSSL), and each way the
    agent answers no error: the plugin reads the values in process, and the
    agent, told to stop, stops cleanly. Before (the operator review of issue
    #15): "no answer within the deadline" when its readers died of
    MemoryError in silence, or "ran out of memory" for a fetch the plugin
    could make; one agent hung in its SIGTERM handler. That it stops by
    itself after a MemoryError is test_the_agents_own_limits_leave_the_fetch_to_the_plugin."""
    value = "m" * (3 << 20)  # moto keeps more than Secrets Manager's 64 KiB; the plugin reads 4 MiB
    lines, expected = [], {}
    for i in range(8):
        put_secret(secretsmanager, f"agent-memory/{i}", value)
        lines.append(f"k{i} = aws-sm:agent-memory/{i}")
        expected[f"k{i}"] = value
    config = agent_config(moto_endpoint, sock, tmp_path / "debug.log") + "max_output_bytes = 67108864\n"
    write_config(nomad.plugin_dir, config)
    agent = AgentProcess(nomad.executable("aws"), node=limited(**{"as": 72 * MiB}))
    agent.wait_for("listening")
    fetched = nomad.fetch("aws", "\n".join(lines), REGION_ENV)
    assert fetched.ok and fetched.result == expected, (fetched.plugin_error, agent.lines)
    assert "agent-not-used" in (tmp_path / "debug.log").read_text()
    assert agent.stop() == 0, agent.lines
    assert agent.answered() == [] and agent.lines[-1] == "stopped", agent.lines
    # Where even its one-line hook cannot run, the interpreter may write its
    # own last-resort line ("Exception ignored in ..."): never a traceback.
    assert not [line for line in agent.lines if "Traceback" in line], agent.lines
    stopping = [line for line in agent.lines if line.startswith("stopping")]
    assert stopping in ([], [f"stopping reason={OUT_OF_MEMORY!r}"]), agent.lines


@pytest.mark.parametrize("short_of", ["descriptors", "memory"])
def test_the_agents_own_limits_leave_the_fetch_to_the_plugin(
    tmp_path: Path, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, short_of: str
) -> None:
    """In process, with a config read that fails as a limit would (a DOUBLE:
    a real shortage of descriptors comes from a race between requests). Out
    of descriptors, the one request is not answered and the agent serves on:
    a job's burst stopped it at will when it stepped aside for good (the
    hostile review of issue #15). Out of memory, it stops."""
    from nomad_secrets import config as config_module
    from nomad_secrets.agent import server

    path = tmp_path / "nomad-secrets.toml"
    path.write_text(with_policy(aws_config(moto_endpoint)))
    agent = server.Agent(config_module.load_file(str(path)), str(tmp_path / "aws"))
    request = {"executable": str(tmp_path / "aws"), "path": "x", "seconds": 5.0, "environ": {}}

    def short(*args: object, **kwargs: object) -> object:
        raise OSError(errno.EMFILE, "Too many open files") if short_of == "descriptors" else MemoryError

    with monkeypatch.context() as patched:
        patched.setattr(config_module, "load", short)
        assert agent.answer(request) is None
    assert agent.stop_asked is (short_of == "memory")
    assert agent.stepped_aside == ("" if short_of == "descriptors" else OUT_OF_MEMORY)
    if short_of == "descriptors":  # the next request is the agent's again
        answered = agent.answer(request)
        assert answered is not None and b"not configured" not in answered, answered


def test_an_agent_under_the_address_space_floor_does_not_start(nomad: NomadClient, sock: Path) -> None:
    agent = AgentProcess(nomad.executable("aws"), node=limited(**{"as": 48 * MiB}))
    assert agent.proc.wait(timeout=10) == 2
    agent.stop()
    assert agent.lines == [
        "nomad-secrets agent: its address space limit (RLIMIT_AS) is 48 MiB, under the 64 MiB it needs: raise"
        " LimitAS in the agent's systemd unit (the plugin fetches in process meanwhile)"
    ]


def test_an_agent_whose_code_is_damaged_steps_aside(
    tmp_path: Path, decoder: Any, moto_endpoint: str, ssm: Any, sock: Path
) -> None:
    """The agent met damage in its own unpacked code (a module it had not
    imported yet): it did answer every fetch with "remove the directory and
    restart the agent". Now it answers none and stops; the plugin fetches in
    process, which moves the directory aside and unpacks afresh."""
    from conftest import build_artifact
    from nomad import install_plugin
    from test_reliability import _cut, _pyc

    from nomad_secrets import cache

    exe = build_artifact(tmp_path / "dist" / "nomad-secrets", tmp_path / "cache")
    plugins = tmp_path / "common_plugins"
    install_plugin(exe, plugins, ["aws-ssm"], agent_config(moto_endpoint, sock))
    ssm.put_parameter(Name="/agent/damaged", Value="v", Type="String", Overwrite=True)
    nomad = NomadClient(plugins, decoder)
    agent = AgentProcess(nomad.executable("aws-ssm"))
    try:
        agent.wait_for("listening")
        (entry,) = [p for p in (tmp_path / "cache").iterdir() if cache.ENTRY.match(p.name)]
        _cut(_pyc(entry, "lib/nomad_secrets/backends/aws_ssm"))  # the agent has not imported it yet
        assert nomad.fetch("aws-ssm", "/agent/damaged", REGION_ENV).result == {"value": "v"}
        agent.wait_for("stopping reason='its unpacked code is damaged; the next fetch heals it'")
        assert agent.proc.wait(timeout=15) == 0
    finally:
        agent.stop()
    assert agent.answered() == []
    (fresh,) = [p for p in (tmp_path / "cache").iterdir() if cache.ENTRY.match(p.name)]
    assert cache.damage(str(fresh)) is None
