"""Woodpecker's HTTP Message Signatures (RFC 9421), verified.

What a Woodpecker 3.x server sends to an extension (its
server/services/utils/http.go, signing with yaronf/httpsign's defaults:
``created`` and ``alg`` signed, no ``keyid``, ``expires`` or ``nonce``)::

    Content-Digest: sha-256=:<base64 of sha256(body)>:
    Signature-Input: woodpecker-ci-extensions=("@request-target" "content-digest")
                     ;created=1767225600;alg="ed25519"       (one line)
    Signature: woodpecker-ci-extensions=:<base64 of the ed25519 signature>:

The signature is ed25519, by the key the Woodpecker server made on its
first start, over the signature base (RFC 9421 section 2.5): one line per
covered component, then the parameters::

    "@request-target": /woodpecker/secrets
    "content-digest": sha-256=:...:
    "@signature-params": ("@request-target" "content-digest");created=1767225600;alg="ed25519"

``@request-target`` is the path and query the request was sent to (the
path percent-decoded, as httpsign reads it), and nothing covers the host:
a request Woodpecker signs for any URL with the same path and query
verifies here, wherever it was meant to go (a repository's own config,
registry or secret extension URL, which that repository's admins set).
So the door's path holds a token only the operator's configuration has
(woodpecker.py), and the signature binds the request to it.

Checked, strictly (one signature, one header line each, nothing unknown):
the signature covers exactly ``@request-target`` and ``content-digest``;
``alg``, when given, is ``ed25519``; ``created`` is given; the signature
verifies with the configured public key; then what it vouches for: the
``Content-Digest`` is the body's (sha-256, and sha-512 when given), and
``created`` is within the window of this server's clock, either way (and
``expires``, when given, not past). Refusing replays within the window is
the door's (woodpecker.py), since it depends on the answer.

No library is used for it: the PyPI ``http-message-signatures`` refuses a
signature without ``keyid``, and the whole base is three lines
(docs/design.md). ``cryptography`` verifies the signature.
``BadSignature`` carries the text of the 400 answer, never a key or a
signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from urllib.parse import unquote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from nomad_secrets.serve.exchange import Incoming

LABEL = "woodpecker-ci-extensions"
COMPONENTS = ("@request-target", "content-digest")
ALGORITHM = "ed25519"
MAX_HEADER = 4096
# The signature parameters RFC 9421 defines, and the type of each value.
PARAMETERS: dict[str, type] = {
    "created": int,
    "expires": int,
    "alg": str,
    "keyid": str,
    "nonce": str,
    "tag": str,
}
DIGESTS = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}

# RFC 8941's pieces, as far as these headers use them.
_KEY = r"[a-z*][a-z0-9_.*-]*"
_STRING = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"'
_INTEGER = r"-?[0-9]{1,15}"
_BYTES = r":[A-Za-z0-9+/]*={0,2}:"
_INPUT = re.compile(
    rf" *({_KEY})=\( *((?:{_STRING}(?: +{_STRING})*)?) *\)((?:; *{_KEY}=(?:{_INTEGER}|{_STRING}))*) *"
)
_PARAMETER = re.compile(rf"; *({_KEY})=({_INTEGER}|{_STRING})")
_ITEM = re.compile(_STRING)
_SIGNATURE = re.compile(rf" *({_KEY})=({_BYTES}) *")
_DIGEST_MEMBER = re.compile(rf" *({_KEY})=({_BYTES}) *")


class BadSignature(Exception):
    """Not signed as Woodpecker signs, or not by its key; the text is the answer's."""

    outcome = "bad-signature"


class Stale(BadSignature):
    """Signed by the key, but not within the window: a replay, or a clock to fix."""

    outcome = "stale-signature"


@dataclass(frozen=True)
class Signed:
    signature: bytes  # the signature's bytes: the same request signed again in the same second repeats them
    created: int


