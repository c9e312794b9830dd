"""Drone's HTTP signature and aesgcm answer, against vectors made here from
the published algorithm (serverutil.drone_headers), not from the server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from support.serverutil import DRONE_HEADERS, drone_headers, http_date

from nomad_secrets.process.deadline import Deadline
from nomad_secrets.serve import aesgcm, httpsig
from nomad_secrets.serve.exchange import Incoming

SECRET = "e6b1f4c2a9d8e7f6a5b4c3d2e1f0a9b8"
BODY = b'{"path":"aws-sm:ci/docker","name":"password"}'


def incoming(headers: dict[str, str], body: bytes = BODY) -> Incoming:
    return Incoming(
        method="POST",
        target="/drone/secret",
        headers=tuple((k.lower(), v) for k, v in headers.items()),
        body=body,
        deadline=Deadline(5),
    )


def verify(headers: dict[str, str], body: bytes = BODY, now: float | None = None) -> None:
    httpsig.verify(SECRET.encode(), incoming(headers, body), time.time() if now is None else now, 300)


def test_a_fixed_vector_from_the_published_algorithm() -> None:
    date = "Mon, 02 Jan 2006 15:04:05 GMT"
    signing = (
        "accept: application/vnd.drone.secret.v1+json\naccept-encoding: identity\n"
        "content-type: application/json\ndate: Mon, 02 Jan 2006 15:04:05 GMT\n"
        "digest: SHA-256=" + base64.b64encode(hashlib.sha256(BODY).digest()).decode()
    )
    expected = base64.b64encode(hmac.new(SECRET.encode(), signing.encode(), hashlib.sha256).digest()).decode()
    headers = drone_headers(SECRET, BODY, date=date)
    assert f'signature="{expected}"' in headers["Signature"]
    assert httpsig.sign(SECRET.encode(), signing) == expected
    verify(headers, now=1136214245.0)  # that Date, to the second
    with pytest.raises(httpsig.BadSignature, match="Date"):
        verify(headers, now=1136214245.0 + 301)


def test_a_signed_request_passes_and_any_change_fails() -> None:
    verify(drone_headers(SECRET, BODY))
    with pytest.raises(httpsig.BadSignature, match="Digest"):
        verify(drone_headers(SECRET, BODY), body=BODY.replace(b"password", b"username"))
    for name, value in (
        ("Accept", "application/vnd.drone.admission.v1+json"),
        ("Accept-Encoding", "aesgcm"),
        ("Content-Type", "text/plain"),
        ("Date", http_date(time.time() - 1)),
        ("Digest", "SHA-256=" + base64.b64encode(hashlib.sha256(b"other").digest()).decode()),
    ):
        headers = {**drone_headers(SECRET, BODY), name: value}
        with pytest.raises(httpsig.BadSignature, match=r"^Invalid Signature$"):
            verify(headers)
    with pytest.raises(httpsig.BadSignature, match=r"^Invalid Signature$"):
        verify(drone_headers("another secret, also 32 bytes long", BODY))


def test_the_date_must_be_within_the_skew_either_way() -> None:
    for offset in (-301, 301):
        headers = drone_headers(SECRET, BODY, date=http_date(time.time() + offset))
        with pytest.raises(httpsig.BadSignature, match="away from this server's clock"):
            verify(headers)
    verify(drone_headers(SECRET, BODY, date=http_date(time.time() - 290)))


def test_every_header_drone_signs_must_be_signed_once() -> None:
    for left_out in DRONE_HEADERS:
        signed = tuple(h for h in DRONE_HEADERS if h != left_out)
        with pytest.raises(httpsig.BadSignature, match="sign accept"):
            verify(drone_headers(SECRET, BODY, signed=signed))
    twice = [*drone_headers(SECRET, BODY).items(), ("Date", http_date())]
    request = Incoming("POST", "/", tuple((k.lower(), v) for k, v in twice), BODY, Deadline(5))
    with pytest.raises(httpsig.BadSignature, match="sent twice"):
        httpsig.verify(SECRET.encode(), request, time.time(), 300)


@pytest.mark.parametrize(
    "signature",
    [
        "",
        'keyId="hmac-key",algorithm="hmac-sha256"',
        'keyId="hmac-key",algorithm="hmac-sha256",signature="x",extra="y"',
        'keyId="hmac-key",keyId="hmac-key",algorithm="hmac-sha256",signature="x"',
        "not a signature at all",
        'keyId="hmac-key",algorithm="hmac-sha256",signature="' + "A" * 5000 + '"',
    ],
)
def test_a_malformed_signature_header_is_missing_or_invalid(signature: str) -> None:
    headers = {**drone_headers(SECRET, BODY), "Signature": signature}
    with pytest.raises(httpsig.BadSignature, match="Invalid or Missing Signature"):
        verify(headers)


def test_only_hmac_sha256_and_drones_key_id() -> None:
    headers = drone_headers(SECRET, BODY)
    for old, new in (("hmac-sha256", "hmac-sha1"), ('keyId="hmac-key"', 'keyId="other"')):
        with pytest.raises(httpsig.BadSignature, match="use keyId"):
            verify({**headers, "Signature": headers["Signature"].replace(old, new)})


def test_authorization_signature_is_accepted_as_drones_verifier_does() -> None:
    headers = drone_headers(SECRET, BODY)
    headers["Authorization"] = "Signature " + headers.pop("Signature")
    verify(headers)
    del headers["Authorization"]
    with pytest.raises(httpsig.BadSignature, match="Invalid or Missing Signature"):
        verify(headers)


def test_request_target_is_signed_when_listed() -> None:
    signed = (*DRONE_HEADERS, "(request-target)")
    headers = drone_headers(SECRET, BODY)
    lower = {k.lower(): v for k, v in headers.items()}
    text = "\n".join(f"{h}: {lower[h]}" for h in DRONE_HEADERS) + "\n(request-target): post /drone/secret"
    mac = base64.b64encode(hmac.new(SECRET.encode(), text.encode(), hashlib.sha256).digest()).decode()
    headers["Signature"] = (
        f'keyId="hmac-key",algorithm="hmac-sha256",signature="{mac}",headers="{" ".join(signed)}"'
    )
    verify(headers)


def test_aesgcm_is_drones_layout_and_opens_with_the_secrets_first_32_bytes() -> None:
    secret = (SECRET + "-and-more-than-32-bytes").encode()
    sealed = aesgcm.seal(b'{"data":"x"}', secret)
    nonce, rest = sealed[:12], sealed[12:]
    assert len(rest) == len(b'{"data":"x"}') + 16
    assert AESGCM(secret[:32]).decrypt(nonce, rest, None) == b'{"data":"x"}'
    assert aesgcm.seal(b'{"data":"x"}', secret)[:12] != nonce  # a fresh nonce each time
    with pytest.raises(ValueError, match="32 bytes"):
        aesgcm.seal(b"x", b"short")
