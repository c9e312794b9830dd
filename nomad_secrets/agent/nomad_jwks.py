"""A Nomad workload identity JWT, verified against the cluster's JWKS.

Nomad (1.7 and newer) signs workload identities with RS256 and serves the
public keys at ``/.well-known/jwks.json``. The operator saves that document
to a file; ``load_jwks`` reads it and ``verified_claims`` checks a token
against it: the header must say RS256 and name a key of the file, the
signature must verify, the token must be current, and it must name a
namespace and a job.

Standard library only (this ships in the executable, where ``cryptography``
is not), so RSASSA-PKCS1-v1_5 verification is done here, the safe way: the
whole encoded message a genuine signature decrypts to is built from the
hash and compared byte for byte, never parsed (parsing the padding is how
Bleichenbacher's e=3 forgeries get through). Only the public key is ever
used, so no step needs to be constant-time.

Neither a token nor a claim value appears in a message: a ``TokenRejected``
says which check failed, in our own words, and ``JwksError`` names the file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import stat

# Clock skew between the Nomad servers and this node: identity.py's value,
# repeated because importing identity.py pulls in request.py, dataclasses
# and inspect (about 5 ms) while this module imports nothing of ours.
LEEWAY_SECONDS = 30
MAX_TOKEN_CHARS = 16 * 1024  # as identity.py
MAX_JWKS_BYTES = 1024 * 1024
MIN_MODULUS_BITS = 2048  # what Nomad generates; shorter keys are factorable or close to it
# Bounds on the work one token can cost (pow is about bits(e) squarings of
# a modulus-sized number): Go's crypto/rsa refuses the same.
MAX_MODULUS_BITS = 16384
MAX_EXPONENT = (1 << 31) - 1
# DER of DigestInfo{AlgorithmIdentifier{id-sha256, NULL}, OCTET STRING(32)}
# (RFC 8017, 9.2 note 1): the bytes before the hash in a SHA-256 signature.
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
_FIX = "save Nomad's https://<nomad>:4646/.well-known/jwks.json there"


class JwksError(Exception):
    """The JWKS file cannot be used; the message names it and says what to do."""


class TokenRejected(Exception):
    """The token is not a genuine, current workload identity of this cluster.

    ``reason`` says which check failed, in our words only, as a clause that
    follows the token's name: ``f"NOMAD_WORKLOAD_TOKEN was refused: {reason}"``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def load_jwks(path: str) -> dict[str, tuple[int, int]]:
    """The RS256 signing keys of the JWKS file at ``path``: kid -> (n, e).

    Keys of other types or uses are skipped: a cluster upgraded from Nomad
    1.6 still serves the EdDSA (``OKP``) keys of its older root keys beside
    the RSA ones, and a token signed with one is refused by its ``alg``
    anyway. An RSA signing key that is unusable (no kid, a short or bad
    modulus, a kid twice) fails the whole file instead of being dropped: it
    means a damaged or wrong file, and dropping it would only show later as
    "kid not in the JWKS". A file with no usable key fails too.
    """
    try:
        document = _parse_json(_read_bounded(path))
    except ValueError as exc:
        raise JwksError(f"the JWKS file {path} {exc}; {_FIX}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError(f'the JWKS file {path} is not a JWK set (an object with a "keys" list); {_FIX}')
    keys: dict[str, tuple[int, int]] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict):
            raise JwksError(f"the JWKS file {path} has a key that is not a JSON object; {_FIX}")
        if jwk.get("kty") != "RSA" or jwk.get("use", "sig") != "sig" or jwk.get("alg", "RS256") != "RS256":
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid:
            raise JwksError(f"the JWKS file {path} has an RSA key without a kid; {_FIX}")
        if kid in keys:
            raise JwksError(f"the JWKS file {path} has two keys with kid {kid!r}; {_FIX}")
        keys[kid] = _public_key(jwk, f"key {kid!r} of the JWKS file {path}")
    if not keys:
        raise JwksError(f"the JWKS file {path} has no RSA RS256 signing key (Nomad 1.7 or newer); {_FIX}")
    return keys


