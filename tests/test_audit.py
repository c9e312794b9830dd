"""The audit record (docs/configuration.md, [audit]) through the executable
as Nomad runs it: to a local datagram socket standing in for the node's
/dev/log, and to a JSON-lines file; a missing or blocked socket never
delays or fails a fetch."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, aws_config, doc_block, put_secret, write_config
from support.agent_process import AgentProcess
from support.netutil import HangingServer
from support.nomad import NomadClient

DOC = ROOT / "docs" / "configuration.md"
# syslog(3)'s format on a local socket, as util-linux's logger writes it too.
SYSLOG_LINE = re.compile(
    rb"<(\d+)>([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) nomad-secrets\[(\d+)\]: (.*)\Z", re.S
)


class DevLog:
    """A datagram socket standing in for /dev/log (journald's or rsyslog's)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)

    def received(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(1 << 20))
            except BlockingIOError:
                return out

    def fill(self) -> int:
        """Send until the socket's queue is full: a syslog daemon that stopped reading."""
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sender.setblocking(False)
        sent = 0
        try:
            while True:
                sender.sendto(b"<14>filler", str(self.path))
                sent += 1
        except BlockingIOError:
            return sent
        finally:
            sender.close()


@pytest.fixture
def devlog(tmp_path: Path) -> Iterator[DevLog]:
    log = DevLog(tmp_path / "dev-log")
    yield log
    log.sock.close()


def audited(
    plugin_dir: Path, moto_endpoint: str, devlog_path: Path, audit_file: Path, extra: str = ""
) -> None:
    """The docs' [audit] example, pointed at the stand-in socket and a test
    file (and ``extra`` sections)."""
    block = doc_block(DOC, "[audit]\nsyslog = true")
    block = block.replace("/var/log/nomad-secrets/audit.jsonl", str(audit_file))
    block = block.replace("syslog = true", f'syslog = true\nsyslog_socket = "{devlog_path}"')
    write_config(plugin_dir, aws_config(moto_endpoint) + block + extra)


def test_a_record_per_fetch_to_syslog_and_the_file(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, devlog: DevLog, tmp_path: Path
) -> None:
    audit_file = tmp_path / "log" / "audit.jsonl"
    audit_file.parent.mkdir(mode=0o700)
    audited(nomad.plugin_dir, moto_endpoint, devlog.path, audit_file)
    put_secret(secretsmanager, "audit/db", '{"password": "hunter2-audit"}')
    ok = nomad.fetch("aws", "db = aws-sm:audit/db\nflag = aws-ssm:/audit/none\n", job_id="web")
    assert not ok.ok  # the SSM parameter is missing: one record, the failure's kind
    ok = nomad.fetch("aws", "audit/db#password", job_id="web", namespace="payments")
    assert ok.ok and ok.result == {"value": "hunter2-audit"}

    datagrams = devlog.received()
    assert len(datagrams) == 2
    records = []
    for datagram in datagrams:
        match = SYSLOG_LINE.match(datagram)
        assert match, datagram
        records.append((int(match.group(1)), json.loads(match.group(4))))
    (pri_failed, failed), (pri_ok, answered) = records
    assert (pri_failed, pri_ok) == (10 * 8 + 4, 10 * 8 + 6)  # authpriv.warning, authpriv.info
    assert failed["references"] == ["db = aws-sm:audit/db", "flag = aws-ssm:/audit/none"]
    assert failed["stores"] == ["aws-sm", "aws-ssm"]
    assert (failed["outcome"], failed["error_kind"]) == ("error", "not-found")
    assert (failed["namespace"], failed["job"], failed["provider"]) == ("default", "web", "aws")
    assert answered["references"] == ["audit/db#password"] and answered["stores"] == ["aws-sm"]
    assert (answered["outcome"], answered["error_kind"], answered["namespace"]) == ("ok", None, "payments")
    assert 0 < answered["duration_ms"] < 10_000
    # the file has the same records, one JSON object a line, 0600
    lines = audit_file.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [failed, answered]
    assert (audit_file.stat().st_mode & 0o777) == 0o600
    # the documented record has these keys, no more, no less
    documented = json.loads(doc_block(DOC, '"event": "fetch"', "json"))
    assert set(documented) == set(answered)
    for text in [*lines, *(d.decode() for d in datagrams)]:
        assert "hunter2-audit" not in text


