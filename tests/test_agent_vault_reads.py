"""Fewer store calls through the node agent (issue 22) against the real
OpenBao server (tests/openbao.py), seen through a pass-through proxy
double (tests/vault_faults.py) that counts the reads and can answer for a
sealed server: KV v2 reads share calls and are kept for cache_seconds; a
kept value stands in for a sealed server with stale_if_error_seconds,
never once the server said not found; an engine that is not KV (pki) is
never kept. Counts and events only, never times."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.nomad import Fetched
from support.openbao import Vault, unique
from support.vault_faults import Fault, FaultProxy
from test_agent_vault import Agent

SEALED = Fault(path="", status=503, body=b'{"errors": ["Vault is sealed"]}')


def reads(proxy: FaultProxy, api_path: str) -> int:
    """The reads of ``api_path`` that reached the proxy, so far."""
    return sum(1 for seen in proxy.paths() if seen == f"GET {api_path}")


class Served:
    """The agent serving the ``openbao`` provider through the proxy, with an
    audit file and a metrics file."""

    def __init__(self, vault: Vault, proxy: FaultProxy, tmp_path: Path) -> None:
        self.vault, self.proxy = vault, proxy
        self.audit = tmp_path / "audit.jsonl"
        self.prom = tmp_path / "metrics" / "nomad-secrets.prom"
        self.prom.parent.mkdir(mode=0o755)
        self.agent = Agent(vault, tmp_path / "debug.log")
        self.sections = (
            self.agent.sections + f'[audit]\nfile = "{self.audit}"\n[metrics]\nfile = "{self.prom}"\n'
        )

    def configure(self, **vault: Any) -> None:
        self.agent.sections = self.vault.sections = self.sections
        self.vault.configure(address=self.proxy.url, kv_mounts={"secret": 2}, **vault)

    def records(self) -> list[dict[str, Any]]:
        """Every answered fetch's audit record, once written."""
        answered = len(self.agent.process.answered())
        for _ in range(1000):
            lines = self.audit.read_text().splitlines() if self.audit.exists() else []
            if len(lines) >= answered:
                return [json.loads(line) for line in lines]
            time.sleep(0.01)
        raise AssertionError(f"{answered} answered, {len(lines)} records")

    def counted(self, metric: str) -> float:
        """A count of the metrics file, once every answered fetch counted
        itself (the record comes first, the counts after it)."""
        answered = len(self.agent.process.answered())
        for _ in range(1000):
            if self._count("nomad_secrets_fetches_total", 'provider="openbao",') >= answered:
                break
            time.sleep(0.01)
        return self._count(metric, 'provider="openbao",store="vault"} ')

    def _count(self, metric: str, labels: str) -> float:
        text = self.prom.read_text() if self.prom.exists() else ""
        wanted = f"{metric}{{{labels}"
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(wanted))

    def until(self, path: str, done: Callable[[Fetched], bool]) -> Fetched:
        """Fetch until ``done`` says the answer is the one awaited (what the
        agent keeps passes its cache_seconds: an event, not a time)."""
        for _ in range(100):
            fetched = self.agent.fetch(path)
            if done(fetched):
                return fetched
            assert fetched.ok, fetched.error
            time.sleep(0.1)
        raise AssertionError(f"{path}: the awaited answer never came")


def test_kv2_reads_are_shared_and_kept(vault: Vault, tmp_path: Path) -> None:
    name = unique("kept")
    vault.server.put_kv("secret", name, {"password": "v1"})
    with FaultProxy(vault.server.address) as proxy:
        served = Served(vault, proxy, tmp_path)
        try:
            served.configure(cache_seconds=60)
            api_path = f"secret/data/{name}"
            results: list[Any] = [None] * 20
            ready = threading.Barrier(20)

            def one(i: int) -> None:
                ready.wait()
                results[i] = vault.fetch(f"vault:secret/{name}")

            for _ in range(2):
                threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                assert [r.result for r in results] == [{"password": "v1"}] * 20
            assert reads(proxy, api_path) == 1
            # A version pinned is another read, kept too.
            assert served.agent.fetch(f"vault:secret/{name}?version=1").result == {"password": "v1"}
            assert served.agent.fetch(f"vault:secret/{name}?version=1#password").result == {"value": "v1"}
            assert reads(proxy, api_path) == 2
            records = served.records()
            assert sum(r["store_reads"]["vault"]["calls"] for r in records) == 2
            assert (
                sum(r["store_reads"]["vault"]["hits"] + r["store_reads"]["vault"]["shared"] for r in records)
                == 40
            )
        finally:
            served.agent.process.stop()


