"""The node agent through the built executable: a fetch forwards to its
plugin directory's agent, starting one when none runs (unless the config
says [agent] auto = false), gets the same answers, imports none of the
plugin's code on that path, and fetches in process whenever the agent is
absent, refuses, hangs or is not root's; a hung or killed agent is
replaced; an agent serves its own plugin directory only."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import aws_config, interpreter, put_secret, write_config
from support.agent_process import AgentProcess, agent_pid, listening_on, wait_gone
from support.nomad import NomadClient, limited, nomad_env, run_plugin

from nomad_secrets.agent import client, server
from nomad_secrets.core.config import reader

REGION_ENV = {"AWS_REGION": "us-east-2"}
MiB = 1 << 20


def agent_config(
    endpoint: str, log: Path | None = None, extra: str = "", agent: str = "auto = false\n"
) -> str:
    """An operator's config; by default fetches start no agent (the tests
    start it as an operator would), ``agent`` the [agent] section's keys."""
    text = aws_config(endpoint, extra) + f"[agent]\n{agent}"
    if log is not None:
        text += f'[plugin]\ndebug_log = "{log}"\n'
    return text


def operator_agent(nomad: NomadClient, *args: str, **kwargs: Any) -> AgentProcess:
    return AgentProcess(
        nomad.executable("aws"), "--plugin-dir", str(nomad.plugin_dir / "secrets"), *args, **kwargs
    )


@pytest.fixture
def agent(nomad: NomadClient, moto_endpoint: str, tmp_path: Path) -> Iterator[AgentProcess]:
    write_config(nomad.plugin_dir, agent_config(moto_endpoint, tmp_path / "debug.log"))
    running = operator_agent(nomad)
    running.wait_for("listening")
    yield running
    assert running.stop() == 0
    assert "stopped" in running.lines[-1]


def in_process(log: Path) -> list[str]:
    """The debug log's lines of fetches that ran in process: a forwarded
    fetch writes none (the plugin's debug log is opened by its config)."""
    return [line for line in log.read_text().splitlines() if "agent-not-used" in line] if log.exists() else []


def socket_of(nomad: NomadClient, socket_dir: Path) -> Path:
    return Path(client.socket_name(str(nomad.plugin_dir / "secrets"), str(socket_dir)))


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
    agent.wait_answered(3)
    log = (tmp_path / "debug.log").read_text() if (tmp_path / "debug.log").exists() else ""
    assert "agent-not-used" not in log
    assert canary not in "\n".join(agent.lines)


def test_the_agent_keeps_its_clients_warm(
    nomad: NomadClient, agent: AgentProcess, secretsmanager: Any
) -> None:
    """One client per store and region, made once; a job's region is another."""
    put_secret(secretsmanager, "agent/warm", "v")
    for _ in range(3):
        assert nomad.fetch("aws", "agent/warm", REGION_ENV).result == {"value": "v"}
    nomad.fetch("aws", "agent/warm", {"AWS_REGION": "eu-west-1"})
    pools = [line.rsplit("clients=", 1)[1] for line in agent.wait_answered(4)]
    assert pools == ["1", "1", "1", "2"]


def test_the_forwarded_fetch_imports_nothing_of_the_plugin(
    nomad: NomadClient, agent: AgentProcess, secretsmanager: Any
) -> None:
    """-X importtime (on stderr: a forwarded fetch never reaches the plugin's
    own stdio guard): the bootstrap and its client only, none of the
    plugin's modules, no store library, no typing, no re, no json."""
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
        line.split("|")[-1].strip() for line in proc.stderr.decode().splitlines() if "import time:" in line
    ]
    assert "nomad_secrets_agent_client" in imported
    assert not [name for name in imported if name.split(".")[0] in ("nomad_secrets", "botocore", "urllib3")]
    assert not {"typing", "re", "json", "socket", "nomad_secrets_launch"} & set(imported), imported
    agent.wait_for("answered provider='aws' namespace='default' job='web' outcome='ok'")


@pytest.mark.long
def test_a_config_left_empty_stops_the_agent_after_its_patience(
    nomad: NomadClient, agent: AgentProcess, tmp_path: Path
) -> None:
    """A config emptied in place and left so (`: > file`, a writer that
    died) looks like a deploy at each of the agent's looks, which do not
    wait; found so at every look for DEPLOY_PATIENCE_SECONDS, it is a
    config no longer usable, and the agent stops as it does for one gone.
    Without the patience it kept serving errors and never idled out."""
    path = nomad.plugin_dir / "secrets" / "nomad-secrets.toml"
    path.write_bytes(b"")
    ends = time.monotonic() + server.DEPLOY_PATIENCE_SECONDS + 3 * server.CHECK_SECONDS
    while agent.proc.poll() is None and time.monotonic() < ends:
        time.sleep(0.05)
    stopping = [line for line in agent.lines if line.startswith("stopping")]
    assert stopping and "its config can no longer be used" in stopping[0], agent.lines
    assert f"the config file {path} is open for writing, or empty at every look for 6 s" in stopping[0]
    path.write_text(agent_config("http://127.0.0.1:1", tmp_path / "debug.log"))  # for the fixture's stop


def test_a_config_open_for_writing_starts_no_agent(
    nomad: NomadClient, moto_endpoint: str, socket_dir: Path
) -> None:
    """A deploy that rewrites the config in place (truncate, write, close)
    and holds it open: the fetch waits for the writer once, in process, and
    names it. Before, it started an agent on what might be half a file; the
    agent waited out the writer too, and again when it was replaced, so a
    fetch took three times the wait its message names (6 s, not 2)."""
    path = write_config(nomad.plugin_dir, agent_config(moto_endpoint, agent="idle_exit_seconds = 60\n"))
    sock = socket_of(nomad, socket_dir)
    with open(path, "r+b"):  # a writer that has it open
        fetched = nomad.fetch("aws", "agent/writing", REGION_ENV)
    assert fetched.plugin_error == (
        f"the config file {path} stayed open for writing for 2 s (`fuser -v {path}` shows the process):"
        " write the new config to a temporary file in the same directory and rename it into place"
    )
    assert not sock.exists()  # no agent was started: its socket would be there