def test_the_datagram_is_in_syslogs_own_format(
    nomad: NomadClient, moto_endpoint: str, devlog: DevLog, tmp_path: Path
) -> None:
    """util-linux's logger, writing to the same kind of socket, gives the
    same shape (journald takes the tag for SYSLOG_IDENTIFIER, so
    `journalctl -t nomad-secrets` finds it)."""
    logger = shutil.which("logger")
    if logger is None:
        pytest.skip("needs util-linux's logger (apt-get install bsdutils)")
    audited(nomad.plugin_dir, moto_endpoint, devlog.path, tmp_path / "audit.jsonl")
    nomad.fetch("aws", "no/such/secret")
    (ours,) = devlog.received()
    subprocess.run(
        [logger, "-u", str(devlog.path), "-t", "nomad-secrets", "-p", "authpriv.warning", "--id=4242", "x"],
        check=True,
    )
    (theirs,) = devlog.received()
    ours_match, theirs_match = SYSLOG_LINE.match(ours), SYSLOG_LINE.match(theirs)
    assert ours_match and theirs_match, (ours, theirs)
    assert ours_match.group(1) == theirs_match.group(1) == b"84"
    assert theirs_match.group(4) == b"x"


def test_a_missing_or_blocked_socket_never_delays_or_fails_a_fetch(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, devlog: DevLog, tmp_path: Path
) -> None:
    put_secret(secretsmanager, "audit/blocked", "v")
    audit_file = tmp_path / "audit.jsonl"
    audited(nomad.plugin_dir, moto_endpoint, tmp_path / "no-such-socket", audit_file)
    fetched = nomad.fetch("aws", "audit/blocked")
    assert fetched.ok and fetched.result == {"value": "v"}
    assert len(audit_file.read_text().splitlines()) == 1  # the file still gets it

    audited(nomad.plugin_dir, moto_endpoint, devlog.path, audit_file)
    assert devlog.fill() > 0  # the reader is behind: a send would block
    slow = NomadClient(nomad.plugin_dir, nomad.decoder, timeout=5)
    fetched = slow.fetch("aws", "audit/blocked")
    assert not fetched.run.terminated and fetched.ok and fetched.result == {"value": "v"}
    assert fetched.run.stderr == b""
    assert len(audit_file.read_text().splitlines()) == 2
    assert all(d == b"<14>filler" for d in devlog.received())  # ours was dropped, not queued


def test_an_untrusted_audit_file_is_skipped_and_check_says_so(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, devlog: DevLog, tmp_path: Path
) -> None:
    put_secret(secretsmanager, "audit/untrusted", "v")
    audit_file = tmp_path / "audit.jsonl"
    audit_file.write_text("")
    audit_file.chmod(0o666)
    audited(nomad.plugin_dir, moto_endpoint, devlog.path, audit_file)
    fetched = nomad.fetch("aws", "audit/untrusted")
    assert fetched.ok and audit_file.read_text() == ""
    assert len(devlog.received()) == 1  # syslog still has it
    check = subprocess.run(
        [str(nomad.executable("aws")), "check"], capture_output=True, text=True, env={}, timeout=60
    )
    assert f"WARNING  the audit file {audit_file} is writable by group or others" in check.stdout
    assert "fetches run without the audit file until it is fixed" in check.stdout


def test_nomads_sigterm_is_recorded(
    nomad: NomadClient, moto_endpoint: str, devlog: DevLog, tmp_path: Path
) -> None:
    audit_file = tmp_path / "audit.jsonl"
    with HangingServer() as hanging:
        audited(nomad.plugin_dir, hanging.url, devlog.path, audit_file, "[plugin]\ndeadline_seconds = 60\n")
        fetched = NomadClient(nomad.plugin_dir, nomad.decoder, timeout=1.5).fetch("aws", "stuck/secret")
    assert fetched.run.terminated and fetched.run.returncode == 0
    (record,) = [json.loads(line) for line in audit_file.read_text().splitlines()]
    assert (record["error_kind"], record["references"]) == ("terminated", ["stuck/secret"])
    assert len(devlog.received()) == 1


def test_a_path_that_does_not_parse_is_recorded_as_written(
    nomad: NomadClient, moto_endpoint: str, devlog: DevLog, tmp_path: Path
) -> None:
    audited(nomad.plugin_dir, moto_endpoint, devlog.path, tmp_path / "audit.jsonl")
    nomad.fetch("aws", "db = aws-sm:prod/db")
    (datagram,) = devlog.received()
    match = SYSLOG_LINE.match(datagram)
    assert match
    record = json.loads(match.group(4))
    assert (record["references"], record["path"], record["error_kind"]) == (
        [],
        "db = aws-sm:prod/db",
        "request",
    )