def test_stale_if_error_stands_in_for_a_sealed_server(vault: Vault, tmp_path: Path) -> None:
    """cache_seconds = 1, stale_if_error_seconds = 3600: the server sealed
    (503), a kept KV v2 value is answered, marked stale; one the server said
    was not found (deleted) before is not; without stale_if_error_seconds
    the fetch fails as it does with no agent."""
    name, deleted = unique("stale"), unique("deleted")
    vault.server.put_kv("secret", name, {"password": "still-here"})
    vault.server.put_kv("secret", deleted, {"password": "gone-soon"})
    with FaultProxy(vault.server.address) as proxy:
        served = Served(vault, proxy, tmp_path)
        try:
            served.configure(cache_seconds=1)
            assert served.agent.fetch(f"vault:secret/{name}").ok
            proxy.faults.append(SEALED)
            failed = served.until(f"vault:secret/{name}", lambda f: not f.ok)
            assert "(Vault)" in (failed.plugin_error or "") and b"still-here" not in failed.run.stdout
            proxy.faults.clear()

            served.configure(cache_seconds=1, stale_if_error_seconds=3600)
            assert served.agent.fetch(f"vault:secret/{name}").result == {"password": "still-here"}
            assert served.agent.fetch(f"vault:secret/{deleted}").result == {"password": "gone-soon"}
            vault.server.api("DELETE", f"secret/metadata/{deleted}")
            gone = served.until(f"vault:secret/{deleted}", lambda f: not f.ok)
            assert "not found" in (gone.plugin_error or ""), gone
            proxy.faults.append(SEALED)
            kept = len(served.records())
            stale = served.until(f"vault:secret/{name}", lambda f: served.records()[-1].get("stale") is True)
            assert stale.result == {"password": "still-here"}
            records = served.records()[kept:]
            assert [r["outcome"] for r in records] == ["ok"] * len(records)
            assert records[-1]["store_reads"]["vault"]["stale"] == 1
            assert served.counted("nomad_secrets_stale_answers_total") == 1
            again = served.agent.fetch(f"vault:secret/{deleted}")
            assert not again.ok and b"gone-soon" not in again.run.stdout, again
        finally:
            served.agent.process.stop()


def test_an_engine_that_is_not_kv_is_never_kept(vault: Vault, tmp_path: Path) -> None:
    """pki's read (and any other engine's, dynamic secrets among them) goes
    to the server every time, whatever cache_seconds says."""
    with FaultProxy(vault.server.address) as proxy:
        served = Served(vault, proxy, tmp_path)
        try:
            served.configure(cache_seconds=60, stale_if_error_seconds=3600)
            for _ in range(3):
                assert "certificate" in served.agent.fetch("vault:pki/cert/ca").result
            assert reads(proxy, "pki/cert/ca") == 3
            proxy.faults.append(SEALED)
            assert not served.agent.fetch("vault:pki/cert/ca").ok  # nothing kept to stand in
        finally:
            served.agent.process.stop()


def test_a_dynamic_secret_is_never_kept(vault: Vault, tmp_path: Path, postgres_url: str) -> None:
    """Vault's database engine on a real PostgreSQL: each read of
    database/creds makes a new user, with a lease. Through the agent with
    cache_seconds = 60, two reads give two different users: a read that
    returned a lease is never kept."""
    mount = unique("db")
    server = vault.server
    server.mount(mount, "database")
    server.api(
        "POST",
        f"{mount}/config/pg",
        {
            "plugin_name": "postgresql-database-plugin",
            "connection_url": postgres_url,
            "username": "postgres",
            "password": "unused-with-trust",
            "allowed_roles": ["app"],
            "verify_connection": True,
        },
    )
    server.api(
        "POST",
        f"{mount}/roles/app",
        {
            "db_name": "pg",
            "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}';"],
            "default_ttl": "5m",
        },
    )
    server.policy(mount, f'path "{mount}/creds/*" {{ capabilities = ["read"] }}')
    with FaultProxy(server.address) as proxy:
        served = Served(vault, proxy, tmp_path)
        try:
            served.configure(token=server.token(mount), cache_seconds=60, stale_if_error_seconds=3600)
            first = served.agent.fetch(f"vault:{mount}/creds/app")
            second = served.agent.fetch(f"vault:{mount}/creds/app")
            assert first.ok and second.ok, (first.error, second.error)
            assert first.result["username"] != second.result["username"]
            assert first.result["password"] != second.result["password"]
            assert reads(proxy, f"{mount}/creds/app") == 2
            hits = [r["store_reads"]["vault"]["hits"] for r in served.records()]
            assert hits == [0, 0]
        finally:
            served.agent.process.stop()
