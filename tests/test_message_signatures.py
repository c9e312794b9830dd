"""The RFC 9421 verifier of Woodpecker's requests, on its own: what it
accepts is exactly what Woodpecker sends (signed here by tests/support/woodpecker.py,
not by the server's code), and each way a signature can be off is refused
with its reason. test_woodpecker.py drives the same over HTTP."""

from __future__ import annotations

import base64
import hashlib
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from support.woodpecker import LABEL, PyWoodpecker

from nomad_secrets.process.deadline import Deadline
from nomad_secrets.serve.exchange import Incoming
from nomad_secrets.serve.message_signatures import BadSignature, Stale, verify

TARGET = "/woodpecker/secrets"
BODY = {"repo": {"full_name": "acme/web"}, "pipeline": {"event": "push", "branch": "main"}}
SIGNER = PyWoodpecker(bytes(range(32)))


def public_key() -> Ed25519PublicKey:
    """The key as the server reads it: from the PEM Woodpecker serves."""
    key = load_pem_public_key(SIGNER.public_pem())
    assert isinstance(key, Ed25519PublicKey)
    return key


KEY = public_key()


def incoming(headers: dict[str, str], body: bytes, target: str = TARGET) -> Incoming:
    return Incoming(
        method="POST",
        target=target,
        headers=tuple((k.lower(), v) for k, v in headers.items()),
        body=body,
        deadline=Deadline(10),
    )


def signed(target: str = TARGET, created_offset: int = 0) -> tuple[dict[str, str], bytes]:
    body, headers = SIGNER.signed(target, BODY, created_offset)
    return headers, body


def flip_first(signature: str) -> str:
    """The signature with its first base64 character changed."""
    at = signature.index(":") + 1
    return signature[:at] + ("B" if signature[at] == "A" else "A") + signature[at + 1 :]


def test_what_woodpecker_sends_verifies() -> None:
    before = int(time.time())
    headers, body = signed()
    got = verify(KEY, incoming(headers, body), time.time(), 300)
    assert len(got.signature) == 64 and before <= got.created <= time.time()  # the time it was signed


def test_the_request_target_is_signed_with_its_query() -> None:
    headers, body = signed(TARGET + "?org=acme")
    verify(KEY, incoming(headers, body, TARGET + "?org=acme"), time.time(), 300)
    with pytest.raises(BadSignature, match="does not verify"):
        verify(KEY, incoming(headers, body, TARGET), time.time(), 300)  # sent elsewhere
    with pytest.raises(BadSignature, match="does not verify"):
        verify(KEY, incoming(headers, body, "/config?org=acme"), time.time(), 300)


@pytest.mark.parametrize(
    ("header", "change", "reason"),
    [
        ("Signature-Input", lambda v: v.replace(LABEL, "other-label"), "labelled woodpecker-ci-extensions"),
        ("Signature-Input", lambda v: v.replace(' "content-digest"', ""), "cover exactly"),
        ("Signature-Input", lambda v: v.replace('"content-digest"', '"content-type"'), "cover exactly"),
        ("Signature-Input", lambda v: v.replace('alg="ed25519"', 'alg="rsa-pss-sha512"'), "must be ed25519"),
        ("Signature-Input", lambda v: v.replace(";alg=", ";colour=1;alg="), "'colour' is unknown"),
        ("Signature-Input", lambda v: v.split(";created=")[0] + ';alg="ed25519"', "no created time"),
        ("Signature-Input", lambda v: v + ', proxy=("@method");created=1', "one signature"),
        ("Signature", lambda v: v + ", proxy=:AAAA:", "one signature"),
        ("Signature", lambda v: v.replace(":", "", 1), "one signature"),
        ("Signature", lambda v: flip_first(v), "does not verify"),
    ],
)
def test_each_way_off_is_refused_with_its_reason(header: str, change: object, reason: str) -> None:
    headers, body = signed()
    assert callable(change)
    headers[header] = change(headers[header])
    with pytest.raises(BadSignature, match=reason):
        verify(KEY, incoming(headers, body), time.time(), 300)


def test_the_content_digest_must_be_the_bodys() -> None:
    headers, body = signed()
    with pytest.raises(BadSignature, match="Content-Digest is not the body's"):
        verify(KEY, incoming(headers, body.replace(b"main", b"mainx")), time.time(), 300)
    # A digest sent but not signed (another one, after the signed one) breaks the signature.
    sha512 = "sha-512=:" + base64.b64encode(hashlib.sha512(body).digest()).decode() + ":"
    headers["Content-Digest"] += ", " + sha512
    with pytest.raises(BadSignature, match="does not verify"):
        verify(KEY, incoming(headers, body), time.time(), 300)


def test_created_must_be_within_the_window_either_way() -> None:
    for offset in (-301, 301):
        headers, body = signed(created_offset=offset)
        with pytest.raises(Stale, match=r"beyond server\.clock_skew_seconds"):
            verify(KEY, incoming(headers, body), time.time(), 300)
    headers, body = signed(created_offset=-290)
    verify(KEY, incoming(headers, body), time.time(), 300)


def test_headers_sent_twice_are_refused() -> None:
    headers, body = signed()
    twice = (*incoming(headers, body).headers, ("signature", headers["Signature"]))
    request = Incoming("POST", TARGET, twice, body, Deadline(10))
    with pytest.raises(BadSignature, match="Invalid or Missing Signature"):
        verify(KEY, request, time.time(), 300)
