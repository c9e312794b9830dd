"""What no real server can be made to answer on demand, through the built
executable: the fault proxy (tests/support/vault_faults.py, a test double) in front
of the real OpenBao server, answering one path with a fault and passing the
rest through."""

from __future__ import annotations

import itertools
import json
import threading
import time

import hvac
import pytest
from support.nomad import Fetched
from support.openbao import Vault, unique
from support.vault_faults import Fault, FaultProxy


def answer(status: int, body: object, **headers: str) -> Fault:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Fault("secret/data/", status, raw, {"Content-Type": "application/json", **headers})


def test_the_proxy_passes_the_real_server_through(vault: Vault) -> None:
    """The double adds nothing: hvac reads the same through it as directly,
    and the plugin sends Vault's request headers."""
    name = unique()
    vault.server.put_kv("secret", name, {"k": "v"})
    with FaultProxy(vault.server.address) as proxy:
        via = hvac.Client(url=proxy.url, token=vault.bao.plugin_token)
        direct = hvac.Client(url=vault.server.address, token=vault.bao.plugin_token)
        assert (
            via.secrets.kv.v2.read_secret_version(path=name, raise_on_deleted_version=True)["data"]["data"]
            == direct.secrets.kv.v2.read_secret_version(path=name, raise_on_deleted_version=True)["data"][
                "data"
            ]
        )
        proxy.seen.clear()
        vault.configure(address=proxy.url)
        assert vault.fetch(f"vault:secret/{name}").result == {"k": "v"}
    assert proxy.paths() == [f"GET sys/internal/ui/mounts/secret/{name}", f"GET secret/data/{name}"]
    for seen in proxy.seen:
        assert seen.headers["x-vault-request"] == "true"
        assert seen.headers["x-vault-token"] == vault.bao.plugin_token
        assert seen.headers["user-agent"].startswith("nomad-secrets/")
        assert seen.headers.get("x-vault-namespace", "") == ""


@pytest.mark.parametrize(
    ("fault", "text"),
    [
        (
            answer(200, b"<html>not vault</html>", **{"Content-Type": "text/html"}),
            "not in the expected shape",
        ),
        (answer(200, {"data": None}), "Vault answered with no data"),
        (answer(200, {"data": {"data": "text"}}), "not in the expected shape"),
        (answer(500, {"errors": ["x" * 500]}), "Vault failed with HTTP 500 (Vault said: xxx"),
        (answer(502, b"bad gateway"), "Vault failed with HTTP 502; see Vault's server log"),
        (
            answer(503, {"errors": ["upstream down"]}),
            "Vault is sealed or unavailable (Vault said: upstream down)",
        ),
        (answer(307, b"", Location="http://other/"), "redirect (HTTP 307)"),
        (answer(418, {"errors": ["teapot"]}), "unexpected answer from Vault (HTTP 418)"),
        (answer(200, b"{" + b" " * (5 * 1024 * 1024) + b"}"), "larger than 4194304 bytes"),
    ],
)
def test_answers_no_server_gives(vault: Vault, fault: Fault, text: str) -> None:
    with FaultProxy(vault.server.address, fault) as proxy:
        vault.configure(address=proxy.url)
        message = vault.error("vault:secret/app")
    assert text in message
    assert len(message) < 500  # Vault's text is cut to 200 characters


def test_a_hanging_read_ends_at_the_deadline(vault: Vault) -> None:
    with FaultProxy(vault.server.address, Fault("secret/data/", hang=True)) as proxy:
        vault.configure("[plugin]\ndeadline_seconds = 1.5\n", address=proxy.url)
        fetched = vault.fetch("vault:secret/app", timeout=6)
    assert not fetched.run.terminated
    assert "no answer within the plugin's 1.5 s deadline" in str(fetched.plugin_error)
    assert proxy.paths() == ["GET sys/internal/ui/mounts/secret/app", "GET secret/data/app"]


def test_a_hanging_revoke_does_not_hold_the_answer(vault: Vault) -> None:
    """The secret is read; revoking the login's token is best effort."""
    name = unique()
    vault.server.put_kv("secret", name, {"k": "v"})
    with FaultProxy(vault.server.address, Fault("auth/token/revoke-self", hang=True)) as proxy:
        vault.approle(address=proxy.url)
        fetched = vault.fetch(f"vault:secret/{name}")
    assert fetched.result == {"k": "v"} and not fetched.run.terminated
    assert proxy.paths()[-1] == "POST auth/token/revoke-self"


def test_credentials_quoted_back_are_blanked(vault: Vault) -> None:
    secret_id = vault.bao.secret_id()
    echo = Fault(
        "auth/approle/login",
        400,
        json.dumps({"errors": [f"bad {secret_id} for {vault.bao.role_id}"]}).encode(),
    )
    with FaultProxy(vault.server.address, echo) as proxy:
        vault.configure(
            address=proxy.url,
            auth_method="approle",
            role_id=vault.bao.role_id,
            secret_id_file=vault.file("sid", secret_id),
        )
        message = vault.error("vault:secret/app")
    assert "(Vault said: bad <redacted> for <redacted>)" in message
    assert secret_id not in message and vault.bao.role_id not in message


# --- a KV mount's upgrade to version 2 ------------------------------------------------------

UPGRADING = {
    "errors": [
        "Upgrading from non-versioned to versioned data. This backend will be unavailable for a brief"
        " period and will resume service shortly."
    ]
}


def data_reads(proxy: FaultProxy) -> list[int]:
    return [seen.status for seen in proxy.seen if "/data/" in seen.path]


