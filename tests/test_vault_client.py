"""The Vault client (nomad_secrets/stores/vault/client.py) called directly,
against the real OpenBao server's answers (tests/support/openbao.py): what
each status means, the deadline, TLS verification, and that no message
carries the token. The end-to-end tests through the executable are
tests/test_stores_vault.py; the fault proxy (tests/support/vault_faults.py,
a double) stands in only for what the real server cannot be made to do: a
hang, a 5xx other than sealing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.netutil import dead_port_url
from support.openbao import OpenBao, Session, start, unique
from support.pki import make_pki
from support.vault_faults import Fault, FaultProxy

from nomad_secrets.core.config import VaultSettings
from nomad_secrets.core.reference import Reference, parse_reference
from nomad_secrets.process.deadline import Deadline
from nomad_secrets.process.errors import PluginError, StoreError, Throttled, TimedOut, Unreachable
from nomad_secrets.stores.vault.client import THROTTLE_RETRIES, Client

REF: Reference = parse_reference("vault:secret/app")


def client(address: str, seconds: float = 10.0, ca_cert: str | None = None) -> Client:
    return Client(VaultSettings(address=address, ca_cert=ca_cert), Deadline(seconds))


def refused(token: str, error: PluginError) -> str:
    """The message of a refused call, which must not carry the token sent."""
    message = str(error)
    assert token not in message, message
    return message


@pytest.fixture
def kv(bao: Session) -> Iterator[str]:
    """A KV v2 mount of this test's own (a rate limit quota on it touches no
    other test), holding ``app`` = {"k": "v"}."""
    mount = unique("kv")
    bao.server.mount(mount, "kv", options={"version": "2"})
    bao.server.put_kv(mount, "app", {"k": "v"})
    yield mount
    bao.server.api("DELETE", f"sys/mounts/{mount}")


def test_200_is_the_answer_and_204_has_no_body(bao: Session, kv: str) -> None:
    server = bao.server
    status, body = client(server.address).call(REF, "GET", f"{kv}/data/app", token=server.root)
    assert status == 200 and body is not None and body["data"]["data"] == {"k": "v"}
    vault, throwaway = client(server.address), server.token()
    assert vault.call(REF, "GET", "auth/token/lookup-self", token=throwaway)[0] == 200
    assert vault.call(REF, "POST", "auth/token/revoke-self", token=throwaway) == (204, None)
    assert vault.call(REF, "GET", "auth/token/lookup-self", token=throwaway)[0] == 403  # revoked


def test_403_and_404_are_the_callers_to_read(bao: Session, kv: str) -> None:
    """Statuses a read can mean several things by come back as they are;
    the message the caller makes of one quotes Vault, never the token."""
    server = bao.server
    vault = client(server.address)
    status, body = vault.call(REF, "GET", f"{kv}/data/missing", token=server.root)
    assert status == 404 and body == {"errors": []}
    for token in (server.token("default"), "s.unknown-token"):
        vault.credentials.append(token)
        answer = vault.call(REF, "GET", f"{kv}/data/app", token=token)
        assert answer[0] == 403, answer
        message = str(vault.unexpected(REF, answer))
        assert message == (
            "'vault:secret/app' (Vault): unexpected answer from Vault (HTTP 403)"
            " (Vault said: permission denied); see Vault's log"
        )
        assert token not in message


def test_a_2xx_that_is_not_json_is_named_by_its_type(bao: Session) -> None:
    """pki/ca_chain answers PEM: the path serves a file, not fields."""
    server = bao.server
    with pytest.raises(StoreError) as call:
        client(server.address).call(REF, "GET", "pki/ca_chain", token=server.root)
    message = refused(server.root, call.value)
    assert "Vault answered pki/ca_chain with application/pkix-cert, not JSON" in message


@contextlib.contextmanager
def spent_quota(server: OpenBao, mount: str, interval: str) -> Iterator[FaultProxy]:
    """A rate limit quota of one request per ``interval`` on ``mount``, that
    one request made, and the recording proxy (no faults) to reach it by."""
    server.api("POST", "sys/quotas/config", {"enable_rate_limit_response_headers": True})
    quota = f"sys/quotas/rate-limit/{mount}"
    server.api("POST", quota, {"path": f"{mount}/", "rate": 1, "interval": interval})
    try:
        with FaultProxy(server.address) as proxy:
            server.api("GET", f"{mount}/data/app")
            yield proxy
    finally:
        server.api("DELETE", quota)


def test_a_429_is_tried_again_once_the_quota_allows(bao: Session, kv: str) -> None:
    """The server's own rate limit quota: the first answer is 429; a try
    after the pause (Retry-After, with a floor: OpenBao may say 0 while the
    quota is still spent) gets the secret, as the recording proxy sees."""
    server = bao.server
    with spent_quota(server, kv, "1s") as proxy:
        status, body = client(proxy.url).call(REF, "GET", f"{kv}/data/app", token=server.root)
    assert status == 200 and body is not None and body["data"]["data"] == {"k": "v"}
    statuses = [seen.status for seen in proxy.seen]
    assert statuses[0] == 429 and statuses[-1] == 200 and len(statuses) <= 1 + THROTTLE_RETRIES, statuses


def test_a_429_beyond_the_deadline_is_named_at_once(bao: Session, kv: str) -> None:
    """Retry-After longer than the deadline leaves: no pause, no second try."""
    server = bao.server
    with spent_quota(server, kv, "60s") as proxy, pytest.raises(Throttled) as call:
        client(proxy.url).call(REF, "GET", f"{kv}/data/app", token=server.root)
    assert [seen.status for seen in proxy.seen] == [429]
    message = refused(server.root, call.value)
    assert message.startswith("'vault:secret/app' (Vault): Vault rate-limited the request (Vault said: ")
    assert "rate limit quota exceeded" in message
    assert message.endswith("; retry later; the operator can raise Vault's rate limit quota")


def test_a_sealed_server_is_503(bao_binary: str, tmp_path: Path) -> None:
    """On a server of its own: sealing the session's would stop every other test."""
    server = start(bao_binary, tmp_path)
    try:
        server.cli("operator", "seal")
        with pytest.raises(StoreError) as call:
            client(server.address).call(REF, "GET", "secret/data/app", token=server.root)
    finally:
        server.stop()
    message = refused(server.root, call.value)
    assert "Vault is sealed or unavailable (Vault said: Vault is sealed)" in message
    assert "check the Vault cluster's status (vault status)" in message


