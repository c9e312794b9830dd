"""An OIDC issuer's tokens, verified: an RS256 JWT against the issuer's keys.

The keys are found as OIDC discovery says: ``<issuer>/.well-known/openid-configuration``
names the issuer (it must be ours, exactly) and its ``jwks_uri``. They are
kept for ``cache_seconds`` and fetched again before that when a token names
a key id (``kid``) not among them (a key rotation), at most once every
``MIN_REFRESH_SECONDS`` so that tokens with made-up key ids cannot make the
server hammer the issuer. PyJWT (with cryptography) checks the signature,
``iss``, ``aud``, ``exp``, ``iat`` (not in the future) and ``nbf``, each with
``LEEWAY_SECONDS`` for clock skew; only RS256 is accepted, whatever the
token's header says (so neither ``none`` nor an HMAC keyed with the public
key).

Any failure of the token is ``InvalidToken``, which says nothing more: the
door answers 401 and nothing else. An issuer that cannot be reached is
``IssuerUnavailable``: the token may be good, the server cannot tell.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import jwt

from nomad_secrets.deadline import Deadline
from nomad_secrets.server import fetchjson

ALGORITHMS = ["RS256"]
LEEWAY_SECONDS = 30
MIN_REFRESH_SECONDS = 10.0
MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_TOKEN_BYTES = 16 * 1024
REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat"]


class InvalidToken(Exception):
    """Not a valid token of this issuer for this audience."""


class IssuerUnavailable(Exception):
    """The issuer's discovery document or keys could not be read."""


class IssuerKeys:
    """The issuer's signing keys by key id, cached and refreshed."""

    def __init__(self, issuer: str, cache_seconds: float, ca_cert: str | None = None) -> None:
        self.issuer = issuer
        self.cache_seconds = cache_seconds
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched = float("-inf")
        self._attempted = float("-inf")
        self._lock = threading.Lock()
        self._http = fetchjson.pool(ca_cert)

    def key(self, kid: str, deadline: Deadline) -> jwt.PyJWK:
        with self._lock:
            now = time.monotonic()
            stale = now - self._fetched >= self.cache_seconds
            unknown = kid not in self._keys and now - self._attempted >= MIN_REFRESH_SECONDS
            if stale or unknown:
                self._attempted = now
                try:
                    self._keys = self._fetch(deadline)
                    self._fetched = now
                except IssuerUnavailable:
                    if not self._keys:
                        raise
                    # Keep the keys we have: a token signed by one of them is still good.
            found = self._keys.get(kid)
        if found is None:
            raise InvalidToken
        return found

    def _fetch(self, deadline: Deadline) -> dict[str, jwt.PyJWK]:
        discovery = self._get(self.issuer.rstrip("/") + "/.well-known/openid-configuration", deadline)
        if discovery.get("issuer") != self.issuer:
            raise IssuerUnavailable(f"the discovery document of {self.issuer} names another issuer")
        jwks_uri = discovery.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise IssuerUnavailable(f"the discovery document of {self.issuer} has no jwks_uri")
        try:
            found = jwt.PyJWKSet.from_dict(self._get(jwks_uri, deadline)).keys
        except jwt.PyJWTError:
            raise IssuerUnavailable(f"the keys of {self.issuer} ({jwks_uri}) are not a JWK set") from None
        keys = {key.key_id: key for key in found if key.key_id and key.key_type == "RSA"}
        if not keys:
            raise IssuerUnavailable(f"the keys of {self.issuer} ({jwks_uri}) hold no RSA key with a kid")
        return keys

    def _get(self, url: str, deadline: Deadline) -> dict[str, Any]:
        if not allowed_url(url):
            raise IssuerUnavailable(f"{url!r} is not https:// (http:// only on loopback)")
        headers = {"Accept": "application/json"}
        try:
            status, document = fetchjson.get(self._http, url, headers, deadline, MAX_DOCUMENT_BYTES)
        except fetchjson.Unreachable as exc:
            raise IssuerUnavailable(str(exc)) from None
        if status != 200 or not isinstance(document, dict):
            raise IssuerUnavailable(f"{url} answered {status}, not a JSON object")
        return document

    def close(self) -> None:
        self._http.clear()


def verify(token: str, keys: IssuerKeys, audience: str, deadline: Deadline) -> dict[str, Any]:
    """The token's claims, once it is proven ours; InvalidToken otherwise."""
    if len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
        raise InvalidToken
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise InvalidToken from None
    kid = header.get("kid")
    if header.get("alg") not in ALGORITHMS or not isinstance(kid, str) or not kid:
        raise InvalidToken
    key = keys.key(kid, deadline)
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key=key,
            algorithms=ALGORITHMS,
            audience=audience,
            issuer=keys.issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": REQUIRED_CLAIMS},
        )
    except jwt.PyJWTError:
        raise InvalidToken from None
    return claims


def allowed_url(url: str) -> bool:
    """https://, or http:// to a loopback address (a local issuer in tests)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return True
    if parts.scheme != "http" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False