def test_audit_keys_are_checked() -> None:
    from nomad_secrets.core import config
    from nomad_secrets.process.errors import ConfigError

    with pytest.raises(ConfigError, match=r"audit\.syslog_facility in f is .mail."):
        config.parse(b"[audit]\nsyslog_facility = 'mail'\n", "f")
    with pytest.raises(ConfigError, match=r"audit\.file in f must be an absolute path"):
        config.parse(b"[audit]\nfile = 'audit.jsonl'\n", "f")
    with pytest.raises(ConfigError, match=r"unknown key .audit\.sylog."):
        config.parse(b"[audit]\nsylog = true\n", "f")
    assert os.path.isabs(config.parse(b"[audit]\nsyslog = true\n", "f").audit.syslog_socket)


def test_the_readme_example(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, devlog: DevLog, tmp_path: Path
) -> None:
    """README's [audit] and [metrics] block, as written but for its paths."""
    block = doc_block(ROOT / "README.md", "[metrics]")
    audit_file, prom = tmp_path / "audit.jsonl", tmp_path / "textfile" / "nomad-secrets.prom"
    prom.parent.mkdir()
    block = block.replace("/var/log/nomad-secrets/audit.jsonl", str(audit_file))
    assert "/var/lib/nomad-secrets/metrics/nomad-secrets.prom" in block
    block = block.replace("/var/lib/nomad-secrets/metrics/nomad-secrets.prom", str(prom))
    block = block.replace("syslog = true", f'syslog = true\nsyslog_socket = "{devlog.path}"')
    write_config(nomad.plugin_dir, aws_config(moto_endpoint) + block)
    put_secret(secretsmanager, "audit/readme", "v")
    assert nomad.fetch("aws", "audit/readme").result == {"value": "v"}
    (datagram,) = devlog.received()
    assert b'"references": ["audit/readme"]' in datagram
    assert len(audit_file.read_text().splitlines()) == 1
    assert 'nomad_secrets_fetches_total{provider="aws",store="aws-sm",outcome="ok"} 1\n' in prom.read_text()


def test_a_fetch_the_node_agent_serves_is_recorded_once(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, devlog: DevLog, tmp_path: Path
) -> None:
    """With [agent], the agent fetches and records; the plugin that
    forwarded records nothing of its own."""
    put_secret(secretsmanager, "audit/agent", "v")
    audit_file = tmp_path / "audit.jsonl"
    with _agent(nomad, moto_endpoint, devlog, audit_file) as agent:
        assert nomad.fetch("aws", "audit/agent", job_id="web").result == {"value": "v"}
        agent.wait_for("answered provider='aws' namespace='default' job='web' outcome='ok'")
    (record,) = [json.loads(line) for line in audit_file.read_text().splitlines()]
    assert (record["references"], record["outcome"], record["pid"]) == (["audit/agent"], "ok", agent.proc.pid)
    assert len(devlog.received()) == 1


def test_the_agent_says_in_its_journal_when_it_cannot_write_the_record(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, devlog: DevLog, tmp_path: Path
) -> None:
    """The agent's stderr is its journal: an audit file it may not write
    (a planted one here; a read-only path under the shipped unit's
    ProtectSystem=strict in production) is said there, not lost."""
    put_secret(secretsmanager, "audit/agent-ro", "v")
    audit_file = tmp_path / "audit.jsonl"
    audit_file.write_text("")
    os.chown(audit_file, 65534, 65534)  # not root's: refused by the trust rules
    with _agent(nomad, moto_endpoint, devlog, audit_file) as agent:
        assert nomad.fetch("aws", "audit/agent-ro", job_id="web").result == {"value": "v"}
        agent.wait_for(f"observe-skipped reason='the audit file {audit_file} is owned by uid 65534")
    assert audit_file.read_text() == ""


@contextmanager
def _agent(
    nomad: NomadClient, moto_endpoint: str, devlog: DevLog, audit_file: Path
) -> Iterator[AgentProcess]:
    """The node agent serving the audited plugin (syslog and ``audit_file``)."""
    audited(nomad.plugin_dir, moto_endpoint, devlog.path, audit_file, "[agent]\nauto = false\n")
    agent = AgentProcess(nomad.executable("aws"), "--plugin-dir", str(nomad.plugin_dir / "secrets"))
    try:
        agent.wait_for("listening")
        yield agent
    finally:
        assert agent.stop() == 0