def verified_claims(
    token: str, keys: dict[str, tuple[int, int]], now: float, audience: str | None = None
) -> dict[str, object]:
    """The claims of ``token`` once it verifies against ``keys`` (from
    ``load_jwks``) and is valid at ``now``; TokenRejected otherwise.

    Nothing of the payload is read before the signature verifies, and keys
    come from ``keys`` only: a header's jwk, jku or x5u is never looked at.
    """
    parts = token.split(".")
    if len(token) > MAX_TOKEN_CHARS or len(parts) != 3:
        raise TokenRejected("it is not a JWT (three dot-separated parts, at most 16 KiB)")
    try:
        header_bytes, payload_bytes, signature = (_b64url(part) for part in parts)
    except ValueError:
        raise TokenRejected("it is not a JWT: a part is not base64url") from None
    try:
        header = _parse_json(header_bytes)
    except ValueError as exc:
        raise TokenRejected(f"it is not a JWT: its header {exc}") from None
    if not isinstance(header, dict):
        raise TokenRejected("it is not a JWT: its header is not a JSON object")
    if header.get("alg") != "RS256":
        # Our key decides the algorithm, never the header: "none", or HS256 keyed with the
        # public key, would let anyone sign.
        raise TokenRejected("it is not signed with RS256, the only algorithm Nomad signs identities with")
    if "crit" in header:  # RFC 7515 4.1.11: extensions we do not know must fail
        raise TokenRejected("its header lists critical extensions (crit), which Nomad never sets")
    kid = header.get("kid")
    if not isinstance(kid, str) or kid not in keys:
        raise TokenRejected(
            "its signing key (kid) is not in the JWKS file: after a Nomad key rotation,"
            " save /.well-known/jwks.json again; else the token is from another cluster"
        )
    n, e = keys[kid]
    if len(signature) != (n.bit_length() + 7) // 8:
        raise TokenRejected("its signature is not the size of its key")
    if not _rs256_verifies(f"{parts[0]}.{parts[1]}".encode("ascii"), signature, n, e):
        raise TokenRejected("its signature does not verify with its key in the JWKS file")
    try:
        claims = _parse_json(payload_bytes)
    except ValueError as exc:  # signed by Nomad, so never; but it is not ours to trust
        raise TokenRejected(f"its payload {exc}") from None
    if not isinstance(claims, dict):
        raise TokenRejected("it is not a JWT: its payload is not a JSON object")
    _check_times(claims, now)
    if audience is not None:
        aud = claims.get("aud")
        if not (aud == audience or (isinstance(aud, list) and audience in aud)):
            raise TokenRejected(f"its audience (aud claim) does not include {audience!r}")
    for claim in ("nomad_namespace", "nomad_job_id"):
        value = claims.get(claim)
        if not isinstance(value, str) or not value:
            raise TokenRejected(f"it has no {claim} claim: it is not a Nomad workload identity")
    return claims


def _check_times(claims: dict[str, object], now: float) -> None:
    exp, nbf, iat = (_time_claim(claims, name) for name in ("exp", "nbf", "iat"))
    if exp is None:
        raise TokenRejected("it has no expiry (exp claim); give the identity block a ttl")
    if exp + LEEWAY_SECONDS < now:
        raise TokenRejected("it has expired; Nomad renews identities with a ttl: restart the task")
    if nbf is not None and nbf - LEEWAY_SECONDS > now:
        raise TokenRejected("it is not valid yet (nbf claim); check this node's clock")
    if iat is not None and iat - LEEWAY_SECONDS > now:
        raise TokenRejected("it was issued in the future (iat claim); check this node's clock")