@pytest.mark.long
def test_a_deploy_holding_the_config_open_holds_up_no_agent(
    nomad: NomadClient, agent: AgentProcess, secretsmanager: Any
) -> None:
    """A deploy that rewrites the config in place and holds it open (a slow
    tool, an editor) through the agent's periodic look at its config: the
    look does not wait for the writer, so the agent keeps accepting and
    keeps running, and a fetch meanwhile is its to answer (it waits for the
    writer, as a fetch in process does). Before, the look waited up to 2 s
    in the accept loop, so fetches took the agent for hung, and then the
    agent stopped: "its config can no longer be used"."""
    put_secret(secretsmanager, "agent/deployed", "v")
    path = nomad.plugin_dir / "secrets" / "nomad-secrets.toml"
    # long enough that one whole look, and its wait before, fall inside it
    hold = server.CHECK_SECONDS + 0.5 + reader.WRITER_WAIT_SECONDS + 0.5
    with open(path, "r+b"):
        held_until = time.monotonic() + hold
        fetched = nomad.fetch("aws", "agent/deployed", REGION_ENV)
        assert "stayed open for writing for 2 s" in str(fetched.plugin_error), fetched
        assert "outcome='error'" in agent.wait_answered(1)[0]  # the agent's answer, not one in process
        time.sleep(max(0.0, held_until - time.monotonic()))
    assert nomad.fetch("aws", "agent/deployed", REGION_ENV).result == {"value": "v"}
    assert "outcome='ok'" in agent.wait_answered(2)[1]
    assert agent.proc.poll() is None and not [line for line in agent.lines if line.startswith("stopping")]


def test_a_fetch_starts_the_agent_by_default(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, socket_dir: Path, tmp_path: Path
) -> None:
    """A config with no [agent] section: the first fetch starts the agent and
    is answered by it; the agent runs detached, in a session of its own,
    with none of the job's environment, stdio on /dev/null, at a lower nice
    value; the next fetches go to it."""
    log = tmp_path / "debug.log"
    write_config(nomad.plugin_dir, agent_config(moto_endpoint, log, agent="idle_exit_seconds = 60\n"))
    put_secret(secretsmanager, "agent/auto", "v")
    sock = socket_of(nomad, socket_dir)
    assert not sock.exists()
    fetched = nomad.fetch("aws", "agent/auto", REGION_ENV)
    assert fetched.ok and fetched.result == {"value": "v"}, fetched.error
    pid = agent_pid(sock)
    assert pid is not None
    try:
        assert oct(sock.stat().st_mode & 0o777) == "0o600" and sock.stat().st_uid == 0
        assert Path(f"/proc/{pid}/environ").read_bytes() == b""
        assert os.getsid(pid) == pid
        assert os.getpriority(os.PRIO_PROCESS, pid) == client.AGENT_NICE
        for fd in (0, 1):
            assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
        assert os.readlink(f"/proc/{pid}/fd/2") == str(log)  # its stderr: the debug log, if any
        for _ in range(3):
            assert nomad.fetch("aws", "agent/auto", REGION_ENV).result == {"value": "v"}
        assert agent_pid(sock) == pid  # one agent, still
        assert in_process(log) == []
    finally:
        os.kill(pid, signal.SIGTERM)
        assert wait_gone(pid)
    assert not sock.exists()  # it takes its socket away


def test_auto_false_starts_no_agent_and_no_config_no_agent(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, socket_dir: Path, tmp_path: Path
) -> None:
    """An agent serves only a plugin directory with a config file (never
    the built-in defaults); `auto = false` turns the self-start off."""
    log = tmp_path / "debug.log"
    put_secret(secretsmanager, "agent/off", "v")
    sock = socket_of(nomad, socket_dir)
    write_config(nomad.plugin_dir, agent_config(moto_endpoint, log))  # auto = false
    assert nomad.fetch("aws", "agent/off", REGION_ENV).result == {"value": "v"}
    assert not sock.exists()
    assert "says [agent] auto = false" in log.read_text()
    (nomad.plugin_dir / "secrets" / "nomad-secrets.toml").unlink()
    fetched = nomad.fetch("aws", "agent/off", {**REGION_ENV, "AWS_ACCESS_KEY_ID": "x"})
    assert not sock.exists()
    assert "AWS_ACCESS_KEY_ID" in (fetched.plugin_error or "")  # in process, the built-in defaults


@pytest.mark.serial
def test_a_burst_on_a_cold_node_starts_one_agent(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, socket_dir: Path, tmp_path: Path
) -> None:
    """30 fetches at once, no agent running: every one answered right, and
    one agent started (the others waited on its socket's backlog)."""
    write_config(nomad.plugin_dir, agent_config(moto_endpoint, tmp_path / "debug.log", agent=""))
    put_secret(secretsmanager, "agent/burst", "v")
    results: list[Any] = [None] * 30

    def one(i: int) -> None:
        results[i] = nomad.fetch("aws", "agent/burst", REGION_ENV)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.result for r in results] == [{"value": "v"}] * 30, [r.error for r in results if not r.ok]
    pid = agent_pid(socket_of(nomad, socket_dir))
    assert pid is not None
    agents = [
        p
        for p in os.listdir("/proc")
        if p.isdigit() and _cmdline(int(p)).endswith(str(nomad.plugin_dir / "secrets" / "aws"))
    ]
    assert agents == [str(pid)], agents
    os.kill(pid, signal.SIGTERM)
    assert wait_gone(pid)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


@pytest.mark.parametrize("how", ["SIGSTOP", "SIGKILL"])
def test_a_hung_or_killed_agent_is_replaced(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, socket_dir: Path, tmp_path: Path, how: str
) -> None:
    """A self-started agent stopped (SIGSTOP: the kernel still queues
    connections on its socket) or killed: the next fetches are answered
    (through a new agent), and the stopped one, once it runs again, finds
    its socket replaced and stops."""
    write_config(nomad.plugin_dir, agent_config(moto_endpoint, tmp_path / "debug.log", agent=""))
    put_secret(secretsmanager, "agent/hung", "v")
    sock = socket_of(nomad, socket_dir)
    assert nomad.fetch("aws", "agent/hung", REGION_ENV).ok
    old = agent_pid(sock)
    assert old is not None
    os.kill(old, getattr(signal, how))
    try:
        results: list[Any] = [None] * 10
        threads = [
            threading.Thread(
                target=lambda i=i: results.__setitem__(i, nomad.fetch("aws", "agent/hung", REGION_ENV))
            )
            for i in range(10)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [r.result for r in results] == [{"value": "v"}] * 10, [r.error for r in results]
        new = agent_pid(sock)
        assert new is not None and new != old
    finally:
        if how == "SIGSTOP":
            os.kill(old, signal.SIGCONT)
    assert wait_gone(old)  # it saw another socket at its path, and stopped
    assert agent_pid(sock) == new
    os.kill(new, signal.SIGTERM)
    assert wait_gone(new)


def raw_request(
    sock: Path, executable: str, path: str, environ: dict[bytes, bytes], build: str, user: int | None = None
) -> bytes:
    """What the agent sends back to a hand-made request (as uid ``user``)."""
    message = client.request(client.KIND_FETCH, executable, path, build, environ)
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        f"s.connect({str(sock)!r})\n"
        "s.settimeout(10)\n"
        f"s.sendall({message!r})\n"
        "data = b''\n"
        "while True:\n"
        "    chunk = s.recv(65536)\n"
        "    if not chunk: break\n"
        "    data += chunk\n"
        "sys.stdout.buffer.write(data)\n"
    )
    proc = subprocess.run([interpreter(), "-I", "-S", "-c", code], user=user, capture_output=True, timeout=20)
    return proc.stdout


