"""The transport to Vault and OpenBao, and what an answer's status means.

One ``PoolManager`` serves every thread, and in a long-lived process every
fetch (``with_deadline`` gives a fetch its own view, sharing the connections
and the credentials to blank out); its retries are off (``call`` retries a
429 and a KV mount's upgrade window itself, within the deadline) and every
call's timeout is what is left of the fetch's deadline. TLS verification is always on (``CERT_REQUIRED``),
trusting ``vault.ca_cert`` or else the system's trust store (as the vault
CLI does; the environment variables that could point OpenSSL elsewhere are
gone before this runs); the client certificate comes from the config too.
Nothing here reads ``os.environ``: Nomad's environment is the job's, and it
is cleared before any import, so a job cannot add a proxy, a CA or a token.

Vault's own ``errors`` and ``warnings`` texts are quoted in messages (cut
short, the credentials sent blanked out): they never hold secret values,
and an answer's ``data`` is never echoed.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import ssl
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

import urllib3

from nomad_secrets._version import __version__
from nomad_secrets.core.config import VaultSettings
from nomad_secrets.core.reference import MAX_REFERENCES, Reference
from nomad_secrets.process import debuglog
from nomad_secrets.process.deadline import Deadline
from nomad_secrets.process.errors import ConfigError, StoreError, Throttled, TimedOut, Unreachable

LABEL = "Vault"
CONNECT_TIMEOUT = 3.0  # a dead address should not eat the whole deadline
REVOKE_TIMEOUT = 1.0  # revoking runs after the answer is decided: keep it short
MAX_RESPONSE_BYTES = 4 * 1024 * 1024  # far above any secret; a wrong address cannot fill memory
MAX_ERROR_TEXT = 200
THROTTLE_RETRIES = 2
THROTTLE_BACKOFF = 0.5  # seconds before the first retry, doubled after; the least pause
THROTTLE_MARGIN = 0.5  # retry only if this much deadline is left after the pause
# Vault's own mount listing: what the preflight reads, and a token check.
UI_MOUNTS = "sys/internal/ui/mounts"
# Go's net/http answers plain HTTP on a TLS listener so, in Vault and OpenBao alike.
PLAIN_HTTP_TO_TLS = b"Client sent an HTTP request to an HTTPS server"
# A KV mount made or tuned to version 2 answers HTTP 400 with one of these
# until it has moved its keys (a moment; longer for many keys). A mount
# being upgraded serves again by itself: retried, with a short pause that
# grows, for as long as the deadline allows.
# Matched whole, as one of the answer's ``errors``: an error that quotes a
# path the job wrote must not pass for one of these.
KV_UPGRADING = (
    "Upgrading from non-versioned to versioned data. This backend will be unavailable for a brief period"
    " and will resume service shortly.",
    "Waiting for the primary to upgrade from non-versioned to versioned data. This backend will be"
    " unavailable for a brief period and will resume service when the primary is finished.",
)
UPGRADE_PAUSE = 0.1  # seconds before the first retry, doubled after
UPGRADE_PAUSE_MAX = 1.0
_ADDRESS = re.compile(r"https?://[^/?#\s]+(/[^?#\s]*)?\Z")
_MULTIERROR_ITEM = re.compile(r"^\s*\*\s*(.+)$", re.MULTILINE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")

Answer = tuple[int, dict[str, Any] | None]  # (status, the JSON object answered)


class Client:
    def __init__(
        self, settings: VaultSettings, deadline: Deadline, *, connections: int = MAX_REFERENCES + 1
    ) -> None:
        """Check the address and the TLS files; no network here. ``connections``:
        how many to keep open (every reference's thread keeps its own)."""
        self.deadline = deadline
        self.namespace = settings.namespace
        self.base = _address(settings.address)
        for key in ("ca_cert", "client_cert", "client_key"):
            _check_readable(getattr(settings, key), f"vault.{key}")
        self._headers = {"X-Vault-Request": "true", "User-Agent": f"nomad-secrets/{__version__}"}
        if settings.namespace:
            self._headers["X-Vault-Namespace"] = settings.namespace
        # Strings that must never reach a message, even inside Vault's text.
        self.credentials: list[str] = []
        self._upgrades = _UpgradeWindows()  # shared by every fetch's view
        self._pool = urllib3.PoolManager(
            num_pools=2,
            maxsize=connections,
            block=False,
            retries=False,
            cert_reqs="CERT_REQUIRED",
            ca_certs=settings.ca_cert,  # None: the system's trust store, as the vault CLI uses
            cert_file=settings.client_cert,
            key_file=settings.client_key,
        )

    def with_deadline(self, deadline: Deadline) -> Client:
        """This client for one fetch: the same connections and credentials,
        that fetch's deadline."""
        view = copy.copy(self)
        view.deadline = deadline
        return view

    def forget(self, secret: str) -> None:
        """No longer blank ``secret`` out (a token or secret_id replaced long ago)."""
        with contextlib.suppress(ValueError):
            self.credentials.remove(secret)

    def call(
        self,
        ref: Reference,
        method: str,
        api_path: str,
        *,
        token: str | None,
        payload: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> Answer:
        """One API call: (status, JSON object or None), retrying a 429 and a
        KV mount's upgrade window (KV_UPGRADING) while the deadline allows.

        Transport failures, 429 (after retries), 5xx, redirects and a 2xx
        that is not a JSON object raise here; every other status is the
        caller's to interpret.
        """
        url = f"{self.base}/v1/{quote(api_path, safe='/')}"
        if query:
            url += "?" + urlencode(query)
        headers = dict(self._headers)
        if token is not None:
            headers["X-Vault-Token"] = token
        data = None
        if payload is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(payload).encode("utf-8")
        status, content_type, raw = self._send_retrying(ref, method, url, headers, data, api_path)
        body = _json_object(raw)
        if status == 400 and body is None and raw.startswith(PLAIN_HTTP_TO_TLS):
            raise Unreachable(
                ref.text,
                LABEL,
                f"Vault at {self.base} answered plain HTTP with HTTP 400",
                "this address speaks TLS: use https:// in vault.address (and vault.ca_cert for its CA)",
            )
        if kv_upgrading(status, raw):
            raise StoreError(
                ref.text,
                LABEL,
                f"the KV mount of {api_path} is being upgraded to version 2 and serves nothing until it"
                f" is done{self.said(body)}",
                "start the task again in a moment: the upgrade moves every key of the mount, and takes"
                " longer the more keys it holds",
            )
        if status == 429:
            raise Throttled(
                ref.text,
                LABEL,
                f"Vault rate-limited the request{self.said(body)}",
                "retry later; the operator can raise Vault's rate limit quota",
            )
        if status == 503:  # Vault answered: its side is broken, not the network (store-error)
            raise StoreError(
                ref.text,
                LABEL,
                f"Vault is sealed or unavailable{self.said(body)}",
                "check the Vault cluster's status (vault status) and vault.address",
            )
        if status >= 500:
            raise StoreError(
                ref.text, LABEL, f"Vault failed with HTTP {status}{self.said(body)}", "see Vault's server log"
            )
        if 300 <= status < 400:
            raise StoreError(
                ref.text,
                LABEL,
                f"Vault answered with a redirect (HTTP {status})",
                "point vault.address at the active node or its load balancer",
            )
        if 200 <= status < 300 and raw and body is None:
            if content_type and not content_type.startswith(("application/json", "text/html")):
                raise StoreError(  # pki/ca_chain (PEM), pki/crl (DER), ...
                    ref.text,
                    LABEL,
                    f"Vault answered {api_path} with {content_type[:60]}, not JSON",
                    "the path serves a file, which has no fields to give; read the JSON form of the"
                    " same data (pki/cert/ca_chain for pki/ca_chain)",
                )
            raise self.malformed(ref)
        return status, body

    def _send_retrying(
        self,
        ref: Reference,
        method: str,
        url: str,
        headers: dict[str, str],
        data: bytes | None,
        api_path: str,
    ) -> tuple[int, str, bytes]:
        """``_send``, again after a 429 (twice) and through a KV mount's
        upgrade window, while the deadline leaves room. In a window one read
        of the mount polls; the others wait for it, then read once (64
        references each polling sent 577 requests in a 5.5 s window)."""
        attempt = pauses = 0
        polling: threading.Lock | None = None  # held while this read polls the window
        try:
            while True:
                if self.deadline.expired():
                    raise self.timed_out(ref)
                status, retry_after, content_type, raw = self._send(ref, method, url, headers, data)
                if status == 429 and attempt < THROTTLE_RETRIES:
                    # A floor under Retry-After: OpenBao sends "0" while its quota is
                    # still spent, and three tries back to back would all fail.
                    pause = max(retry_after or 0.0, THROTTLE_BACKOFF * 2**attempt)
                    attempt += 1
                elif kv_upgrading(status, raw):
                    if polling is None:
                        window = self._upgrades.window(api_path)
                        if not window.acquire(blocking=False):  # another read polls: wait for it
                            if not window.acquire(
                                timeout=max(self.deadline.remaining() - THROTTLE_MARGIN, 0)
                            ):
                                break
                            window.release()
                            continue
                        polling = window
                    # The last pause ends where the deadline leaves just room for the read.
                    pause = min(UPGRADE_PAUSE * 2**pauses, UPGRADE_PAUSE_MAX)
                    pause = min(pause, self.deadline.remaining() - THROTTLE_MARGIN)
                    pauses += 1
                    if pause <= 0:
                        break
                    time.sleep(pause)
                    continue
                else:
                    break
                if pause + THROTTLE_MARGIN > self.deadline.remaining():
                    break
                time.sleep(pause)
        finally:
            if polling is not None:
                polling.release()
        return status, content_type, raw

    def _send(
        self, ref: Reference, method: str, url: str, headers: dict[str, str], data: bytes | None
    ) -> tuple[int, float | None, str, bytes]:
        """(status, Retry-After seconds, Content-Type, body) of one request; transport errors mapped."""
        timeout = self.deadline.call_timeout()
        try:
            response = self._pool.request(
                method,
                url,
                headers=headers,
                body=data,
                timeout=urllib3.Timeout(total=timeout, connect=min(CONNECT_TIMEOUT, timeout)),
                redirect=False,
                preload_content=False,
            )
            try:
                raw = response.read(MAX_RESPONSE_BYTES + 1)
            except BaseException:
                response.close()
                raise
            if len(raw) > MAX_RESPONSE_BYTES:
                response.close()
                raise StoreError(
                    ref.text,
                    LABEL,
                    f"Vault's answer is larger than {MAX_RESPONSE_BYTES} bytes",
                    "check that vault.address points at Vault or OpenBao",
                )
            response.release_conn()
        except urllib3.exceptions.NewConnectionError:  # before TimeoutError: it is a subclass
            raise Unreachable(
                ref.text,
                LABEL,
                f"cannot connect to Vault at {self.base}",
                "check vault.address and that Vault is running and reachable from the node",
            ) from None
        except urllib3.exceptions.TimeoutError:
            raise self.timed_out(ref) from None
        except urllib3.exceptions.SSLError as exc:
            raise Unreachable(
                ref.text,
                LABEL,
                f"TLS with Vault at {self.base} failed ({_tls_reason(exc)})",
                "check vault.ca_cert (the CA of Vault's certificate), vault.client_cert and vault.client_key",
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unreachable(
                ref.text,
                LABEL,
                f"the connection to Vault at {self.base} failed ({type(exc).__name__})",
                "check vault.address and the node's network",
            ) from None
        content_type = _CONTROL.sub("", response.headers.get("Content-Type", "")).split(";")[0].strip()
        return response.status, _retry_after(response.headers.get("Retry-After")), content_type.lower(), raw

    def revoke(self, token: str) -> None:
        """Revoke ``token`` (auth/token/revoke-self) within the deadline; best effort, never raises."""
        headers = {**self._headers, "X-Vault-Token": token}
        try:
            response = self._pool.request(
                "POST",
                self.base + "/v1/auth/token/revoke-self",
                headers=headers,
                # Still inside the deadline: Nomad has not had its answer yet.
                timeout=urllib3.Timeout(total=min(REVOKE_TIMEOUT, self.deadline.call_timeout())),
                redirect=False,
            )
            debuglog.log("vault-revoke", status=response.status)
        except Exception as exc:  # noqa: BLE001 - the answer is decided; the token's TTL ends it anyway
            debuglog.log("vault-revoke-failed", error=type(exc).__name__)

    # -- messages ----------------------------------------------------------------

    def said(self, body: dict[str, Any] | None) -> str:
        """`` (Vault said: ...)`` from an answer's ``errors`` and ``warnings``, or nothing.

        Vault's texts hold no secret values; the credentials we sent are
        blanked out anyway, in case a server quotes its input.
        """
        said = [body.get(key) for key in ("errors", "warnings")] if body else []
        items: list[str] = []
        for text in [item for texts in said if isinstance(texts, list) for item in texts]:
            if isinstance(text, str):
                listed = _MULTIERROR_ITEM.findall(text)  # go-multierror: "1 error occurred:\n\t* x\n\n"
                items += listed or [text]
        joined = _CONTROL.sub(" ", "; ".join(item.strip() for item in items)).strip()
        for secret in tuple(self.credentials):  # a copy: another fetch may replace a token
            joined = joined.replace(secret, "<redacted>")
        if len(joined) > MAX_ERROR_TEXT:
            joined = joined[:MAX_ERROR_TEXT] + "..."
        return f" (Vault said: {joined})" if joined else ""

    def in_namespace(self) -> str:
        return f" in namespace {self.namespace!r}" if self.namespace else ""

    def timed_out(self, ref: Reference) -> TimedOut:
        return TimedOut(
            ref.text,
            LABEL,
            f"no answer within the plugin's {self.deadline.seconds:g} s deadline",  # as resolve.py's
            "check that vault.address is reachable from the node; the operator sets plugin.deadline_seconds",
        )

    def unexpected(self, ref: Reference, answer: Answer) -> StoreError:
        status, body = answer
        return StoreError(
            ref.text,
            LABEL,
            f"unexpected answer from Vault (HTTP {status}){self.said(body)}",
            "see Vault's log",
        )

    def malformed(self, ref: Reference) -> StoreError:
        return StoreError(
            ref.text,
            LABEL,
            "Vault's answer is not in the expected shape",
            "check that vault.address points at Vault or OpenBao",
        )


def _address(address: str | None) -> str:
    if not address:
        raise ConfigError(
            "vault.address is not set: set it in the [vault] section of the config to the URL"
            " of Vault or OpenBao, such as https://vault.example:8200"
        )
    if not _ADDRESS.match(address):
        raise ConfigError(
            "vault.address must be an http:// or https:// URL without query or fragment,"
            " such as https://vault.example:8200"
        )
    return address.rstrip("/")


def _check_readable(path: str | None, key: str) -> None:
    """A missing CA or client certificate is the operator's to fix: say so
    now, not as a TLS failure on the first read."""
    if path is None:
        return
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot read {key} {path}: {exc.strerror}") from None


def _json_object(raw: bytes) -> dict[str, Any] | None:
    if not raw.strip():
        return None
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return parsed if isinstance(parsed, dict) else None


class _UpgradeWindows:
    """A lock per KV mount (the API path before ``/data/``), held by the one
    read that polls the mount's upgrade window."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._windows: dict[str, threading.Lock] = {}

    def window(self, api_path: str) -> threading.Lock:
        with self._guard:
            return self._windows.setdefault(api_path.split("/data/", 1)[0], threading.Lock())


def kv_upgrading(status: int, raw: bytes) -> bool:
    """Vault's answer while a KV mount is being upgraded to version 2."""
    if status != 400 or b"from non-versioned to versioned data" not in raw:
        return False
    errors = (_json_object(raw) or {}).get("errors")
    return isinstance(errors, list) and any(error in KV_UPGRADING for error in errors)


def _retry_after(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


def _tls_reason(exc: BaseException) -> str:
    for cause in (exc, *exc.args, exc.__context__):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {cause.verify_message}"[:MAX_ERROR_TEXT]
        if isinstance(cause, ssl.SSLError) and cause.reason:
            return str(cause.reason)[:MAX_ERROR_TEXT]
    return "handshake failed"