@pytest.mark.parametrize("status", [500, 502])
def test_another_5xx_is_a_store_error(bao: Session, status: int) -> None:
    """A crashed storage backend, a load balancer's page: only the double answers so."""
    server = bao.server
    fault = Fault(
        "secret/data/", status=status, body=b"<html>down</html>", headers={"Content-Type": "text/html"}
    )
    with FaultProxy(server.address, fault) as proxy, pytest.raises(StoreError) as call:
        client(proxy.url).call(REF, "GET", "secret/data/app", token=server.root)
    assert type(call.value) is StoreError and call.value.kind == "store-error"
    assert refused(server.root, call.value) == (
        f"'vault:secret/app' (Vault): Vault failed with HTTP {status}; see Vault's server log"
    )


def test_a_hang_ends_at_the_deadline(bao: Session) -> None:
    server = bao.server
    with FaultProxy(server.address, Fault("secret/data/", hang=True)) as proxy:
        with pytest.raises(TimedOut) as call:
            client(proxy.url, seconds=1.0).call(REF, "GET", "secret/data/app", token=server.root)
        assert proxy.paths() == ["GET secret/data/app"]
    assert refused(server.root, call.value) == (
        "'vault:secret/app' (Vault): no answer within the plugin's 1 s deadline; check that"
        " vault.address is reachable from the node; the operator sets plugin.deadline_seconds"
    )


def test_a_spent_deadline_sends_nothing(bao: Session) -> None:
    with FaultProxy(bao.server.address) as proxy:
        with pytest.raises(TimedOut):
            client(proxy.url, seconds=0.0).call(REF, "GET", "secret/data/app", token=bao.server.root)
        assert proxy.seen == []


def test_nothing_listening_is_unreachable(bao: Session) -> None:
    address = dead_port_url()
    with pytest.raises(Unreachable) as call:
        client(address).call(REF, "GET", "secret/data/app", token=bao.server.root)
    assert f"cannot connect to Vault at {address}" in refused(bao.server.root, call.value)


def test_tls_trusts_the_configured_ca_only(bao: Session, kv: str, tmp_path: Path) -> None:
    """The TLS listener's CA gets the answer; another CA, or the system's
    trust store, is refused before a byte of the request is sent."""
    server = bao.server
    ca = str(server.pki.server_ca)
    status, body = client(server.tls_address, ca_cert=ca).call(
        REF, "GET", f"{kv}/data/app", token=server.root
    )
    assert status == 200 and body is not None and body["data"]["data"] == {"k": "v"}
    other = str(make_pki(tmp_path).server_ca)  # a CA the listener's certificate is not from
    for vault in (client(server.tls_address, ca_cert=other), client(server.tls_address)):
        with pytest.raises(Unreachable) as call:
            vault.call(REF, "GET", f"{kv}/data/app", token=server.root)
        message = refused(server.root, call.value)
        assert f"TLS with Vault at {server.tls_address} failed (certificate verify failed: " in message
        assert "check vault.ca_cert (the CA of Vault's certificate)" in message


def test_plain_http_to_the_tls_listener_is_named(bao: Session) -> None:
    """Go's net/http answers plain HTTP on a TLS port with a 400 of its own."""
    server = bao.server
    plain = server.tls_address.replace("https://", "http://")
    with pytest.raises(Unreachable) as call:
        client(plain).call(REF, "GET", "secret/data/app", token=server.root)
    message = refused(server.root, call.value)
    assert f"Vault at {plain} answered plain HTTP with HTTP 400" in message
    assert "this address speaks TLS: use https:// in vault.address" in message
