"""Drone's HTTP signatures, verified: the cavage draft as drone-go signs.

What Drone's runner and server send (drone-go plugin/internal/client with
99designs/httpsignatures-go)::

    Digest: SHA-256=<base64 of sha256(body)>
    Date: Mon, 02 Jan 2006 15:04:05 GMT
    Signature: keyId="hmac-key",algorithm="hmac-sha256",signature="<base64>",
               headers="accept accept-encoding content-type date digest"

The signature is HMAC-SHA256, keyed with the shared secret, of the signing
string: one ``<lower-case name>: <value>`` line per listed header, joined by
``\\n`` with no trailing newline, in standard base64. ``(request-target)``
is left out on purpose (proxies rewrite it); it is supported if listed.

Drone's own verifier (and so drone-vault's) checks only that HMAC, and that
``date`` is among the signed headers. Here also, and stricter:

- every header Drone signs must be signed, so a signed request cannot be
  replayed with another Accept (another endpoint) or Accept-Encoding;
- ``Digest`` must be the body's SHA-256, or the signature covers nothing
  of the body;
- ``Date`` must be within the configured skew of this server's clock, so a
  captured request cannot be replayed later;
- only ``hmac-sha256`` and keyId ``hmac-key``, each signed header sent once;
- every comparison of a secret-derived value is in constant time.

``BadSignature`` carries the text of the 400 answer; it never says which
byte was wrong, and never quotes the secret or the expected signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import TypeVar

from nomad_secrets.serve.exchange import Incoming

ALGORITHM = "hmac-sha256"
KEY_ID = "hmac-key"
REQUEST_TARGET = "(request-target)"
# What drone-go signs; each must be among the signed headers.
REQUIRED_HEADERS = ("accept", "accept-encoding", "content-type", "date", "digest")
MAX_SIGNATURE_HEADER = 4096
_PARAM = re.compile(r'\s*([A-Za-z]+)="([^"]*)"\s*(?:,|\Z)')


class BadSignature(Exception):
    """The request is not signed as Drone signs; the text is the answer's."""

    outcome = "bad-signature"


class InvalidInput(BadSignature):
    """Signed, but not a request this extension takes."""

    outcome = "invalid-input"


T = TypeVar("T")


def read_extension(
    secret: bytes, request: Incoming, skew_seconds: float, media_type: str, parse: Callable[[bytes], T]
) -> T:
    """The request of a Drone extension: ``verify``, the signed Accept must
    be ``media_type``, and ``parse`` (ValueError: what is wrong) reads the body."""
    verify(secret, request, time.time(), skew_seconds)
    if request.header("accept") != media_type:
        raise InvalidInput(f"Invalid Input: this endpoint answers Accept: {media_type}")
    try:
        return parse(request.body)
    except ValueError as exc:
        raise InvalidInput(f"Invalid Input: {exc}") from None


@dataclass(frozen=True)
class Signature:
    key_id: str
    algorithm: str
    headers: tuple[str, ...]
    signature: str


def parse(value: str) -> Signature:
    """The parameters of a Signature header (or an Authorization header's
    ``Signature`` credentials)."""
    if len(value) > MAX_SIGNATURE_HEADER:
        raise BadSignature("Invalid or Missing Signature")
    params: dict[str, str] = {}
    position = 0
    while position < len(value):
        match = _PARAM.match(value, position)
        if match is None or match.group(1) in params:
            raise BadSignature("Invalid or Missing Signature")
        params[match.group(1)] = match.group(2)
        position = match.end()
    if set(params) - {"keyId", "algorithm", "headers", "signature"}:
        raise BadSignature("Invalid or Missing Signature")
    if not params.get("signature") or not params.get("keyId") or not params.get("algorithm"):
        raise BadSignature("Invalid or Missing Signature")
    # The draft's default list is "date" alone; Drone always lists its five.
    headers = tuple(params.get("headers", "date").lower().split(" "))
    return Signature(params["keyId"], params["algorithm"], headers, params["signature"])


def signing_string(headers: tuple[str, ...], request: Incoming) -> str:
    lines = []
    for name in headers:
        if name == REQUEST_TARGET:
            lines.append(f"{REQUEST_TARGET}: {request.method.lower()} {request.target}")
            continue
        value = request.header(name)
        if not value:  # missing, empty or sent twice
            raise BadSignature("Invalid Signature: a signed header is missing or sent twice")
        lines.append(f"{name}: {value}")
    return "\n".join(lines)


def sign(secret: bytes, text: str) -> str:
    return base64.b64encode(hmac.new(secret, text.encode("latin-1"), hashlib.sha256).digest()).decode()


def verify(secret: bytes, request: Incoming, now: float, skew_seconds: float) -> None:
    """Raise BadSignature unless ``request`` is signed with ``secret``, its
    Digest is its body's and its Date is within ``skew_seconds`` of ``now``."""
    value = request.header("signature")
    if value is None:
        authorization = request.header("authorization") or ""
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "signature":
            raise BadSignature("Invalid or Missing Signature")
        value = credentials
    signature = parse(value)
    if signature.algorithm != ALGORITHM or signature.key_id != KEY_ID:
        raise BadSignature(f"Invalid Signature: use keyId {KEY_ID!r} and algorithm {ALGORITHM!r}")
    missing = [name for name in REQUIRED_HEADERS if name not in signature.headers]
    if missing or len(set(signature.headers)) != len(signature.headers):
        raise BadSignature("Invalid Signature: sign " + " ".join(REQUIRED_HEADERS))
    expected = sign(secret, signing_string(signature.headers, request))
    if not hmac.compare_digest(expected.encode(), signature.signature.encode("latin-1")):
        raise BadSignature("Invalid Signature")
    # Signed by the holder of the secret: now check what the HMAC vouches for.
    digest = request.header("digest") or ""
    algorithm, _, encoded = digest.partition("=")
    try:
        given = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        given = b""
    if algorithm.lower() != "sha-256" or not hmac.compare_digest(
        given, hashlib.sha256(request.body).digest()
    ):
        raise BadSignature("Invalid Signature: the Digest header is not the body's SHA-256")
    try:
        date = parsedate_to_datetime(request.header("date") or "")
    except (TypeError, ValueError, IndexError, OverflowError):
        raise BadSignature("Invalid Signature: the Date header is not an HTTP date") from None
    if date.tzinfo is None:  # "-0000": UTC, RFC 5322 says, of unknown local time
        date = date.replace(tzinfo=timezone.utc)
    sent = date.timestamp()
    if abs(now - sent) > skew_seconds:
        raise BadSignature(
            f"Invalid Signature: the Date header is more than {skew_seconds:g} s away from this"
            " server's clock (a replay, or a clock to fix)"
        )
