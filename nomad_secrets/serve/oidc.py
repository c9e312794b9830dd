"""An OIDC issuer's tokens, verified: an RS256 JWT against the issuer's keys.

The keys are found as OIDC discovery says: ``<issuer>/.well-known/openid-configuration``
names the issuer (it must be ours, exactly) and its ``jwks_uri``. PyJWT
(with cryptography) checks the signature, ``iss``, ``aud``, ``exp``, ``iat``
(not in the future) and ``nbf``, each with ``LEEWAY_SECONDS`` for clock
skew; only RS256 is accepted, whatever the token's header says (so neither
``none`` nor an HMAC keyed with the public key).

The key server is someone else's, and may hang, drip or answer garbage; a
request must not wait on it when it need not (issue 25: one lock held
across a refresh made every door wait on a dripping key server). So:

- the keys are refreshed in a thread of their own, one refresh at a time,
  each bounded in total time (fetchjson), never under the lock;
- a token whose key is known is checked at once with it, even when the
  keys are older than ``cache_seconds``: that starts a refresh behind it;
- a token naming a key id (``kid``) not among the keys (a rotation, or
  junk: anyone can send a token with a made-up kid) starts a refresh only
  when its peer address (an IPv6 address's /64) has not started one within
  ``MIN_REFRESH_SECONDS``, and never sooner than ``MIN_GAP_SECONDS`` after
  the last one, then waits for it within its own deadline; at most
  ``max_waiting`` requests wait at once (the rest are answered at once), so
  such tokens hold a bounded share of the door threads; when the refresh
  failed, the token can be neither trusted nor refused: 503;
- a failed refresh keeps the keys there are, and is tried again no sooner
  than ``MIN_REFRESH_SECONDS`` later, whichever peer asks (a token with an
  unknown kid meanwhile: 503).

Any failure of the token is ``InvalidToken``, which says nothing more: the
door answers 401 and nothing else. An issuer that cannot be reached is
``IssuerUnavailable``: the token may be good, the server cannot tell.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import jwt

from nomad_secrets.process.deadline import Deadline
from nomad_secrets.serve import fetchjson
from nomad_secrets.serve.listen import peer_group

logger = logging.getLogger("nomad_secrets.serve")

ALGORITHMS = ["RS256"]
LEEWAY_SECONDS = 30
MIN_REFRESH_SECONDS = 10.0  # per peer for unknown kids; and after a failed refresh
MIN_GAP_SECONDS = 1.0  # between two refreshes, whoever asks
MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_TOKEN_BYTES = 16 * 1024
MAX_PEERS_KEPT = 4096  # peers remembered for MIN_REFRESH_SECONDS; then forgotten
REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat"]


class InvalidToken(Exception):
    """Not a valid token of this issuer for this audience."""


class IssuerUnavailable(Exception):
    """The issuer's discovery document or keys could not be read."""


