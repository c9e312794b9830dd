"""Vault kept warm by the node agent, through the built executable and the
real agent, against the real OpenBao server (tests/support/openbao.py): a fetch
costs one read (no login, no preflight, the connection reused), the
operator's token is reused, renewed, replaced and revoked as docs/agent.md
says, a job's own login (jwt) is never shared, and every message is the one
a fetch in process gives. What the server saw is read from its audit log
and its token accessors."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.agent_process import AgentProcess, moved_aside
from support.backend_contract import CANARY
from support.nomad import Fetched
from support.openbao import PROVIDER, Vault, unique
from support.vault_faults import Fault, FaultProxy

ESTABLISHED = "01"  # the state column of /proc/net/tcp


class Agent:
    """The agent serving the ``openbao`` plugin, and what it answered."""

    def __init__(self, vault: Vault, log: Path) -> None:
        self.vault, self.log = vault, log
        self.sections = f'[agent]\nauto = false\n[plugin]\ndebug_log = "{log}"\n'
        vault.sections = self.sections
        vault.configure()
        self.process = AgentProcess(
            vault.nomad.executable(PROVIDER), "--plugin-dir", str(vault.nomad.plugin_dir / "secrets")
        )
        self.process.wait_for("listening")

    def fetch(self, path: str, env: dict[str, str] | None = None, **kwargs: Any) -> Fetched:
        """A fetch the agent answered (not one in process after it failed)."""
        count = len(self.process.answered())
        fetched = self.vault.fetch(path, env, **kwargs)
        self.wait_answered(count + 1)
        # A forwarded fetch never opens the plugin's debug log: one that does ran in process.
        assert not self.log.exists(), self.log.read_text()
        return fetched

    def seen(self, path: str, env: dict[str, str] | None = None, **kwargs: Any) -> tuple[Fetched, list[str]]:
        mark = self.vault.server.audit_mark()
        fetched = self.fetch(path, env, **kwargs)
        return fetched, self.vault.server.audited(mark)

    def error(self, path: str, env: dict[str, str] | None = None, **kwargs: Any) -> str:
        count = len(self.process.answered())
        message = self.vault.error(path, env, **kwargs)
        self.wait_answered(count + 1)
        return message

    def wait_answered(self, count: int) -> None:
        self.process.wait_answered(count)

    def in_process(
        self, path: str, env: dict[str, str] | None = None, *, vault: dict[str, Any], **kwargs: Any
    ) -> str:
        """The same mistake's message from a fetch in process: ``vault``'s
        keys without [agent]; then the agent's config again."""
        self.vault.sections = ""
        try:
            self.vault.configure(**vault)
            with moved_aside(self.process):
                return self.vault.error(path, env, **kwargs)
        finally:
            self.vault.sections = self.sections
            self.vault.configure(**vault)

    def connections(self, port: int) -> int:
        """TCP connections the agent holds open to ``port``, as the kernel sees them."""
        pid = self.process.proc.pid
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        count = 0
        for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].split(":")[1], 16)
            if remote_port == port and fields[3] == ESTABLISHED and fields[9] in inodes:
                count += 1
        return count


@pytest.fixture
def agent(vault: Vault, tmp_path: Path) -> Iterator[Agent]:
    running = Agent(vault, tmp_path / "debug.log")
    yield running
    assert running.process.stop() == 0
    assert "stopped" in running.process.lines[-1]


def new_secret_id(vault: Vault, role: str = "nomad", **options: Any) -> str:
    answer = vault.server.api("POST", f"auth/approle/role/{role}/secret-id", options)
    return str(answer["data"]["secret_id"])


def approle(vault: Vault, role: str = "nomad", **options: Any) -> None:
    """AppRole auth with ``role`` and a new secret_id for it (``options``: num_uses, ...)."""
    role_id = str(vault.server.api("GET", f"auth/approle/role/{role}/role-id")["data"]["role_id"])
    secret_id = vault.file(f"secret-id-{role}", new_secret_id(vault, role, **options))
    vault.configure(auth_method="approle", role_id=role_id, secret_id_file=secret_id)


def logged_in(vault: Vault, agent: Agent, path: str) -> tuple[str, set[str]]:
    """One fetch through the agent that logs in: the accessor of the token it
    keeps, and the accessors before it."""
    before = vault.server.accessors()
    assert agent.fetch(path).ok
    (accessor,) = vault.server.accessors() - before
    return accessor, before


