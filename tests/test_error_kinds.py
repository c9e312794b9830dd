"""The error kinds an operator alerts on (errors.KINDS), as the audit record
and the metrics show them, through the built executable: a broken network
(`unreachable`) is told from a broken store (`store-error`: HTTP 5xx, an
answer that is not the store's), its rate limit (`throttled`), its slowness
(`timed-out`) and the caller's own mistakes (`denied`, `not-found`).
Issue 23, item 6: an HTTP 500 was `unreachable`, like a refused connection.

The faults are the test doubles the other fault tests use (aws_double.NotAws,
netutil's hanging server and throttling proxy, vault_faults.FaultProxy in
front of the real OpenBao server); denials and missing secrets come from the
real stores."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from conftest import MotoIam, aws_config, write_config
from support.aws_double import NotAws
from support.netutil import HangingServer, RecordingProxy, dead_port_url
from support.nomad import NomadClient
from support.openbao import Vault
from support.vault_faults import Fault, FaultProxy
from test_metrics import samples

from nomad_secrets.process.errors import KINDS

OBSERVED = '[audit]\nfile = "{audit}"\n[metrics]\nfile = "{prom}"\n'


def observed(tmp_path: Path) -> tuple[str, Path, Path]:
    """The [audit] file and [metrics] file sections, in a directory of their own."""
    top = tmp_path / "observed"
    top.mkdir(mode=0o755, exist_ok=True)
    audit, prom = top / "audit.jsonl", top / "nomad-secrets.prom"
    return OBSERVED.format(audit=audit, prom=prom), audit, prom


def kinds_seen(audit: Path, prom: Path) -> tuple[str, set[str]]:
    """The last record's error kind, and every failed outcome the metrics count."""
    record = json.loads(audit.read_text().splitlines()[-1])
    outcomes = {
        dict(labels)["outcome"]
        for (name, labels), value in samples(prom.read_text()).items()
        if name == "nomad_secrets_fetches_total" and value and dict(labels)["outcome"] != "ok"
    }
    return record["error_kind"], outcomes


@pytest.mark.parametrize(
    ("store", "kind"),
    [
        (lambda: contextless(dead_port_url()), "unreachable"),
        (partial(NotAws, b'{"__type": "InternalFailure", "message": "boom"}', 500), "store-error"),
        (partial(NotAws, b'{"__type": "ServiceUnavailable", "message": "down"}', 503), "store-error"),
        (partial(NotAws, b"<html>a proxy's page</html>", 200), "store-error"),
        (partial(NotAws, b'{"__type": "SlowDown", "message": "too many"}', 429), "throttled"),
        (HangingServer, "timed-out"),  # at the plugin's deadline, 2 s here
    ],
    ids=["refused", "http-500", "http-503", "not-aws", "http-429", "hanging"],
)
def test_aws_failures_by_kind(
    nomad: NomadClient, tmp_path: Path, store: Callable[[], Any], kind: str
) -> None:
    sections, audit, prom = observed(tmp_path)
    with store() as double:
        deadline = "[plugin]\ndeadline_seconds = 2\n" if kind == "timed-out" else ""
        write_config(nomad.plugin_dir, aws_config(double.url) + deadline + sections)
        fetched = nomad.fetch("aws", "kinds/db")
    assert fetched.run.returncode == 0 and not fetched.ok and not fetched.run.terminated
    assert kinds_seen(audit, prom) == (kind, {kind})
    assert kind in KINDS


@pytest.mark.long
def test_aws_throttling_after_retries(nomad: NomadClient, moto_endpoint: str, tmp_path: Path) -> None:
    sections, audit, prom = observed(tmp_path)
    with RecordingProxy(moto_endpoint, throttle=100) as proxy:
        write_config(nomad.plugin_dir, aws_config(proxy.url) + sections)
        assert not nomad.fetch("aws", "kinds/db").ok
    assert len(proxy.requests) == 4  # botocore's standard retries, then the kind
    assert kinds_seen(audit, prom) == ("throttled", {"throttled"})


def test_aws_denied_and_not_found(
    nomad: NomadClient, moto_endpoint: str, moto_iam: MotoIam, tmp_path: Path
) -> None:
    sections, audit, prom = observed(tmp_path)
    write_config(nomad.plugin_dir, moto_iam.config() + sections)
    assert not nomad.fetch("aws", "denied-secret").ok
    assert kinds_seen(audit, prom) == ("denied", {"denied"})
    write_config(nomad.plugin_dir, aws_config(moto_endpoint) + sections)
    assert not nomad.fetch("aws", "kinds/missing").ok
    assert kinds_seen(audit, prom) == ("not-found", {"denied", "not-found"})


def vault_answer(status: int, body: bytes, content_type: str = "application/json") -> Fault:
    return Fault("secret/data/", status, body, {"Content-Type": content_type})


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (vault_answer(500, b'{"errors": ["storage failed"]}'), "store-error"),
        (vault_answer(503, b'{"errors": ["Vault is sealed"]}'), "store-error"),
        (vault_answer(502, b"bad gateway", "text/plain"), "store-error"),
        (vault_answer(200, b'{"data": {"data": "text"}}'), "store-error"),
        (vault_answer(429, b'{"errors": ["rate limit quota exceeded"]}'), "throttled"),
    ],
    ids=["http-500", "sealed-503", "http-502", "malformed", "http-429"],
)
def test_vault_failures_by_kind(vault: Vault, tmp_path: Path, fault: Fault, kind: str) -> None:
    sections, audit, prom = observed(tmp_path)
    with FaultProxy(vault.server.address, fault) as proxy:
        vault.configure(sections, address=proxy.url)
        vault.error("vault:secret/kinds")
    assert kinds_seen(audit, prom) == (kind, {kind})


def test_vault_unreachable_denied_and_not_found(vault: Vault, tmp_path: Path) -> None:
    sections, audit, prom = observed(tmp_path)
    vault.configure(sections, address=dead_port_url())
    vault.error("vault:secret/kinds")
    assert kinds_seen(audit, prom)[0] == "unreachable"
    vault.configure(sections, token="not-a-token")
    vault.error("vault:secret/kinds")
    assert kinds_seen(audit, prom)[0] == "denied"
    vault.configure(sections)
    vault.error("vault:secret/kinds-missing")
    assert kinds_seen(audit, prom) == ("not-found", {"unreachable", "denied", "not-found"})


class contextless:
    """A URL nothing listens on, as a context manager like the doubles."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> contextless:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def test_a_limit_is_told_by_its_class() -> None:
    """The agent steps aside when it runs out of memory and only skips the
    request when out of descriptors: it tells them by class, not by words
    of the message."""
    import errno

    from nomad_secrets.process import limits

    assert limits.exhausted(RuntimeError("x")) is None  # nothing of a limit in an unrelated failure
    wrapped = RuntimeError("cannot connect")
    wrapped.__context__ = MemoryError()
    assert isinstance(limits.exhausted(wrapped), limits.OutOfMemory)
    emfile = limits.exhausted(OSError(errno.EMFILE, "Too many open files"))
    assert isinstance(emfile, limits.OutOfDescriptors) and not isinstance(emfile, limits.OutOfMemory)
    assert isinstance(limits.out_of_descriptors("x", errno.ENFILE), limits.OutOfDescriptors)
    assert emfile.kind == limits.out_of_memory("x").kind == "resource-limit"