def build_of(agent: AgentProcess) -> str:
    return agent.wait_for("listening").rsplit("build='", 1)[1].split("'", 1)[0]


def test_a_request_naming_another_directory_is_refused(
    nomad: NomadClient, agent: AgentProcess, secretsmanager: Any, tmp_path: Path
) -> None:
    """An agent serves its plugin directory and config only: a request
    naming another executable (another config, or the built-in defaults)
    gets a refusal, never an answer."""
    put_secret(secretsmanager, "agent/other", "v")
    sock, build = listening_on(agent), build_of(agent)
    env = {b"NOMAD_JOB_ID": b"web", b"NOMAD_NAMESPACE": b"default"}
    other = tmp_path / "elsewhere" / "secrets" / "aws"
    refused = raw_request(sock, str(other), "agent/other", env, build)
    assert refused.startswith(client.REFUSED) and b"serves the plugin directory" in refused
    right = raw_request(
        sock, str(nomad.executable("aws")), "agent/other", {**env, b"AWS_REGION": b"us-east-2"}, build
    )
    assert right.startswith(client.ACK) and right.endswith(b'{"result": {"value": "v"}}\n')
    foreign = raw_request(sock, str(nomad.executable("aws")), "agent/other", env, "0" * 24)
    assert foreign.startswith(client.REFUSED) and b"this agent is build" in foreign


def test_a_caller_that_is_not_root_is_refused_without_a_verified_identity(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, tmp_path: Path
) -> None:
    """agent.users lets uid 65534 connect; with no agent.nomad_jwks_file it is
    refused, whatever NOMAD_JOB_ID it states; a stranger's connections cost
    no thread and one journal line per interval, not one each."""
    write_config(
        nomad.plugin_dir, agent_config(moto_endpoint, extra="", agent='auto = false\nusers = ["65534"]\n')
    )
    put_secret(secretsmanager, "agent/root-only", "v")
    running = operator_agent(nomad)
    try:
        sock, build = listening_on(running), build_of(running)
        env = {b"NOMAD_JOB_ID": b"web", b"NOMAD_NAMESPACE": b"default", b"AWS_REGION": b"us-east-2"}
        answer = raw_request(sock, str(nomad.executable("aws")), "agent/root-only", env, build, user=65534)
        assert answer.startswith(client.REFUSED) and b"agent.nomad_jwks_file is not set" in answer, answer
        assert b'"value"' not in answer
        check = run_plugin(nomad.executable("aws"), ["check"], {}).stdout.decode()
        assert "agent.users is set without agent.nomad_jwks_file" in check
    finally:
        assert running.stop() == 0


def test_a_flood_of_strangers_costs_no_thread_and_few_lines(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, tmp_path: Path
) -> None:
    """Connections from a uid the agent does not serve (the socket is open
    to all once agent.users is set): closed at accept, counted, said at most
    once per interval; a root fetch meanwhile is answered."""
    write_config(
        nomad.plugin_dir,
        agent_config(moto_endpoint, tmp_path / "debug.log", agent='auto = false\nusers = ["1"]\n'),
    )
    put_secret(secretsmanager, "agent/flood", "v")
    running = operator_agent(nomad)
    try:
        sock = listening_on(running)
        flood = (
            "import socket\n"
            "for _ in range(2000):\n"
            "    s = socket.socket(socket.AF_UNIX)\n"
            f"    s.connect({str(sock)!r})\n"
            "    s.close()\n"
        )
        flooding = subprocess.Popen([interpreter(), "-I", "-S", "-c", flood], user=65534)
        assert nomad.fetch("aws", "agent/flood", REGION_ENV).result == {"value": "v"}
        assert flooding.wait(timeout=60) == 0
        refused = [line for line in running.lines if line.startswith("refused")]
        assert 1 <= len(refused) <= 2, refused
        assert in_process(tmp_path / "debug.log") == []
    finally:
        assert running.stop() == 0


def test_a_fetch_that_reaches_the_agent_too_late_says_the_node_was_busy(
    nomad: NomadClient, agent: AgentProcess, secretsmanager: Any
) -> None:
    """The deadline counts from the plugin's start, read by the agent from
    /proc (the kernel's word): a plugin that reached the agent with under
    half a second left is answered node-busy, and the store never asked."""
    write_config(
        nomad.plugin_dir, agent_config("http://127.0.0.1:9", None, extra="[plugin]\ndeadline_seconds = 1\n")
    )
    sock, build = listening_on(agent), build_of(agent)
    message = client.request(
        client.KIND_FETCH, str(nomad.executable("aws")), "agent/late", build, {b"AWS_REGION": b"us-east-2"}
    )
    code = (
        "import socket, sys, time\n"
        "time.sleep(0.8)\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        f"s.connect({str(sock)!r})\n"
        f"s.sendall({message!r})\n"
        "data = b''\n"
        "while chunk := s.recv(65536):\n"
        "    data += chunk\n"
        "sys.stdout.buffer.write(data)\n"
    )
    out = subprocess.run([interpreter(), "-I", "-S", "-c", code], capture_output=True, timeout=20).stdout
    answer = json.loads(out[out.index(b"{") :])
    assert "the node was too busy" in answer["error"] and "'agent/late'" in answer["error"], answer