def put(vault: Vault) -> str:
    name = unique()
    vault.server.put_kv("secret", name, {"password": CANARY})
    return name


# --- what a fetch costs -----------------------------------------------------------------------


def test_fetches_through_the_agent_cost_one_approle_login(vault: Vault, agent: Agent) -> None:
    """A secret_id good for ONE login: six fetches through the agent, one
    login, then one read each (the mount found once)."""
    name = put(vault)
    approle(vault, num_uses=1)
    before = vault.server.accessors()
    fetched, seen = agent.seen(f"vault:secret/{name}")
    assert fetched.result == {"password": CANARY}
    assert seen == [
        "update auth/approle/login",
        f"read sys/internal/ui/mounts/secret/{name}",
        f"read secret/data/{name}",
    ]
    for _ in range(5):
        fetched, seen = agent.seen(f"vault:secret/{name}")
        assert fetched.result == {"password": CANARY}
        assert seen == [f"read secret/data/{name}"]
    assert len(vault.server.accessors() - before) == 1  # the login's token, kept
    assert [line.rsplit("clients=", 1)[1] for line in agent.process.answered()] == ["1"] * 6


def test_cert_login_and_tls_connection_are_reused(vault: Vault, agent: Agent) -> None:
    name = put(vault)
    vault.cert(role="nomad")
    mark = vault.server.audit_mark()
    for _ in range(4):
        assert agent.fetch(f"vault:secret/{name}").result == {"password": CANARY}
    seen = vault.server.audited(mark)
    assert seen.count("update auth/cert/login") == 1
    assert seen.count(f"read secret/data/{name}") == 4
    tls_port = int(vault.server.tls_address.rsplit(":", 1)[1])
    assert agent.connections(tls_port) == 1  # one TLS connection, kept open and reused


def test_many_references_at_once_share_the_login(vault: Vault, agent: Agent) -> None:
    names = [put(vault) for _ in range(5)]
    approle(vault, num_uses=1)
    path = "".join(f"r{i} = vault:secret/{n}\n" for i, n in enumerate(names))
    fetched, seen = agent.seen(path)
    assert fetched.result == {f"r{i}_password": CANARY for i in range(5)}
    assert seen.count("update auth/approle/login") == 1
    assert seen.count(f"read sys/internal/ui/mounts/secret/{names[0]}") <= 1
    fetched, seen = agent.seen(path)
    assert fetched.ok and sorted(seen) == sorted(f"read secret/data/{n}" for n in names)


def test_a_mount_that_was_missing_is_found_once_made(vault: Vault, agent: Agent) -> None:
    """Only a found mount is kept: a fetch that found none leaves nothing
    behind, and the next one finds the mount the operator made meanwhile."""
    server, mount = vault.server, unique("kv")
    vault.configure(token=server.root)
    message = agent.error(f"vault:{mount}/app")
    assert message == agent.in_process(f"vault:{mount}/app", vault={"token": server.root})
    server.mount(mount, "kv", options={"version": "2"})
    server.put_kv(mount, "app", {"k": "v"})
    fetched, seen = agent.seen(f"vault:{mount}/app")
    assert fetched.result == {"k": "v"}
    assert seen == [f"read sys/internal/ui/mounts/{mount}/app", f"read {mount}/data/app"]


def test_a_mount_tuned_to_version_2_is_read_as_such(vault: Vault, agent: Agent) -> None:
    """The agent keeps a preflight's answer for a minute. A KV v1 mount
    tuned to v2 meanwhile (`bao secrets tune -version=2`): Vault's warning
    that a v2 mount was read as v1 makes it ask again and read once more
    (the review of issue #15: "not found ... Invalid path for a versioned
    K/V secrets engine" for up to 60 s)."""
    server, mount = vault.server, unique("kv")
    vault.configure(token=server.root)
    server.mount(mount, "kv", options={"version": "1"})
    server.put_kv(mount, "a", {"k": "1"})
    server.put_kv(mount, "b", {"k": "2"})
    assert agent.fetch(f"vault:{mount}/a").result == {"k": "1"}
    server.api("POST", f"sys/mounts/{mount}/tune", {"options": {"version": "2"}})
    server.until_upgraded(mount, None)
    fetched, seen = agent.seen(f"vault:{mount}/b")
    assert fetched.result == {"k": "2"}, fetched
    assert seen == [f"read {mount}/b", f"read sys/internal/ui/mounts/{mount}/b", f"read {mount}/data/b"]


# --- the operator's token: rotated, revoked, renewed, revoked at stop ---------------------------