class IssuerKeys:
    """The issuer's signing keys by key id, cached and refreshed."""

    def __init__(
        self,
        issuer: str,
        cache_seconds: float,
        *,
        refresh_seconds: float,
        max_waiting: int,
        ca_cert: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock``: seconds, only ever compared (time.monotonic; a test's
        own, so that the intervals pass without waiting them out)."""
        self.issuer = issuer
        self.cache_seconds = cache_seconds
        # One refresh, discovery and keys, in all: shorter than a request's
        # deadline, so that a request waiting for it hears how it ended.
        self.refresh_seconds = refresh_seconds
        self.max_waiting = max_waiting
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched = float("-inf")  # when the keys we have were asked for
        self._attempted = float("-inf")  # when the last refresh started
        self._failure = ""  # why the last refresh failed, if it did
        self._running: threading.Event | None = None  # set when the running refresh ends
        self._waiting = 0
        self._started_by: dict[str, float] = {}  # peer -> its last refresh for an unknown kid
        self._lock = threading.Lock()
        self._fetcher = fetchjson.Fetcher(ca_cert)
        self._clock = clock

    def key(self, kid: str, deadline: Deadline, peer: str) -> jwt.PyJWK:
        with self._lock:
            now = self._clock()
            found = self._keys.get(kid)
            if found is not None:
                if now - self._fetched >= self.cache_seconds and now - self._attempted >= MIN_REFRESH_SECONDS:
                    self._start(now)  # behind this request, which has its key
                return found
            done = self._running
            if done is None:
                done = self._start_for_unknown(now, peer_group(peer))
            if self._waiting >= self.max_waiting:
                raise IssuerUnavailable("too many requests are waiting for the issuer's keys; try again")
            self._waiting += 1
        try:
            arrived = done.wait(max(deadline.remaining(), 0.0))
        finally:
            with self._lock:
                self._waiting -= 1
        with self._lock:
            found = self._keys.get(kid)
            if found is not None:
                return found
            if not arrived:
                raise IssuerUnavailable("the issuer's keys did not arrive within the request's deadline")
            if self._failure or not self._keys:  # the token's key may well be there: we cannot tell
                raise IssuerUnavailable(self._failure or f"no keys from {self.issuer}")
        raise InvalidToken

    def _start_for_unknown(self, now: float, group: str) -> threading.Event:
        """A refresh for a kid we do not know, when this peer may start one
        (call with the lock held); InvalidToken or IssuerUnavailable when not."""
        if (not self._keys or self._failure) and now - self._attempted < MIN_REFRESH_SECONDS:
            # Nothing works without keys, and a failing issuer is not asked
            # again sooner, however many addresses send unknown kids.
            raise IssuerUnavailable(self._failure or f"no keys from {self.issuer}")
        if self._keys and now - self._started_by.get(group, float("-inf")) < MIN_REFRESH_SECONDS:
            raise InvalidToken
        started = self._start(now)
        if started is None:
            raise InvalidToken if self._keys else IssuerUnavailable(self._failure or "try again")
        if self._keys:
            if len(self._started_by) >= MAX_PEERS_KEPT:
                self._started_by = {
                    p: t for p, t in self._started_by.items() if now - t < MIN_REFRESH_SECONDS
                }
            self._started_by[group] = now
        return started

    def _start(self, now: float) -> threading.Event | None:
        """Start a refresh in its own thread (call with the lock held),
        unless one runs or the last began less than MIN_GAP_SECONDS ago."""
        if self._running is not None or now - self._attempted < MIN_GAP_SECONDS:
            return None
        self._attempted = now
        done = self._running = threading.Event()
        threading.Thread(target=self._refresh, args=(done, now), name="issuer-keys", daemon=True).start()
        return done

    def _refresh(self, done: threading.Event, started: float) -> None:
        keys: dict[str, jwt.PyJWK] | None = None
        try:
            keys = self._fetch(Deadline(self.refresh_seconds))
            failure = ""
        except IssuerUnavailable as exc:
            failure = str(exc)
        except Exception as exc:  # noqa: BLE001 - the refresh must end, and free its slot, whatever happens
            failure = f"internal error ({type(exc).__name__}) reading the keys of {self.issuer}"
        with self._lock:
            if keys is not None:
                self._keys, self._fetched = keys, started
            self._failure = failure
            self._running = None
        done.set()
        if failure:
            kept = f"keeping the {len(self._keys)} key(s) there are" if self._keys else "no keys yet"
            logger.warning("cannot refresh the OIDC keys: %s; %s", failure, kept)

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
            status, document = self._fetcher.get(url, headers, deadline, MAX_DOCUMENT_BYTES)
        except fetchjson.NoAnswer as exc:
            raise IssuerUnavailable(str(exc)) from None
        if status != 200 or not isinstance(document, dict):
            raise IssuerUnavailable(f"{url} answered {status}, not a JSON object")
        return document


def verify(token: str, keys: IssuerKeys, audience: str, deadline: Deadline, peer: str) -> dict[str, Any]:
    """The token's claims, once it is proven ours; InvalidToken otherwise.
    ``peer`` is the address that sent it (it may start one key refresh)."""
    if len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
        raise InvalidToken
    try:
        header = jwt.get_unverified_header(token)
        # Not proof of anything yet, but a token that does not even claim
        # our issuer need not cost a key refresh.
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise InvalidToken from None
    kid = header.get("kid")
    if header.get("alg") not in ALGORITHMS or not isinstance(kid, str) or not kid:
        raise InvalidToken
    if unverified.get("iss") != keys.issuer:
        raise InvalidToken
    key = keys.key(kid, deadline, peer)
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