def test_socket_names(tmp_path: Path) -> None:
    assert client.socket_name("/opt/nomad/data/common_plugins/secrets") == (
        "/run/nomad-secrets/opt-nomad-data-common_plugins-secrets-947175c3.sock"
    )
    long = "/var/lib/" + "x" * 120 + "/secrets"
    name = client.socket_name(long)
    assert name.startswith("/run/nomad-secrets/h-") and len(name.encode()) <= client.MAX_SOCKET_PATH
    assert client.socket_name(long) == name != client.socket_name(long + "2")
    # Names that read alike are two sockets (the hash is of the exact path).
    assert client.socket_name("/x/a-b/secrets") != client.socket_name("/x/a_b/secrets")
    with pytest.raises(client.NoAgent, match="too long a path"):
        client.socket_name("/a", "/" + "d" * 100)


def test_the_client_takes_the_largest_answer_the_config_allows() -> None:
    """An answer of max_output_bytes at its largest, with the JSON around it,
    fits the client's bound: past it the fetch would run in process again."""
    from nomad_secrets.core.config import MAX_OUTPUT_BYTES

    assert client.MAX_ANSWER >= MAX_OUTPUT_BYTES + (64 << 10)


def test_auto_off_is_read_in_its_plain_forms() -> None:
    assert client.auto_off("[agent]\nauto = false\n")
    assert client.auto_off("[agent]\nauto=false # off\n[[policy]]\nallow = []\n")
    assert client.auto_off("agent.auto = false\n")
    assert not client.auto_off("[agent]\nauto = true\n")
    assert not client.auto_off("[plugin]\nauto = false\n")
    assert not client.auto_off("# [agent]\n# auto = false\n")


def test_a_missing_socket_directory_is_made_root_only(
    tmp_path: Path, decoder: Any, moto_endpoint: str, secretsmanager: Any
) -> None:
    """A fresh node has no socket directory: the first fetch makes it (0755,
    root's) and starts the agent there."""
    from conftest import build_artifact
    from support.nomad import install_plugin

    top = Path("/tmp") / f"ns-fresh-{uuid.uuid4().hex[:8]}"
    directory = top / "run"
    top.mkdir(mode=0o755)
    try:
        exe = build_artifact(
            tmp_path / "dist" / "nomad-secrets", tmp_path / "cache", "--socket-dir", str(directory)
        )
        plugins = tmp_path / "common_plugins"
        install_plugin(exe, plugins, ["aws"], agent_config(moto_endpoint, agent="idle_exit_seconds = 30\n"))
        put_secret(secretsmanager, "agent/fresh", "v")
        assert NomadClient(plugins, decoder).fetch("aws", "agent/fresh", REGION_ENV).result == {"value": "v"}
        st = directory.stat()
        assert (st.st_uid, oct(st.st_mode & 0o777)) == (0, "0o755")
        pid = agent_pid(Path(client.socket_name(str(plugins / "secrets"), str(directory))))
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        assert wait_gone(pid)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_check_proves_the_agent_with_a_round_trip(
    nomad: NomadClient, moto_endpoint: str, socket_dir: Path
) -> None:
    write_config(nomad.plugin_dir, agent_config(moto_endpoint))
    absent = run_plugin(nomad.executable("aws"), ["check"], {}).stdout.decode()
    assert "no agent is running" in absent and "agent.auto = false: fetches run in process" in absent
    running = operator_agent(nomad)
    try:
        running.wait_for("listening")
        present = run_plugin(nomad.executable("aws"), ["check"], {}).stdout.decode()
    finally:
        assert running.stop() == 0
    sock = socket_of(nomad, socket_dir)
    assert f"an agent answers at {sock}: build {build_of(running)}, pid {running.proc.pid}, uid 0" in present
    assert "started by operator" in present and "fetches go to it" in present


def test_systemd_socket_activation(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, socket_dir: Path, tmp_path: Path
) -> None:
    """As systemd's socket unit does: the listening socket (at the path the
    plugin directory's fetches look for) arrives as fd 3, with LISTEN_FDS=1
    and LISTEN_PID the agent's own pid."""
    write_config(nomad.plugin_dir, agent_config(moto_endpoint, tmp_path / "debug.log"))
    put_secret(secretsmanager, "agent/activated", "v")
    sock = socket_of(nomad, socket_dir)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock))
    listener.listen(16)
    launcher = (
        "import os, sys\n"
        "os.dup2(int(sys.argv[1]), 3)\n"
        "os.execve(sys.argv[2], [sys.argv[2], 'agent', '--plugin-dir', sys.argv[3]],"
        " {'LISTEN_FDS': '1', 'LISTEN_PID': str(os.getpid())})\n"
    )
    argv = [interpreter(), "-I", "-S", "-c", launcher, str(listener.fileno()), str(nomad.executable("aws"))]
    proc = subprocess.Popen(
        [*argv, str(nomad.plugin_dir / "secrets")], pass_fds=[listener.fileno()], stderr=subprocess.PIPE
    )
    listener.close()  # the agent holds it now
    try:
        assert nomad.fetch("aws", "agent/activated", REGION_ENV).result == {"value": "v"}
        assert in_process(tmp_path / "debug.log") == []
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert f"listening on='{sock}'".encode() in err and b"answered provider='aws'" in err
    assert sock.exists()  # systemd's: it keeps listening on it after the agent stops
    sock.unlink()


def test_a_second_agent_does_not_take_the_socket(agent: AgentProcess, nomad: NomadClient) -> None:
    second = operator_agent(nomad)
    assert second.proc.wait(timeout=15) != 0
    second.stop()
    assert any("an agent already listens on" in line for line in second.lines), second.lines
    assert agent.proc.poll() is None