def test_a_rotated_token_file_is_read_for_the_next_fetch(vault: Vault, agent: Agent) -> None:
    name, server = put(vault), vault.server
    first = server.token("plugin")
    vault.configure(token=first)
    assert agent.fetch(f"vault:secret/{name}").result == {"password": CANARY}
    second = server.token("plugin")
    server.api("POST", "auth/token/revoke", {"token": first})
    vault.file("token", second)  # rotated in place, as an operator's script may
    fetched, seen = agent.seen(f"vault:secret/{name}")
    assert fetched.result == {"password": CANARY}
    assert seen == [f"read secret/data/{name}"]  # the new token at once: no 403 first
    server.api("POST", "auth/token/revoke", {"token": second})
    assert agent.error(f"vault:secret/{name}") == (
        f"'vault:secret/{name}' (Vault): Vault does not accept the plugin's token"
        " (invalid, expired or revoked); the operator renews the token in vault.token_file"
    )


def test_a_revoked_login_token_is_replaced_by_a_new_login(vault: Vault, agent: Agent) -> None:
    name, server = put(vault), vault.server
    approle(vault)
    accessor, before = logged_in(vault, agent, f"vault:secret/{name}")
    server.api("POST", "auth/token/revoke-accessor", {"accessor": accessor})
    fetched, seen = agent.seen(f"vault:secret/{name}")
    assert fetched.result == {"password": CANARY}
    assert seen == [
        f"read secret/data/{name}",  # 403: the token is gone
        "read sys/internal/ui/mounts",  # is it dead? yes
        "update auth/approle/login",
        f"read secret/data/{name}",
    ]
    (replacement,) = server.accessors() - before
    assert replacement != accessor
    fetched, seen = agent.seen(f"vault:secret/{name}")
    assert fetched.ok and seen == [f"read secret/data/{name}"]


def test_a_login_failure_does_not_stick(vault: Vault, agent: Agent) -> None:
    """A wrong secret_id fails the fetch with the login's message; the
    operator puts the right one in the same file and the next fetch works."""
    name = put(vault)
    approle(vault)
    secret_id_file = Path(vault.tmp / "secret-id-nomad")
    secret_id_file.write_text(CANARY)
    message = agent.error(f"vault:secret/{name}")
    assert "login with the approle auth method at auth/approle/ failed" in message
    secret_id_file.write_text(new_secret_id(vault))
    fetched, seen = agent.seen(f"vault:secret/{name}")
    assert fetched.result == {"password": CANARY}
    assert seen[0] == "update auth/approle/login"


SHORT_TTL = 4  # seconds: the shortest lease whose renewal still gains more than a third of it


def short_lease(vault: Vault, agent: Agent, path: str, role: str, max_ttl: str) -> tuple[str, set[str]]:
    """AppRole ``role`` gives SHORT_TTL leases (at most ``max_ttl``): a
    fetch logs in, then all but 1.8 s of the lease pass (under the 2 s
    margin a token needs, auth.EXPIRY_MARGIN, so the next fetch renews; a
    renewal then gains the 2.2 s that passed, over a third of the lease)."""
    role_options = {"token_policies": ["plugin"], "token_ttl": f"{SHORT_TTL}s", "token_max_ttl": max_ttl}
    vault.server.api("POST", f"auth/approle/role/{role}", role_options)
    approle(vault, role=role)
    accessor, before = logged_in(vault, agent, path)
    time.sleep(SHORT_TTL - 1.8)
    return accessor, before


@pytest.mark.long
def test_renewal_near_the_end_of_the_lease(vault: Vault, agent: Agent) -> None:
    """Near the end of its lease the next fetch renews the token (the same
    token); where the role's max TTL allows no more, it logs in again."""
    server, name = vault.server, put(vault)
    path = f"vault:secret/{name}"
    accessor, before = short_lease(vault, agent, path, "short", max_ttl="1m")
    fetched, seen = agent.seen(path)
    assert fetched.ok and seen == ["update auth/token/renew-self", f"read secret/data/{name}"]
    assert server.accessors() - before == {accessor}
    ttl = server.api("POST", "auth/token/lookup-accessor", {"accessor": accessor})["data"]["ttl"]
    assert ttl >= 2  # renewed: more than the 1.8 s that were left

    capped, before = short_lease(vault, agent, path, "capped", max_ttl=f"{SHORT_TTL}s")
    fetched, seen = agent.seen(path)
    assert fetched.ok
    assert seen == ["update auth/token/renew-self", "update auth/approle/login", f"read secret/data/{name}"]
    assert len(server.accessors() - before - {capped}) == 1  # a new token; the old one runs out