def _time_claim(claims: dict[str, object], name: str) -> float | None:
    if name not in claims:
        return None
    value = claims[name]
    # A bool is an int to Python; 1e999 parses as infinity and would never expire.
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise TokenRejected(f"its {name} claim is not a NumericDate (seconds since 1970)")
    return float(value)


def _rs256_verifies(signing_input: bytes, signature: bytes, n: int, e: int) -> bool:
    """RSASSA-PKCS1-v1_5 with SHA-256 (RFC 8017 8.2.2): the signature,
    raised to e mod n, must be exactly the encoded message built here."""
    size = len(signature)  # the modulus' size, checked by the caller
    representative = int.from_bytes(signature, "big")
    if representative >= n:  # RSAVP1's range check
        return False
    digest_info = _SHA256_DIGEST_INFO + hashlib.sha256(signing_input).digest()
    # EM = 0x00 0x01 FF..FF 0x00 DigestInfo; a 2048-bit key leaves 202 bytes of FF (8 at least).
    expected = b"\x00\x01" + b"\xff" * (size - len(digest_info) - 3) + b"\x00" + digest_info
    return pow(representative, e, n).to_bytes(size, "big") == expected


def _public_key(jwk: dict[str, object], what: str) -> tuple[int, int]:
    try:
        n = int.from_bytes(_b64url(jwk.get("n")), "big")
        e = int.from_bytes(_b64url(jwk.get("e")), "big")
    except ValueError:
        raise JwksError(f"{what} has no base64url n and e (modulus, exponent); {_FIX}") from None
    bits = n.bit_length()
    if bits < MIN_MODULUS_BITS:
        raise JwksError(
            f"{what} is a {bits}-bit RSA key, shorter than {MIN_MODULUS_BITS} bits: too weak to trust;"
            f" Nomad's are {MIN_MODULUS_BITS}-bit, {_FIX}"
        )
    if bits > MAX_MODULUS_BITS or not n % 2:
        raise JwksError(f"{what} has a modulus that is not an RSA modulus of at most 16384 bits; {_FIX}")
    if not (3 <= e <= MAX_EXPONENT and e % 2):
        raise JwksError(f"{what} has an exponent that is not odd, between 3 and 2^31-1; {_FIX}")
    return n, e


def _b64url(text: object) -> bytes:
    """Unpadded base64url (RFC 7515 2), strictly: anything the decoder would
    skip or round (other characters, padding, stray low bits) is refused, so
    that one signature has one spelling. ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))  # ValueError if not ASCII
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii") != text:
        raise ValueError("not canonical base64url")
    return data


class _Repeated(ValueError):
    pass


def _unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Repeated
    return obj


def _not_json(constant: str) -> object:
    raise ValueError(constant)


def _parse_json(data: bytes) -> object:
    """JSON with no repeated member name (parsers differ on which one wins:
    a token's claims must mean to us what they meant to Nomad) and no NaN
    or Infinity (not JSON). ValueError saying which, in our words only."""
    try:
        return json.loads(data, object_pairs_hook=_unique, parse_constant=_not_json)
    except _Repeated:
        raise ValueError("repeats a member name") from None
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise ValueError("is not JSON") from None


def _read_bounded(path: str) -> bytes:
    """The file's bytes, at most MAX_JWKS_BYTES. O_NONBLOCK and the
    regular-file check keep a FIFO or a device from hanging the reader."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise JwksError(f"cannot open the JWKS file {path}: {exc.strerror}; {_FIX}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise JwksError(f"the JWKS file {path} is not a regular file; {_FIX}")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_JWKS_BYTES:
            chunk = os.read(fd, MAX_JWKS_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise JwksError(f"cannot read the JWKS file {path}: {exc.strerror}; {_FIX}") from None
    finally:
        os.close(fd)
    if size > MAX_JWKS_BYTES:
        raise JwksError(f"the JWKS file {path} is larger than 1 MiB: it is not Nomad's JWKS; {_FIX}")
    return b"".join(chunks)