def test_a_kv_mount_tuned_to_version_2_is_read_once_its_upgrade_ends(vault: Vault) -> None:
    """`bao secrets tune -version=2` on a KV v1 mount of 2,000 keys: the real
    server answers HTTP 400 "Upgrading from non-versioned to versioned
    data" for about 0.2 s while it moves them. The proxy holds the fetch's
    first request until the tune is done, so its read meets that window:
    the fetch waits it out and reads the value (before: "Vault refused the
    read ...; check the reference")."""
    server, mount = vault.server, unique("tuned")
    server.mount(mount, "kv", options={"version": "1"})
    for i in range(2000):
        server.api("POST", f"{mount}/k{i}", {"v": str(i)})
    tuned = threading.Event()
    with FaultProxy(server.address, Fault(f"sys/internal/ui/mounts/{mount}/", hold=tuned)) as proxy:
        vault.configure(address=proxy.url, token=server.root)
        fetching = Fetching(vault, f"vault:{mount}/k7")
        until = time.monotonic() + 30
        while not proxy.seen and time.monotonic() < until:  # the preflight, held
            time.sleep(0.01)
        server.api("POST", f"sys/mounts/{mount}/tune", {"options": {"version": "2"}})
        tuned.set()
        fetched = fetching.result()
    assert fetched.result == {"v": "7"}, fetched
    statuses = data_reads(proxy)
    assert statuses[0] == 400 and statuses[-1] == 200, statuses


@pytest.mark.serial
def test_an_upgrade_longer_than_the_deadline_is_named(vault: Vault) -> None:
    """Still upgrading when the deadline comes (a mount of many keys): the
    answer says so and when to try again, before the deadline; the pause
    between tries grows (0.1, 0.2, 0.4 s). Another 400 is not tried again,
    nor one whose error only quotes Vault's text."""
    upgrading = Fault("secret/data/", 400, json.dumps(UPGRADING).encode())
    with FaultProxy(vault.server.address, upgrading) as proxy:
        vault.configure("[plugin]\ndeadline_seconds = 2\n", address=proxy.url)
        started = time.monotonic()
        fetched = vault.fetch("vault:secret/app", timeout=6)
    message = str(fetched.plugin_error)
    assert not fetched.run.terminated and fetched.result == {}, fetched
    assert "the KV mount of secret/data/app is being upgraded to version 2" in message, message
    assert "start the task again in a moment" in message, message
    reads = [seen for seen in proxy.seen if "/data/" in seen.path]
    assert {seen.status for seen in reads} == {400} and len(reads) >= 4, reads
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(reads)]
    # Each pause is whole but the last, which is cut to what the deadline
    # leaves (the operator review: it gave up 0.6 s early, the doubled pause
    # no longer fitting): the last read comes late in the deadline.
    full = list(zip(gaps[:-1], (0.1, 0.2, 0.4), strict=False))
    assert all(gap >= least for gap, least in full), gaps
    assert reads[-1].at - started > 1.25, [seen.at - started for seen in reads]
    quoted = f"no handler for route '{UPGRADING['errors'][0]}'"  # a path the job wrote, quoted back
    for other in ("bad request", quoted):
        with FaultProxy(vault.server.address, answer(400, {"errors": [other]})) as proxy:
            vault.configure(address=proxy.url)
            assert "Vault refused the read (Vault said: " in vault.error("vault:secret/app")
        assert data_reads(proxy) == [400], other


@pytest.mark.serial
def test_references_to_a_mount_in_its_window_poll_it_once(vault: Vault) -> None:
    """Twenty references to one mount that stays in its upgrade window: one
    read polls it, the others wait for that one and read once more when it
    ends, at most two reads each (the hostile review: 64 references, each
    polling on its own, sent 577 requests in a 5.5 s window)."""
    paths = "\n".join(f"k{i} = vault:secret/app{i}" for i in range(20))
    upgrading = Fault("secret/data/", 400, json.dumps(UPGRADING).encode())
    with FaultProxy(vault.server.address, upgrading) as proxy:
        vault.configure("[plugin]\ndeadline_seconds = 2\n", address=proxy.url)
        fetched = vault.fetch(paths, timeout=6)
    assert "is being upgraded to version 2" in str(fetched.plugin_error), fetched
    reads = [seen.path.split("/")[-1] for seen in proxy.seen if "/data/" in seen.path]
    polled = max(reads.count(f"app{i}") for i in range(20))
    assert sorted(set(reads)) == sorted(f"app{i}" for i in range(20)) and 4 <= polled <= 6, reads
    assert len(reads) <= 2 * 20 + polled, reads


def test_a_short_upgrade_window_is_waited_out(vault: Vault) -> None:
    name = unique()
    vault.server.put_kv("secret", name, {"k": "v"})
    upgrading = Fault("secret/data/", 400, json.dumps(UPGRADING).encode(), times=3)
    with FaultProxy(vault.server.address, upgrading) as proxy:
        vault.configure(address=proxy.url)
        fetched = vault.fetch(f"vault:secret/{name}")
    assert fetched.result == {"k": "v"}, fetched
    assert data_reads(proxy) == [400, 400, 400, 200]


class Fetching:
    """A fetch run in a thread, for a test that changes the server meanwhile."""

    def __init__(self, vault: Vault, path: str) -> None:
        self._fetched: list[Fetched] = []
        self._thread = threading.Thread(target=lambda: self._fetched.append(vault.fetch(path)))
        self._thread.start()

    def result(self) -> Fetched:
        self._thread.join(30)
        assert self._fetched, "the fetch did not end"
        return self._fetched[0]