def test_the_agents_stop_revokes_its_login(vault: Vault, agent: Agent) -> None:
    name, server = put(vault), vault.server
    approle(vault)
    accessor, _ = logged_in(vault, agent, f"vault:secret/{name}")
    mark = server.audit_mark()
    assert agent.process.stop() == 0
    assert server.audited(mark) == ["update auth/token/revoke-self"]
    assert accessor not in server.accessors()


def test_settings_evicted_from_the_pool_have_their_token_revoked(vault: Vault, agent: Agent) -> None:
    """The agent keeps 8 warm Vaults (pool.MAX_VAULTS): a ninth set of
    [vault] settings evicts the least recently used, whose token is revoked
    then; the stop revokes the other eight."""
    name, server = put(vault), vault.server
    secret_id, accessors = vault.file("secret-id", vault.bao.secret_id()), []
    for i in range(9):  # nine sets of settings, alike but for an unused KV mount
        mounts = {"secret": 2, f"other{i}": 1}
        vault.configure(
            auth_method="approle", role_id=vault.bao.role_id, secret_id_file=secret_id, kv_mounts=mounts
        )
        accessors.append(logged_in(vault, agent, f"vault:secret/{name}")[0])
    assert accessors[0] not in server.accessors()
    assert set(accessors[1:]) <= server.accessors()
    assert agent.process.answered()[-1].endswith("clients=8")
    assert agent.process.stop() == 0
    assert not set(accessors) & server.accessors()


def test_each_providers_vault_settings_get_their_own_token(vault: Vault, agent: Agent) -> None:
    """Two providers on one cluster, each with its own token file: through
    the agent, "narrow" reads with its own token, never with openbao's."""
    server, name = vault.server, put(vault)
    server.policy("narrow", 'path "secret/data/narrow/*" { capabilities = ["read"] }')
    narrow = vault.file("narrow-token", server.token("narrow"))
    (vault.nomad.plugin_dir / "secrets" / "narrow").symlink_to(vault.nomad.executable(PROVIDER).resolve())
    vault.configure(f'[providers.narrow]\nstore = "vault"\ntoken_file = "{narrow}"\n')
    for _ in range(2):  # the second round with warm backends
        assert agent.fetch(f"vault:secret/{name}").result == {"password": CANARY}
        count = len(agent.process.answered())
        denied = vault.nomad.fetch("narrow", f"vault:secret/{name}").plugin_error
        agent.wait_answered(count + 1)
        assert denied == (
            f"'vault:secret/{name}' (Vault): permission denied;"
            f" the Vault policy of this token needs read on 'secret/data/{name}'"
        )
    assert agent.process.answered()[-1].endswith("clients=2")


# --- a job's own identity -------------------------------------------------------------------------


def test_a_jwt_login_is_never_shared_between_jobs(vault: Vault, agent: Agent) -> None:
    """Each job's templated policy reads its own path only, so a token of
    web's used for api would be denied; each fetch logs in and revokes."""
    server, web, api = vault.server, unique("web"), unique("api")
    for job in (web, api):
        server.put_kv("secret", f"nomad/default/{job}/db", {"password": f"{job}-pw"})
    vault.configure(auth_method="jwt", auth_mount="jwt-nomad", role="nomad-workloads")
    before, mark = server.accessors(), server.audit_mark()
    for job in (web, api, web):
        jwt = vault.bao.issuer.sign(nomad_namespace="default", nomad_job_id=job, sub=f"default:{job}")
        fetched = agent.fetch(
            f"vault:secret/nomad/default/{job}/db", {"NOMAD_WORKLOAD_TOKEN": jwt}, job_id=job
        )
        assert fetched.result == {"password": f"{job}-pw"}
    seen = server.audited(mark)
    assert seen.count("update auth/jwt-nomad/login") == 3
    assert seen.count("update auth/token/revoke-self") == 3
    assert server.accessors() - before == set()  # every login's token revoked
    assert [line.rsplit("clients=", 1)[1] for line in agent.process.answered()] == ["0"] * 3


# --- time ----------------------------------------------------------------------------------------