def verify(key: Ed25519PublicKey, request: Incoming, now: float, window: float) -> Signed:
    """What Woodpecker signed, or BadSignature."""
    signature_input, signature = request.header("signature-input"), request.header("signature")
    if not signature_input or not signature:
        raise BadSignature(
            "Invalid or Missing Signature: send one Signature-Input and one Signature header,"
            f" labelled {LABEL}"
        )
    components, parameters = parse_input(signature_input)
    raw = parse_signature(signature)
    if sorted(components) != sorted(COMPONENTS):
        raise BadSignature("Invalid Signature: it must cover exactly " + " and ".join(COMPONENTS))
    if parameters.get("alg", ALGORITHM) != ALGORITHM:
        raise BadSignature(f"Invalid Signature: the algorithm must be {ALGORITHM}")
    created = parameters.get("created")
    if not isinstance(created, int):
        raise BadSignature("Invalid Signature: the signature has no created time")
    base = signature_base(components, parameters, request)
    try:
        key.verify(raw, base.encode("latin-1"))
    except (InvalidSignature, UnicodeEncodeError):
        raise BadSignature(
            "Invalid Signature: it does not verify with woodpecker.public_key_file's key"
        ) from None
    # Signed by the Woodpecker server: now check what the signature vouches for.
    check_digest(request.header("content-digest") or "", request.body)
    age = now - created
    if abs(age) > window:
        when = f"{age:.0f} s ago" if age > 0 else f"{-age:.0f} s ahead of this server's clock"
        raise Stale(
            f"Invalid Signature: it was made {when}, beyond server.clock_skew_seconds ({window:g} s):"
            " a replay, or a clock to fix (NTP)"
        )
    expires = parameters.get("expires")
    if isinstance(expires, int) and now > expires:
        raise Stale("Invalid Signature: it has expired")
    return Signed(raw, created)


def parse_input(value: str) -> tuple[list[str], dict[str, int | str]]:
    """The covered components and the parameters of our label's Signature-Input."""
    match = _INPUT.fullmatch(value) if len(value) <= MAX_HEADER else None
    if match is None or match.group(1) != LABEL:
        raise BadSignature(f"Invalid Signature: Signature-Input must be one signature labelled {LABEL}")
    components = [_unquote(item) for item in _ITEM.findall(match.group(2))]
    parameters: dict[str, int | str] = {}
    for name, text in _PARAMETER.findall(match.group(3)):
        kind = PARAMETERS.get(name)
        if kind is None or name in parameters or (kind is int) != (not text.startswith('"')):
            raise BadSignature(
                f"Invalid Signature: the signature parameter {name!r} is unknown, repeated or mistyped"
            )
        parameters[name] = int(text) if kind is int else _unquote(text)
    if len(set(components)) != len(components):
        raise BadSignature("Invalid Signature: a component is covered twice")
    return components, parameters


def parse_signature(value: str) -> bytes:
    match = _SIGNATURE.fullmatch(value) if len(value) <= MAX_HEADER else None
    if match is None or match.group(1) != LABEL:
        raise BadSignature(f"Invalid Signature: Signature must be one signature labelled {LABEL}")
    return _bytes(match.group(2))


def signature_base(components: list[str], parameters: dict[str, int | str], request: Incoming) -> str:
    lines = []
    for component in components:
        if component == "@request-target":
            path, question, query = request.target.partition("?")
            lines.append(f'"@request-target": {unquote(path)}{question}{query}')
        else:  # content-digest
            value = request.header(component)
            if value is None:
                raise BadSignature(f"Invalid Signature: send one {component} header")
            lines.append(f'"{component}": {value.strip()}')
    return "\n".join([*lines, f'"@signature-params": {serialize(components, parameters)}'])


def serialize(components: list[str], parameters: dict[str, int | str]) -> str:
    """The signature's parameters as RFC 8941 serializes an Inner List."""
    items = " ".join(_quote(c) for c in components)
    params = "".join(f";{k}={v if isinstance(v, int) else _quote(v)}" for k, v in parameters.items())
    return f"({items}){params}"


def check_digest(value: str, body: bytes) -> None:
    """Content-Digest (RFC 9530) must hold the body's sha-256 or sha-512, and
    every digest of those it holds must be the body's."""
    known = 0
    for member in value.split(",") if len(value) <= MAX_HEADER else [""]:
        match = _DIGEST_MEMBER.fullmatch(member)
        if match is None:
            raise BadSignature("Invalid Signature: Content-Digest is not a dictionary of digests")
        algorithm = DIGESTS.get(match.group(1))
        if algorithm is None:
            continue  # RFC 9530: an algorithm not known is ignored
        known += 1
        if not hmac.compare_digest(_bytes(match.group(2)), algorithm(body).digest()):
            raise BadSignature("Invalid Signature: Content-Digest is not the body's")
    if not known:
        raise BadSignature("Invalid Signature: Content-Digest holds no sha-256 (nor sha-512) digest")


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1])


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _bytes(text: str) -> bytes:
    try:
        return base64.b64decode(text[1:-1], validate=True)
    except (binascii.Error, ValueError):
        raise BadSignature("Invalid Signature: a byte sequence is not base64") from None