@pytest.mark.long
def test_an_upgraded_agent_steps_aside_for_the_new_build(
    tmp_path: Path, decoder: Any, moto_endpoint: str, secretsmanager: Any, socket_dir: Path
) -> None:
    """After an upgrade the agent kept answering with the old code. A fetch
    of the new build meets an agent whose executable is another build now:
    the agent stops, and the fetch starts the new build's agent."""
    from conftest import build_artifact
    from test_install import install

    builds = [
        build_artifact(
            tmp_path / v / "nomad-secrets",
            tmp_path / "cache",
            "--version",
            v,
            "--socket-dir",
            str(socket_dir),
        )
        for v in ("0.2.0", "0.3.0")
    ]
    plugins = tmp_path / "common_plugins"
    assert install(builds[0], plugins, "--as", "aws").returncode == 0
    write_config(
        plugins, agent_config(moto_endpoint, tmp_path / "debug.log", agent="idle_exit_seconds = 60\n")
    )
    put_secret(secretsmanager, "agent/upgrade", "v")
    nomad = NomadClient(plugins, decoder)
    sock = Path(client.socket_name(str(plugins / "secrets"), str(socket_dir)))
    assert nomad.fetch("aws", "agent/upgrade", REGION_ENV).result == {"value": "v"}
    old = agent_pid(sock)
    assert old is not None
    assert install(builds[1], plugins, "--as", "aws", "--force").returncode == 0
    assert nomad.fetch("aws", "agent/upgrade", REGION_ENV).result == {"value": "v"}
    assert wait_gone(old)
    new = agent_pid(sock)
    assert new is not None and new != old
    os.kill(new, signal.SIGTERM)
    assert wait_gone(new)


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
    assert (
        "ExecStart=/opt/nomad/data/common_plugins/nomad-secrets agent"
        " --plugin-dir /opt/nomad/data/common_plugins/secrets" in service
    )
    assert "ProtectHome=read-only" in service and "Type=notify" in service and "WatchdogSec=" in service
    expected = client.socket_name("/opt/nomad/data/common_plugins/secrets")
    assert f"ListenStream={expected}" in (units / "nomad-secrets-agent.socket").read_text()
    # ProtectSystem=strict: the files the docs tell the agent to write must be writable in the unit.
    writable = next(line for line in service.splitlines() if line.startswith("ReadWritePaths="))
    paths = [p.lstrip("-") for p in writable.split("=", 1)[1].split()]
    documented = (units.parent.parent / "docs" / "configuration.md").read_text()
    for file in re.findall(r'^file = "(/[^"]+)"', documented, re.M):
        assert any(file == p or file.startswith(p.rstrip("/") + "/") for p in paths), (file, paths)


def test_an_agent_under_the_address_space_floor_does_not_start(nomad: NomadClient) -> None:
    agent = operator_agent(nomad, node=limited(**{"as": 48 * MiB}))
    assert agent.proc.wait(timeout=10) == 2
    agent.stop()
    assert agent.lines == [
        "nomad-secrets agent: its address space limit (RLIMIT_AS) is 48 MiB, under the 64 MiB it needs: raise"
        " LimitAS in the agent's systemd unit (the plugin fetches in process meanwhile)"
    ]


def test_an_agent_whose_code_is_damaged_steps_aside(
    tmp_path: Path, decoder: Any, moto_endpoint: str, ssm: Any, socket_dir: Path
) -> None:
    """The agent met damage in its own unpacked code (a module it had not
    imported yet): it did answer every fetch with "remove the directory and
    restart the agent". Now it answers none and stops; the plugin fetches in
    process, which moves the directory aside and unpacks afresh."""
    from conftest import build_artifact
    from support.nomad import install_plugin
    from test_reliability import _cut, _pyc

    from nomad_secrets.process import cache

    exe = build_artifact(
        tmp_path / "dist" / "nomad-secrets", tmp_path / "cache", "--socket-dir", str(socket_dir)
    )
    plugins = tmp_path / "common_plugins"
    install_plugin(exe, plugins, ["aws-ssm"], agent_config(moto_endpoint))
    ssm.put_parameter(Name="/agent/damaged", Value="v", Type="String", Overwrite=True)
    nomad = NomadClient(plugins, decoder)
    agent = AgentProcess(nomad.executable("aws-ssm"), "--plugin-dir", str(plugins / "secrets"))
    try:
        agent.wait_for("listening")
        (entry,) = [p for p in (tmp_path / "cache").iterdir() if cache.is_entry(p.name)]
        _cut(_pyc(entry, "lib/nomad_secrets/stores/aws/ssm"))  # the agent has not imported it yet
        assert nomad.fetch("aws-ssm", "/agent/damaged", REGION_ENV).result == {"value": "v"}
        agent.wait_for("stopping reason='its unpacked code is damaged; the next fetch heals it'")
        assert agent.proc.wait(timeout=15) == 0
    finally:
        agent.stop()
    assert agent.answered() == []
    (fresh,) = [p for p in (tmp_path / "cache").iterdir() if cache.is_entry(p.name)]
    assert cache.damage(str(fresh)) is None