def test_a_stuck_login_holds_no_fetch_past_its_own_deadline(vault: Vault, agent: Agent) -> None:
    """The login hangs (a fault proxy, a test double: a real server cannot
    be made to): the fetch that logs in and the one waiting behind it each
    end with the timeout message at their own deadline, well before Nomad's
    kill; once the login answers again, the next fetch logs in."""
    name = put(vault)
    agent.sections = agent.sections.replace("[plugin]\n", "[plugin]\ndeadline_seconds = 4\n")
    vault.sections = agent.sections
    with FaultProxy(vault.server.address, Fault("auth/approle/login", hang=True)) as proxy:
        role_id = vault.bao.role_id
        secret_id = vault.file("secret-id-stuck", new_secret_id(vault))
        vault.configure(address=proxy.url, auth_method="approle", role_id=role_id, secret_id_file=secret_id)
        first: dict[str, Fetched] = {}
        logging_in = threading.Thread(target=lambda: first.update(f=vault.fetch(f"vault:secret/{name}")))
        logging_in.start()
        while not proxy.seen:
            time.sleep(0.01)
        behind = vault.fetch(f"vault:secret/{name}")
        logging_in.join()
        for fetched in (first["f"], behind):
            assert not fetched.run.terminated and fetched.run.returncode == 0
            # As in process: plugin.deadline_seconds, not the agent's share of it.
            assert "within the plugin's 4 s deadline; check that " in str(fetched.plugin_error), fetched
        agent.wait_answered(2)
        proxy.faults.clear()
        mark = len(proxy.seen)
        assert agent.fetch(f"vault:secret/{name}").result == {"password": CANARY}
        assert proxy.paths()[mark:] == [
            "POST auth/approle/login",
            f"GET sys/internal/ui/mounts/secret/{name}",
            f"GET secret/data/{name}",
        ]


# --- the same messages ----------------------------------------------------------------------------


MISTAKES: list[tuple[str, dict[str, Any], dict[str, str]]] = [
    ("vault:secret/missing-x", {}, {}),
    ("vault:secret/denied/x", {}, {}),
    ("vault:kv1/x?version=1", {}, {}),
    ("vault:auth/token/lookup-self", {}, {}),
    ("vault:nomount/x", {}, {}),
    ("vault:secret/x", {"auth_method": "approle", "role_id": "r"}, {}),
    ("vault:secret/x", {"auth_method": "cert"}, {}),
    ("vault:secret/x", {"auth_method": "jwt", "auth_mount": "jwt-nomad"}, {}),
    ("vault:secret/x", {"auth_method": "jwt", "auth_mount": "jwt-nomad"}, {"NOMAD_WORKLOAD_TOKEN": "x"}),
    ("vault:secret/x", {"kv_mounts": {"secret": 1}}, {}),
]


@pytest.mark.parametrize(("path", "keys", "env"), MISTAKES)
def test_every_message_is_the_one_a_fetch_in_process_gives(
    vault: Vault, agent: Agent, path: str, keys: dict[str, Any], env: dict[str, str]
) -> None:
    vault.configure(**keys)
    through_agent = agent.error(path, env)
    assert through_agent == agent.in_process(path, env, vault=keys)


def test_login_and_token_mistakes_give_the_same_messages(vault: Vault, agent: Agent) -> None:
    """Mistakes that need a file or a server call: a wrong secret_id, a
    wrong auth mount, a dead token, a token file that holds no token, TLS
    without the CA, a cert role that does not exist. (A config the plugin
    itself refuses, such as a missing token_file, never reaches the agent.)"""
    server = vault.server
    dead = server.token("plugin")
    server.api("POST", "auth/token/revoke", {"token": dead})
    cases: list[dict[str, Any]] = [
        {"auth_method": "approle", "role_id": vault.bao.role_id, "secret_id_file": vault.file("bad", CANARY)},
        {
            "auth_method": "approle",
            "auth_mount": "nowhere",
            "role_id": vault.bao.role_id,
            "secret_id_file": vault.file("sid", vault.bao.secret_id()),
        },
        {"token_file": vault.file("dead", dead)},
        {"token_file": vault.file("two-lines", f"{CANARY}\n{CANARY}")},
        {"address": server.tls_address},
        {"auth_method": "cert", "address": server.tls_address, "ca_cert": server.pki.server_ca,
         "client_cert": server.pki.client_cert, "client_key": server.pki.client_key, "role": "nobody"},
    ]  # fmt: skip
    for keys in cases:
        vault.configure(**keys)
        through_agent = agent.error("vault:secret/x")
        assert through_agent == agent.in_process("vault:secret/x", vault=keys), keys