def stopped_at_start(nomad: NomadClient, path: str, env: dict[str, str], seconds: float) -> dict[str, Any]:
    """A fetch whose process gets no CPU for ``seconds`` right after it
    starts: a node too busy to run it, made exact. The process stops itself
    before it execs the plugin (same pid, same start time), so the stop
    cannot come after a fast fetch has already been answered (a SIGSTOP
    sent from here once did, on a loaded machine)."""
    stop_then_exec = (
        "import os, signal, sys; os.kill(os.getpid(), signal.SIGSTOP); os.execv(sys.argv[1], sys.argv[1:])"
    )
    proc = subprocess.Popen(
        [interpreter(), "-I", "-S", "-c", stop_then_exec, str(nomad.executable("aws")), "fetch", path],
        env=nomad_env("fetch", env, "web", "default"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        time.sleep(0.005)  # not yet stopped
    time.sleep(seconds)
    proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and err == b"", err
    answer: dict[str, Any] = json.loads(out)
    return answer


def test_a_fetch_starved_before_it_asked_the_store_says_the_node_was_busy(
    nomad: NomadClient, moto_endpoint: str, tmp_path: Path
) -> None:
    """In process: the deadline passed before any store was asked (the
    process got no CPU): node-busy, not the store's timeout, and the store
    saw no request."""
    from support.netutil import RecordingProxy

    with RecordingProxy(moto_endpoint) as store:
        config = agent_config(store.url, extra="") + "[plugin]\ndeadline_seconds = 1\n"
        write_config(nomad.plugin_dir, config)  # auto = false: in process
        answer = stopped_at_start(nomad, "agent/starved", REGION_ENV, 1.5)
        assert store.requests == []
    assert answer["result"] == {}
    assert "the node was too busy" in answer["error"] and "(nothing was sent)" in answer["error"], answer
    assert "'agent/starved'" in answer["error"] and "check that the store is reachable" not in answer["error"]


def test_the_agent_counts_from_the_plugins_start(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, tmp_path: Path
) -> None:
    """The audit record's duration and the journal's ms are from the plugin
    process's start (the kernel's record), not from the agent's receipt:
    a plugin held 1 s before it could forward shows more than 1 s."""
    put_secret(secretsmanager, "agent/timed", "v")
    audit = tmp_path / "audit.jsonl"
    config = agent_config(moto_endpoint, extra="") + f'[audit]\nfile = "{audit}"\n'
    write_config(nomad.plugin_dir, config)
    running = operator_agent(nomad)
    try:
        running.wait_for("listening")
        answer = stopped_at_start(nomad, "agent/timed", REGION_ENV, 1.0)
        assert answer == {"result": {"value": "v"}}
        line = running.wait_for("answered provider='aws'")
    finally:
        assert running.stop() == 0
    (record,) = [json.loads(text) for text in audit.read_text().splitlines()]
    assert record["pid"] == running.proc.pid and record["duration_ms"] >= 1000, record
    assert int(line.split(" ms=", 1)[1].split()[0]) >= 1000, line


@pytest.mark.long
def test_an_agent_hung_after_it_took_the_request_is_replaced(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, socket_dir: Path, tmp_path: Path
) -> None:
    """The agent acknowledged, asked a slow store, and was stopped (SIGSTOP):
    its heartbeats stop, the plugin replaces it within its deadline, and
    the new agent answers."""
    from support.netutil import RecordingProxy

    put_secret(secretsmanager, "agent/after-ack", "v")
    with RecordingProxy(moto_endpoint, delay=1.0) as slow:
        write_config(nomad.plugin_dir, agent_config(slow.url, agent=""))
        sock = socket_of(nomad, socket_dir)
        assert nomad.fetch("aws", "agent/after-ack", REGION_ENV).ok
        old = agent_pid(sock)
        assert old is not None
        result: dict[str, Any] = {}
        fetching = threading.Thread(
            target=lambda: result.update(f=nomad.fetch("aws", "agent/after-ack", REGION_ENV))
        )
        seen = len(slow.requests)
        fetching.start()
        while len(slow.requests) == seen:  # the agent took the request and asked the store
            time.sleep(0.01)
        os.kill(old, signal.SIGSTOP)
        try:
            fetching.join()
            assert result["f"].result == {"value": "v"}, result["f"].error
            new = agent_pid(sock)
            assert new is not None and new != old
        finally:
            os.kill(old, signal.SIGCONT)
        assert wait_gone(old)
        os.kill(new, signal.SIGTERM)
        assert wait_gone(new)


@pytest.mark.long
def test_check_against_a_hung_and_a_foreign_agent(
    tmp_path: Path, nomad: NomadClient, moto_endpoint: str, socket_dir: Path
) -> None:
    """check's round trip tells a hung agent and one of another build from
    one that serves, and says what fetches do about each."""
    from conftest import build_artifact

    write_config(nomad.plugin_dir, agent_config(moto_endpoint))
    other = build_artifact(
        tmp_path / "other" / "nomad-secrets",
        tmp_path / "cache",
        "--version",
        "0.0.9",
        "--socket-dir",
        str(socket_dir),
    )
    foreign = AgentProcess(other, "--plugin-dir", str(nomad.plugin_dir / "secrets"))
    try:
        foreign.wait_for("listening")
        said = run_plugin(nomad.executable("aws"), ["check"], {}).stdout.decode()
        assert "it is another build than this executable" in said, said
        os.kill(foreign.proc.pid, signal.SIGSTOP)
        try:
            said = run_plugin(nomad.executable("aws"), ["check"], {}).stdout.decode()
        finally:
            os.kill(foreign.proc.pid, signal.SIGCONT)
        assert "WARNING" in said and "stopped answering (hung?)" in said, said
    finally:
        assert foreign.stop() == 0


def test_a_caller_that_is_not_root_is_answered_for_its_verified_job_only(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, tmp_path: Path
) -> None:
    """agent.users with agent.nomad_jwks_file: uid 65534 is answered only for
    the job its workload identity token proves (signed by PyJWT here,
    verified by the agent against the JWKS); a token of another job than
    the stated one, or of another key, is refused."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key, stranger = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", alg="RS256", use="sig")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    jwks.chmod(0o600)
    tmp_path.chmod(0o755)
    put_secret(secretsmanager, "agent/web-only", "v")
    config = agent_config(
        moto_endpoint, agent=f'auto = false\nusers = ["65534"]\nnomad_jwks_file = "{jwks}"\n'
    )
    config += '[[policy]]\njob = "web"\nallow = ["aws-sm:agent/web-only"]\n'
    write_config(nomad.plugin_dir, config)

    def token(job: str, signer: Any = key) -> bytes:
        claims = {"nomad_namespace": "default", "nomad_job_id": job, "exp": int(time.time()) + 600}
        return jwt.encode(claims, signer, algorithm="RS256", headers={"kid": "k1"}).encode()

    running = operator_agent(nomad)
    try:
        sock, build = listening_on(running), build_of(running)

        def ask(stated_job: bytes, workload_token: bytes) -> bytes:
            env = {b"NOMAD_NAMESPACE": b"default", b"AWS_REGION": b"us-east-2", b"NOMAD_JOB_ID": stated_job}
            env[b"NOMAD_WORKLOAD_TOKEN"] = workload_token
            return raw_request(sock, str(nomad.executable("aws")), "agent/web-only", env, build, user=65534)

        web = ask(b"web", token("web"))
        assert web.endswith(b'{"result": {"value": "v"}}\n'), web
        batch = ask(b"batch", token("batch"))
        assert b"job 'batch', so nothing may be read" in batch and b'"value"' not in batch, batch
        for stated, proved in ((b"web", "batch"), (b"batch", "web")):
            other = ask(stated, token(proved))
            assert other.startswith(client.REFUSED) and b"is not the stated job's" in other, other
        forged = ask(b"web", token("web", stranger))
        assert forged.startswith(client.REFUSED) and b"NOMAD_WORKLOAD_TOKEN was refused" in forged, forged
    finally:
        assert running.stop() == 0


@pytest.mark.serial
def test_a_store_gets_the_same_time_through_the_agent(
    nomad: NomadClient, agent: AgentProcess, moto_endpoint: str, secretsmanager: Any, tmp_path: Path
) -> None:
    """A store that takes 2.2 s of a 3 s deadline: answered through the agent
    (which kept 1.5 s back for a fetch in process, and failed such a store
    at 1.25 s saying "3 s")."""
    from support.netutil import RecordingProxy

    put_secret(secretsmanager, "agent/slow", "v")
    with RecordingProxy(moto_endpoint, delay=2.2) as slow:
        config = agent_config(slow.url, tmp_path / "debug.log", extra="") + "deadline_seconds = 3\n"
        write_config(nomad.plugin_dir, config)
        fetched = nomad.fetch("aws", "agent/slow", REGION_ENV)
    assert fetched.result == {"value": "v"}, fetched.error
    agent.wait_for("answered provider='aws' namespace='default' job='example' outcome='ok'")
    assert in_process(tmp_path / "debug.log") == []


def test_a_fetch_in_process_waits_for_a_slot(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, socket_dir: Path, tmp_path: Path
) -> None:
    """With every slot for fetches in process taken (by this test, as a
    burst's first fetches would), a fetch in process sleeps until one is
    free, then answers: a slope, not a cliff."""
    import fcntl

    write_config(nomad.plugin_dir, agent_config(moto_endpoint))  # auto = false: in process
    put_secret(secretsmanager, "agent/slot", "v")
    held = []
    for i in range(max(os.cpu_count() or 1, 2)):
        fd = os.open(socket_dir / f"slot-{i}", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        held.append(fd)
    result: dict[str, Any] = {}
    fetching = threading.Thread(target=lambda: result.update(f=nomad.fetch("aws", "agent/slot", REGION_ENV)))
    try:
        fetching.start()
        fetching.join(timeout=1.0)
        assert fetching.is_alive() and not result  # it waits: no slot is free
    finally:
        for fd in held:
            os.close(fd)  # the burst's first fetches are done
    fetching.join()
    assert result["f"].result == {"value": "v"}


def test_under_systemd_it_says_ready_and_keeps_the_watchdog(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, socket_dir: Path, tmp_path: Path
) -> None:
    """sd_notify(3) over NOTIFY_SOCKET: READY=1 once it serves, WATCHDOG=1
    while its accept loop runs (WatchdogSec restarts one that stops)."""
    write_config(nomad.plugin_dir, agent_config(moto_endpoint))
    notify = Path(tempfile.mkdtemp(prefix="ns-notify-", dir="/tmp")) / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    listener.settimeout(10)
    proc = subprocess.Popen(
        [str(nomad.executable("aws")), "agent", "--plugin-dir", str(nomad.plugin_dir / "secrets")],
        env={"NOTIFY_SOCKET": str(notify)},
        stderr=subprocess.DEVNULL,
    )
    try:
        said = [listener.recv(256) for _ in range(2)]
        assert said == [b"READY=1", b"WATCHDOG=1"], said
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        listener.close()
        shutil.rmtree(notify.parent)


def test_an_agent_whose_config_is_gone_serves_nothing_and_stops(
    nomad: NomadClient, agent: AgentProcess, moto_endpoint: str
) -> None:
    """No config file, no agent: the fetch runs in process with the
    built-in defaults (here: a job option they refuse), and the agent
    steps aside."""
    (nomad.plugin_dir / "secrets" / "nomad-secrets.toml").unlink()
    fetched = nomad.fetch("aws", "agent/gone", {**REGION_ENV, "AWS_ACCESS_KEY_ID": "x"})
    assert "AWS_ACCESS_KEY_ID" in (fetched.plugin_error or "")
    agent.wait_for("stopping reason='its config can no longer be used")
    assert agent.answered() == []


def test_an_empty_key_in_the_env_block_is_named_and_leaves_the_agent_be(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, socket_dir: Path, tmp_path: Path
) -> None:
    """`"" = "x"` in a secret block's env is `=x` in the plugin's environment:
    it made the agent close the connection (read as "gone": a new agent per
    fetch, at the job's will), and in process `os.environ.clear()` failed
    ("please report it"). Now both name the key, and one agent serves on."""
    write_config(nomad.plugin_dir, agent_config(moto_endpoint, agent="idle_exit_seconds = 60\n"))
    put_secret(secretsmanager, "agent/empty-key", "v")
    sock = socket_of(nomad, socket_dir)
    assert nomad.fetch("aws", "agent/empty-key", REGION_ENV).ok
    first = agent_pid(sock)
    assert first is not None
    # Python's os.execve refuses an empty name; the Nomad client (Go) does not.
    code = (
        "import ctypes, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "def array(items):\n"
        "    return (ctypes.c_char_p * (len(items) + 1))(*items, None)\n"
        "argv = [arg.encode() for arg in sys.argv[1:]]\n"
        "env = [b'CPI_OPERATION=fetch', b'AWS_REGION=us-east-2', b'=x', b'NOMAD_JOB_ID=web']\n"
        "env += [b'NOMAD_NAMESPACE=default']\n"
        "libc.execve(argv[0], array(argv), array(env))\n"
        "sys.exit('execve failed')\n"
    )

    def fetch_names_the_empty_key() -> None:
        plugin = str(nomad.executable("aws"))
        argv = [interpreter(), "-I", "-S", "-c", code, plugin, "fetch", "agent/empty-key"]
        proc = subprocess.run(argv, env={}, capture_output=True, timeout=30)
        assert proc.returncode == 0 and proc.stderr == b"", proc
        assert "the secret block's env sets ''" in json.loads(proc.stdout)["error"], proc.stdout

    for _ in range(3):
        fetch_names_the_empty_key()
    assert agent_pid(sock) == first  # the same agent: none was started, none replaced
    write_config(nomad.plugin_dir, agent_config(moto_endpoint))  # auto = false: in process
    os.kill(first, signal.SIGTERM)
    assert wait_gone(first)
    fetch_names_the_empty_key()


def test_a_caller_in_agent_users_cannot_hold_the_agent_with_half_requests(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, tmp_path: Path
) -> None:
    """uid 65534 in agent.users opens 40 connections and sends a byte of a
    request every so often: each is cut at the request's deadline (not a
    deadline per byte), no more than MAX_PER_USER are served at once, and a
    root fetch meanwhile is answered by the agent; a ping tells it nothing."""
    from nomad_secrets.agent.server import MAX_PER_USER

    write_config(
        nomad.plugin_dir,
        agent_config(moto_endpoint, tmp_path / "debug.log", agent='auto = false\nusers = ["65534"]\n'),
    )
    put_secret(secretsmanager, "agent/drip", "v")
    running = operator_agent(nomad)
    try:
        sock = listening_on(running)
        start = client.request(client.KIND_FETCH, str(nomad.executable("aws")), "agent/drip", "x", {})[:8]
        drip = (
            "import socket, time\n"
            "held = []\n"
            "for _ in range(40):\n"
            "    s = socket.socket(socket.AF_UNIX)\n"
            f"    s.connect({str(sock)!r})\n"
            "    held.append(s)\n"
            f"for i in range(8):  # the request's first bytes, one each 0.5 s\n"
            "    for s in held:\n"
            "        try: s.send(bytes([%r[i]]))\n"
            "        except OSError: pass\n"
            "    time.sleep(0.5)\n"
        ) % start
        dripping = subprocess.Popen([interpreter(), "-I", "-S", "-c", drip], user=65534)
        running.wait_for("refused")  # the connections past MAX_PER_USER, at accept
        assert nomad.fetch("aws", "agent/drip", REGION_ENV).result == {"value": "v"}
        assert in_process(tmp_path / "debug.log") == []
        cut = running.wait_for("bad-request uid=65534 error='the request was not sent in time'")
        assert cut
        assert dripping.wait(timeout=30) == 0
        bad = [line for line in running.lines if line.startswith("bad-request uid=65534")]
        assert 1 <= len(bad) <= MAX_PER_USER, bad
        env = {b"NOMAD_JOB_ID": b"web", b"NOMAD_NAMESPACE": b"default"}
        message = client.request(client.KIND_PING, str(nomad.executable("aws")), "", build_of(running), env)
        code = (
            "import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            f"s.connect({str(sock)!r})\n"
            f"s.sendall({message!r})\n"
            "sys.stdout.buffer.write(s.recv(65536))\n"
        )
        ping = subprocess.run(
            [interpreter(), "-I", "-S", "-c", code], user=65534, capture_output=True, timeout=20
        )
        assert b'"pid"' not in ping.stdout and b"plugin_dir" not in ping.stdout, ping.stdout
    finally:
        assert running.stop() == 0


def test_a_build_copied_over_the_running_one_gets_its_own_agent(
    tmp_path: Path, decoder: Any, moto_endpoint: str, secretsmanager: Any, socket_dir: Path
) -> None:
    """`cp` of a new build over the executable keeps its name (and real
    path): the agent took that for no change, refused the new build's
    fetches for good and never idled out. Now it sees another file, and
    steps aside for the new build's agent."""
    from conftest import build_artifact
    from support.nomad import install_plugin

    old, new = (
        build_artifact(tmp_path / v / "nomad-secrets", tmp_path / "cache", "--version", v)
        for v in ("0.2.0", "0.3.0")
    )
    plugins = tmp_path / "common_plugins"
    install_plugin(old, plugins, ["aws"], agent_config(moto_endpoint, agent="idle_exit_seconds = 60\n"))
    put_secret(secretsmanager, "agent/copied", "v")
    nomad = NomadClient(plugins, decoder)
    sock = Path(client.socket_name(str(plugins / "secrets"), str(socket_dir)))
    assert nomad.fetch("aws", "agent/copied", REGION_ENV).ok
    first = agent_pid(sock)
    assert first is not None
    target = os.path.realpath(plugins / "secrets" / "aws")
    shutil.copyfile(new, target)  # in place: same name, same inode
    assert nomad.fetch("aws", "agent/copied", REGION_ENV).result == {"value": "v"}
    assert wait_gone(first)
    second = agent_pid(sock)
    assert second is not None and second != first
    os.kill(second, signal.SIGTERM)
    assert wait_gone(second)


def test_the_agent_a_fetch_starts_holds_none_of_its_descriptors_nor_its_directory(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, socket_dir: Path, tmp_path: Path
) -> None:
    """A fetch run by a person's shell (or any supervisor) may hold more
    than Nomad's three descriptors: the agent it started kept them (a pipe
    held its reader until the agent idled out) and its working directory."""
    write_config(nomad.plugin_dir, agent_config(moto_endpoint, agent="idle_exit_seconds = 60\n"))
    put_secret(secretsmanager, "agent/fds", "v")
    reader, writer = os.pipe()
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    try:
        proc = subprocess.run(
            [str(nomad.executable("aws")), "fetch", "agent/fds"],
            env=nomad_env("fetch", REGION_ENV, "web", "default"),
            capture_output=True,
            pass_fds=[writer],
            cwd=workdir,
            timeout=30,
        )
        assert json.loads(proc.stdout) == {"result": {"value": "v"}}
        pid = agent_pid(socket_of(nomad, socket_dir))
        assert pid is not None
        held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert os.readlink(f"/proc/self/fd/{writer}") not in held
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        os.kill(pid, signal.SIGTERM)
        assert wait_gone(pid)
    finally:
        os.close(reader)
        os.close(writer)


def test_a_self_started_agent_writes_the_debug_log(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, socket_dir: Path, tmp_path: Path
) -> None:
    """Its stderr is /dev/null and a node may run no syslog: with
    plugin.debug_log set, its lines (and the fetches it serves) are there."""
    log = tmp_path / "debug.log"
    write_config(nomad.plugin_dir, agent_config(moto_endpoint, log, agent="idle_exit_seconds = 60\n"))
    put_secret(secretsmanager, "agent/logged", "v")
    assert nomad.fetch("aws", "agent/logged", REGION_ENV).ok
    assert nomad.fetch("aws", "agent/logged", REGION_ENV).ok
    pid = agent_pid(socket_of(nomad, socket_dir))
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    assert wait_gone(pid)
    text = log.read_text()
    assert f"pid={pid} agent-listening" in text and f"pid={pid} agent-answered provider='aws'" in text, text
    assert f"pid={pid} agent-stopped" in text


def test_check_names_a_socket_directory_no_fetch_can_use(
    nomad: NomadClient, moto_endpoint: str, socket_dir: Path
) -> None:
    write_config(nomad.plugin_dir, agent_config(moto_endpoint, agent=""))
    mode = socket_dir.stat().st_mode & 0o7777
    socket_dir.chmod(0o777)
    try:
        said = run_plugin(nomad.executable("aws"), ["check"], {}).stdout.decode()
    finally:
        socket_dir.chmod(mode)
    assert f"PROBLEM  the directory {socket_dir} is writable by group or others" in said, said
    assert f"chmod 0755 {socket_dir}: fetches can start no agent" in said
