"""HashiCorp Vault and OpenBao: KV v1, KV v2 and other secrets engines.

Transport: urllib3 directly, not hvac and not requests. Every fetch is a
fresh process, so import time is the product's speed: ``import hvac`` costs
about 115 ms (it pulls requests and every API module), urllib3 about 20 ms,
and urllib3 is carried anyway for botocore. One ``PoolManager`` serves every
thread; its retries are off (``_call`` retries a 429 itself, within the
deadline) and every call's timeout is what is left of the deadline.

TLS verification is always on (``CERT_REQUIRED``), trusting ``vault.ca_cert``
or else the system's trust store (as the vault CLI does; the environment
variables that could point OpenSSL elsewhere are gone before this runs); the
client certificate comes from the config too. This
module never reads ``os.environ``: Nomad's environment is the job's, and it is
cleared before any import, so a job cannot add a proxy, a CA or a token.

What a reference ``vault:<mount>/<path>`` reads:

- KV v2: ``GET /v1/<mount>/data/<path>[?version=N]``, its ``data.data`` map;
- KV v1: ``GET /v1/<mount>/<path>``, its ``data`` map;
- any other engine (database, aws, ...): ``GET /v1/<mount>/<path>``, its
  ``data`` map. A lease that comes with it is left to expire: the plugin
  neither renews it (no process outlives the fetch) nor revokes it (that
  would end the credentials just handed to the task).

The mount and its kind come from ``vault.kv_mounts`` (longest matching
prefix) or else from Vault's ``sys/internal/ui/mounts/<path>`` preflight,
asked once per mount and process. Vault's own machinery (``sys/``,
``auth/``, ``identity/``, ``cubbyhole/``, and any mount of those types) is
refused: ``auth/token/lookup-self`` would hand the job the plugin's token.

Login (approle, cert, jwt) happens once per process, lazily, on the first
read, under a lock; see ``Vault._ensure_token``. ``close`` revokes a login's
token when ``vault.revoke_token`` is set; a token read from
``vault.token_file`` is the operator's and is never revoked.

Messages name the reference and the store and say what to check; they never
carry a secret value, a token, a secret_id or a JWT. Vault's own ``errors``
text is quoted (cut short, credentials blanked out): it never holds secret
values, and the response ``data`` is never echoed.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import urllib3

from nomad_secrets import debuglog
from nomad_secrets._version import __version__
from nomad_secrets.config import VaultSettings
from nomad_secrets.deadline import Deadline
from nomad_secrets.errors import (
    AccessDenied,
    ConfigError,
    NotFound,
    RequestError,
    StoreError,
    Throttled,
    TimedOut,
    Unreachable,
)
from nomad_secrets.reference import MAX_REFERENCES, Reference
from nomad_secrets.request import JobOptions
from nomad_secrets.shape import Raw

LABEL = "Vault"
OPTIONS = ("version",)
CONNECT_TIMEOUT = 3.0  # a dead address should not eat the whole deadline
REVOKE_TIMEOUT = 1.0  # close() runs after the answer is decided: keep it short
MAX_RESPONSE_BYTES = 4 * 1024 * 1024  # far above any secret; a wrong address cannot fill memory
MAX_ERROR_TEXT = 200
THROTTLE_RETRIES = 2
THROTTLE_BACKOFF = 0.25  # seconds before the first retry, doubled after
THROTTLE_MARGIN = 0.5  # retry only if this much deadline is left after the pause
PREFLIGHT = "sys/internal/ui/mounts/"
# First path segments that are Vault's own API, never a secrets engine.
RESERVED_PREFIXES = ("sys", "auth", "identity", "cubbyhole")
# Mount types that are Vault's machinery (ns_* are Enterprise namespace copies).
SYSTEM_TYPES = frozenset(
    {"system", "token", "identity", "cubbyhole", "ns_system", "ns_token", "ns_identity", "ns_cubbyhole"}
)
LOGIN_HINTS = {
    "approle": "check vault.role_id and vault.secret_id_file, and that the secret_id has not expired"
    " or run out of uses",
    "cert": "check that the cert auth role (vault.role) trusts vault.client_cert",
    "jwt": "check vault.role and the role's bound audiences and claims against the job's workload identity",
}
_ADDRESS = re.compile(r"https?://[^/?#\s]+(/[^?#\s]*)?\Z")
_VERSION = re.compile(r"[1-9][0-9]{0,9}\Z")
_CREDENTIAL = re.compile(r"[\x21-\x7e]+\Z")  # one header-safe word: no space, no newline
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\Z")
_MULTIERROR_ITEM = re.compile(r"^\s*\*\s*(.+)$", re.MULTILINE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True)
class Mount:
    path: str  # as used in API paths, no trailing slash ("secret", "ns1/team/kv")
    type: str  # "kv" or the engine's type
    kv_version: int = 0  # 1 or 2 for "kv", else 0


class Vault:
    label = LABEL

    def __init__(
        self,
        settings: VaultSettings,
        options: JobOptions,
        deadline: Deadline,
    ) -> None:
        """Check the config and read the credentials; no network here.

        For auth_method "jwt", fetch.py has already checked that the workload
        token's claims name the job Nomad says is asking (identity.py).
        """
        self.settings = settings
        self.deadline = deadline
        self.base = _address(settings.address)
        self.method = settings.auth_method
        self.auth_mount = (settings.auth_mount or self.method).strip("/")
        self._headers = {"X-Vault-Request": "true", "User-Agent": f"nomad-secrets/{__version__}"}
        if settings.namespace:
            self._headers["X-Vault-Namespace"] = settings.namespace
        for key in ("ca_cert", "client_cert", "client_key"):
            _check_readable(getattr(settings, key), f"vault.{key}")
        # Strings that must never reach a message, even inside Vault's text.
        self._credentials: list[str] = []
        self._token: str | None = None
        self._login_body: dict[str, str] = {}
        if self.method == "token":
            self._token = self._read_credential(settings.token_file, "vault.token_file", "a Vault token")
        elif self.method == "approle":
            if not settings.role_id:
                raise ConfigError('vault.auth_method = "approle" needs vault.role_id; set it in the config')
            secret_id = self._read_credential(
                settings.secret_id_file, "vault.secret_id_file", "an AppRole secret_id"
            )
            self._credentials.append(settings.role_id)
            self._login_body = {"role_id": settings.role_id, "secret_id": secret_id}
        elif self.method == "cert":
            if not self.base.startswith("https://") or not settings.client_cert:
                raise ConfigError(
                    'vault.auth_method = "cert" needs an https:// vault.address and vault.client_cert'
                    " (and vault.client_key unless the key is in that file); set them in the config"
                )
            if settings.role:
                self._login_body = {"name": settings.role}
        elif self.method == "jwt":
            jwt = options.workload_token
            if not jwt:
                raise RequestError(
                    "this node's Vault login uses the job's workload identity: add an identity block"
                    " (env = true) to the task and set NOMAD_WORKLOAD_TOKEN ="
                    ' "${NOMAD_TOKEN_<identity name>}" in the secret block\'s env'
                )
            self._credentials.append(jwt)
            if not _JWT.match(jwt):
                raise RequestError(
                    "NOMAD_WORKLOAD_TOKEN is not a JWT; set it to"
                    ' "${NOMAD_TOKEN_<identity name>}" (Nomad before 1.11.3 does not interpolate'
                    " the secret block's env)"
                )
            self._login_body = {"jwt": jwt}
            if settings.role:
                self._login_body["role"] = settings.role
        else:
            raise ConfigError(f"vault.auth_method is {self.method!r}; use one of token, approle, cert, jwt")
        self._owned = False  # did a login here make the token (so close may revoke it)?
        self._closed = False
        self._login_failure: BaseException | None = None
        self._state = threading.Lock()  # short sections: _token, _owned, _closed, locks, mounts
        self._login_lock = threading.Lock()  # held for the one login
        self._preflight_locks: dict[str, threading.Lock] = {}
        self._mounts: dict[str, Mount] = {
            mount.strip("/"): Mount(mount.strip("/"), "kv", version)
            for mount, version in settings.kv_mounts.items()
        }
        self._pool = urllib3.PoolManager(
            num_pools=2,
            maxsize=MAX_REFERENCES + 1,  # every reference's thread keeps its connection
            block=False,
            retries=False,
            cert_reqs="CERT_REQUIRED",
            ca_certs=settings.ca_cert,  # None: the system's trust store, as the vault CLI uses
            cert_file=settings.client_cert,
            key_file=settings.client_key,
        )

    # -- the interface -------------------------------------------------------

    def read(self, ref: Reference) -> Raw:
        version = self._version_option(ref)
        locator = _check_locator(ref)
        token = self._ensure_token(ref)
        mount = self._mount_for(ref, locator, token)
        rest = locator[len(mount.path) + 1 :]
        if not rest:
            raise RequestError(
                f"{ref.text!r} ({LABEL}): {mount.path!r} is a mount; name a secret in it, {mount.path}/<path>"
            )
        if version is not None and mount.kv_version != 2:
            kind = "a KV version 1 mount" if mount.type == "kv" else f"a {mount.type!r} engine"
            raise RequestError(
                f"{ref.text!r} ({LABEL}): the option 'version' applies to KV version 2 only;"
                f" {mount.path!r} is {kind}"
            )
        if mount.kv_version == 2:
            return self._read_kv2(ref, token, mount, rest, version)
        return self._read_data(ref, token, locator)

    def probe(self) -> None:
        """For ``nomad-secrets check``: prove the credentials work, reading no secret.

        A login method logs in (``close`` then revokes its token); a token
        from vault.token_file is looked up (auth/token/lookup-self, which
        Vault's default policy grants). Nothing of the answer is kept: it
        holds the token itself.
        """
        api_path = "auth/token/lookup-self"
        ref = Reference(text=api_path, scheme="vault", locator=api_path)
        token = self._ensure_token(ref)
        if self._owned:
            return
        status, body = self._call(ref, "GET", api_path, token=token)
        if status == 200:
            return
        if status == 403:
            if _invalid_token(body):
                raise self._token_rejected(ref)
            raise AccessDenied(
                ref.text,
                LABEL,
                "Vault refused the token's lookup of itself",
                "the token is invalid or expired, or lacks Vault's default policy;"
                " the operator renews the token in vault.token_file",
            )
        raise self._unexpected(ref, status, body)

    def close(self) -> None:
        """Revoke a login's token (if vault.revoke_token); twice is harmless, never raises."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            token = self._token if self._owned else None
        if token is not None:
            self._revoke(token)

    # -- login -----------------------------------------------------------

    def _ensure_token(self, ref: Reference) -> str:
        """The token, logging in on the first call.

        Lazily, not in __init__: __init__ runs in the main thread before
        fetch.py starts its deadline-bounded wait, so a login here counts
        against the same deadline as the reads, and its failure is a
        StoreError naming a reference. One login per process: the first
        reader logs in while the others wait on the lock (at most until the
        deadline), then share its token, or its failure, so an AppRole
        secret_id with limited uses is spent once.
        """
        token = self._token
        if token is not None:
            return token
        if not self._login_lock.acquire(timeout=max(self.deadline.remaining(), 0.0)):
            raise self._timed_out(ref)
        try:
            if self._token is not None:
                return self._token
            if self._login_failure is not None:
                raise self._login_failure
            try:
                token = self._login(ref)
            except BaseException as exc:
                self._login_failure = exc
                raise
            with self._state:
                closed = self._closed
                if not closed:
                    self._token, self._owned = token, True
            if closed:  # the fetch ended while we logged in: do not leave the token behind
                self._revoke(token)
                raise self._timed_out(ref)
            return token
        finally:
            self._login_lock.release()

    def _login(self, ref: Reference) -> str:
        api_path = f"auth/{self.auth_mount}/login"
        where = f"the {self.method} auth method at auth/{self.auth_mount}/"
        started = time.monotonic()
        status, body = self._call(ref, "POST", api_path, token=None, payload=self._login_body)
        seconds = round(time.monotonic() - started, 3)
        debuglog.log("vault-login", method=self.method, mount=self.auth_mount, status=status, seconds=seconds)
        if status in (400, 401, 403):
            raise AccessDenied(
                ref.text, LABEL, f"login with {where} failed{self._said(body)}", LOGIN_HINTS[self.method]
            )
        if status == 404:
            raise StoreError(
                ref.text,
                LABEL,
                f"no login endpoint at {api_path}{self._said(body)}",
                "check vault.auth_mount",
            )
        if status != 200:
            raise self._unexpected(ref, status, body)
        auth = body.get("auth") if body else None
        token = auth.get("client_token") if isinstance(auth, dict) else None
        if not isinstance(token, str) or not _CREDENTIAL.match(token):
            raise StoreError(
                ref.text,
                LABEL,
                f"login with {where} gave no client token",
                "check vault.address and the method",
            )
        self._credentials.append(token)
        return token

    def _revoke(self, token: str) -> None:
        if not self.settings.revoke_token:
            return
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

    # -- mounts ----------------------------------------------------------

    def _mount_for(self, ref: Reference, locator: str, token: str) -> Mount:
        """The mount holding ``locator``: configured, cached, or preflighted.

        Preflights are serialized per first path segment (every mount
        holding a locator starts with it), so concurrent references to one
        mount cost one preflight, and different mounts preflight in parallel.
        """
        found = self._known_mount(locator)
        if found is not None:
            return found
        first = locator.split("/", 1)[0]
        with self._state:
            lock = self._preflight_locks.setdefault(first, threading.Lock())
        if not lock.acquire(timeout=max(self.deadline.remaining(), 0.0)):
            raise self._timed_out(ref)
        try:
            found = self._known_mount(locator)
            if found is None:
                found = self._preflight(ref, locator, token)
                with self._state:
                    self._mounts[found.path] = found
            return found
        finally:
            lock.release()

    def _known_mount(self, locator: str) -> Mount | None:
        with self._state:
            matches = [m for path, m in self._mounts.items() if locator.startswith(path + "/")]
        return max(matches, key=lambda m: len(m.path), default=None)

    def _preflight(self, ref: Reference, locator: str, token: str) -> Mount:
        status, body = self._call(ref, "GET", PREFLIGHT + locator, token=token)
        if status == 403:
            if _invalid_token(body):
                raise self._token_rejected(ref)
            raise AccessDenied(
                ref.text,
                LABEL,
                f"permission denied looking up the mount of {locator!r}{self._in_namespace()}",
                "check that the mount exists; the Vault policy of this token needs some capability"
                " on a path in that mount, or the operator lists it in vault.kv_mounts",
            )
        if status == 404:
            raise NotFound(
                ref.text,
                LABEL,
                f"no such mount or namespace{self._said(body)}",
                "check the mount (the first part of the path) and vault.namespace",
            )
        if status != 200:
            raise self._unexpected(ref, status, body)
        data = body.get("data") if body else None
        if not isinstance(data, dict) or not isinstance(data.get("path"), str) or not data.get("type"):
            raise self._malformed(ref)
        mount_type = str(data["type"])
        mount_path = _mount_in(locator, data["path"].strip("/"))
        if mount_path is None:
            raise self._malformed(ref)
        # Vault reserves these names at the top of every namespace, so in a
        # mount path they mean its own API (auth/approle/role/x/role-id, ...).
        # A KV mount so named can still be read by listing it in vault.kv_mounts.
        if mount_type in SYSTEM_TYPES:
            raise RequestError(
                f"{ref.text!r} ({LABEL}): {mount_path!r} is Vault's {mount_type!r} mount, not a secrets"
                " engine; the plugin reads secrets engines only (KV, database, ...)"
            )
        reserved = sorted(set(mount_path.split("/")) & set(RESERVED_PREFIXES))
        if reserved:
            raise RequestError(
                f"{ref.text!r} ({LABEL}): the mount {mount_path!r} is named like Vault's own API"
                f" ({reserved[0]}/), so the plugin does not read it; if it is a KV mount, the"
                " operator lists it in vault.kv_mounts"
            )
        version = 0
        if mount_type in ("kv", "generic"):
            options = data.get("options")
            raw = options.get("version") if isinstance(options, dict) else None
            version = 2 if str(raw) == "2" else 1
            mount_type = "kv"
        debuglog.log("vault-mount", mount=mount_path, type=mount_type, kv_version=version)
        return Mount(mount_path, mount_type, version)

    # -- reads -----------------------------------------------------------

    def _read_kv2(self, ref: Reference, token: str, mount: Mount, rest: str, version: str | None) -> Raw:
        api_path = f"{mount.path}/data/{rest}"
        query = {"version": version} if version is not None else None
        status, body = self._call(ref, "GET", api_path, token=token, query=query)
        if status == 404:
            data = body.get("data") if body else None
            meta = data.get("metadata") if isinstance(data, dict) else None
            if isinstance(meta, dict) and (meta.get("destroyed") is True or meta.get("deletion_time")):
                which = f"version {meta.get('version')}" if meta.get("version") else "this version"
                done = "destroyed" if meta.get("destroyed") is True else "deleted"
                raise NotFound(
                    ref.text,
                    LABEL,
                    f"{which} of the secret was {done}",
                    "pin another version with ?version=N"
                    + (", or undelete it (vault kv undelete)" if done == "deleted" else ""),
                )
        data = self._data(ref, status, body, api_path, version=version)
        inner = data.get("data")
        if not isinstance(inner, dict):
            raise self._malformed(ref)
        return inner

    def _read_data(self, ref: Reference, token: str, api_path: str) -> Raw:
        status, body = self._call(ref, "GET", api_path, token=token)
        return self._data(ref, status, body, api_path)

    def _data(
        self,
        ref: Reference,
        status: int,
        body: dict[str, Any] | None,
        api_path: str,
        *,
        version: str | None = None,
    ) -> dict[str, Any]:
        """The ``data`` map of a read's answer, or the error its status means."""
        if status == 200:
            data = body.get("data") if body else None
            if not isinstance(data, dict):
                raise StoreError(
                    ref.text,
                    LABEL,
                    "Vault answered with no data",
                    "check that the path reads a secret (some engines need a write, such as pki/issue)",
                )
            return data
        if status == 404:
            pinned = f" (version {version})" if version is not None else ""
            raise NotFound(ref.text, LABEL, f"not found at {api_path}{pinned}", "check the mount and path")
        if status == 403:
            if _invalid_token(body):
                raise self._token_rejected(ref)
            raise AccessDenied(
                ref.text,
                LABEL,
                f"permission denied{self._in_namespace()}",
                f"the Vault policy of this token needs read on {api_path!r}",
            )
        if status == 400:
            raise StoreError(
                ref.text, LABEL, f"Vault refused the read{self._said(body)}", "check the reference"
            )
        raise self._unexpected(ref, status, body)

    # -- HTTP ------------------------------------------------------------

    def _call(
        self,
        ref: Reference,
        method: str,
        api_path: str,
        *,
        token: str | None,
        payload: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, Any] | None]:
        """One API call: (status, JSON object or None), retrying a 429.

        Transport failures, 429 (after retries), 503 and other 5xx answers
        raise here; every other status is the caller's to interpret.
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
        attempt = 0
        while True:
            if self.deadline.expired():
                raise self._timed_out(ref)
            status, retry_after, raw = self._send(ref, method, url, headers, data)
            if status != 429 or attempt >= THROTTLE_RETRIES:
                break
            pause = retry_after if retry_after is not None else THROTTLE_BACKOFF * 2**attempt
            if pause + THROTTLE_MARGIN > self.deadline.remaining():
                break
            time.sleep(pause)
            attempt += 1
        body = _json_object(raw)
        if status == 429:
            raise Throttled(
                ref.text,
                LABEL,
                f"Vault rate-limited the request{self._said(body)}",
                "retry later; the operator can raise Vault's rate limit quota",
            )
        if status == 503:
            raise Unreachable(
                ref.text,
                LABEL,
                f"Vault is sealed or unavailable{self._said(body)}",
                "check the Vault cluster's status (vault status) and vault.address",
            )
        if status >= 500:
            raise StoreError(
                ref.text,
                LABEL,
                f"Vault failed with HTTP {status}{self._said(body)}",
                "see Vault's server log",
            )
        if 300 <= status < 400:
            raise StoreError(
                ref.text,
                LABEL,
                f"Vault answered with a redirect (HTTP {status})",
                "point vault.address at the active node or its load balancer",
            )
        if 200 <= status < 300 and raw and body is None:
            raise self._malformed(ref)
        return status, body

    def _send(
        self, ref: Reference, method: str, url: str, headers: dict[str, str], data: bytes | None
    ) -> tuple[int, float | None, bytes]:
        """(status, Retry-After seconds, body) of one request; transport errors mapped."""
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
            raise self._timed_out(ref) from None
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
        return response.status, _retry_after(response.headers.get("Retry-After")), raw

    # -- messages ----------------------------------------------------------

    def _said(self, body: dict[str, Any] | None) -> str:
        """`` (Vault said: ...)`` from an answer's ``errors``, or nothing.

        Vault's error texts hold no secret values; the credentials we sent
        are blanked out anyway, in case a server quotes its input.
        """
        errors = body.get("errors") if body else None
        if not isinstance(errors, list):
            return ""
        items: list[str] = []
        for error in errors:
            if isinstance(error, str):
                listed = _MULTIERROR_ITEM.findall(error)  # go-multierror: "1 error occurred:\n\t* x\n\n"
                items += listed or [error]
        text = _CONTROL.sub(" ", "; ".join(item.strip() for item in items)).strip()
        for secret in self._credentials:
            text = text.replace(secret, "<redacted>")
        if len(text) > MAX_ERROR_TEXT:
            text = text[:MAX_ERROR_TEXT] + "..."
        return f" (Vault said: {text})" if text else ""

    def _in_namespace(self) -> str:
        return f" in namespace {self.settings.namespace!r}" if self.settings.namespace else ""

    def _token_rejected(self, ref: Reference) -> AccessDenied:
        if self.method == "token":
            hint = "the operator renews the token in vault.token_file"
        else:
            hint = f"the token from the {self.method} login expired or was revoked; check its TTL"
        return AccessDenied(ref.text, LABEL, "Vault rejected the plugin's token as invalid or expired", hint)

    def _timed_out(self, ref: Reference) -> TimedOut:
        return TimedOut(
            ref.text,
            LABEL,
            f"no answer from Vault within the plugin's {self.deadline.seconds:g} s deadline",
            "check that vault.address is reachable from the node; the operator sets plugin.deadline_seconds",
        )

    def _unexpected(self, ref: Reference, status: int, body: dict[str, Any] | None) -> StoreError:
        return StoreError(
            ref.text,
            LABEL,
            f"unexpected answer from Vault (HTTP {status}){self._said(body)}",
            "see Vault's log",
        )

    def _malformed(self, ref: Reference) -> StoreError:
        return StoreError(
            ref.text,
            LABEL,
            "Vault's answer is not in the expected shape",
            "check that vault.address points at Vault or OpenBao",
        )

    # -- config ----------------------------------------------------------

    def _read_credential(self, path: str | None, key: str, what: str) -> str:
        if not path:
            raise ConfigError(
                f"vault.auth_method = {self.method!r} needs {key}: set it to a file holding {what}"
            )
        try:
            with open(path, "rb") as f:
                raw = f.read(64 * 1024)
        except OSError as exc:
            raise ConfigError(f"cannot read {key} {path}: {exc.strerror}") from None
        text = raw.decode("utf-8", "replace").strip()
        if not text or not _CREDENTIAL.match(text):
            raise ConfigError(f"{key} {path} does not hold {what} (one line of printable ASCII)")
        self._credentials.append(text)
        return text

    def _version_option(self, ref: Reference) -> str | None:
        version = ref.options_for(LABEL, OPTIONS).get("version")
        if version is not None and not _VERSION.match(version):
            raise RequestError(
                f"{ref.text!r} ({LABEL}): the option version must be a positive integer, such as ?version=3"
            )
        return version


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


def _check_locator(ref: Reference) -> str:
    """``mount/path`` without empty, ``.`` or ``..`` segments, and not Vault's own API."""
    segments = ref.locator.split("/")
    if len(segments) < 2 or any(s in ("", ".", "..") for s in segments):
        raise RequestError(
            f"{ref.text!r} ({LABEL}): write the path as <mount>/<path>, without empty, '.' or '..' parts"
        )
    if segments[0] in RESERVED_PREFIXES:
        raise RequestError(
            f"{ref.text!r} ({LABEL}): {segments[0]}/ is Vault's own API, not a secrets engine;"
            " the plugin reads secrets engines only (KV, database, ...)"
        )
    return ref.locator


def _mount_in(locator: str, mount: str) -> str | None:
    """Where the preflight's mount path sits in ``locator``: at its start,
    or after a namespace prefix written in the path (``ns1/secret/x``)."""
    start = 0
    while True:
        if (locator + "/")[start:].startswith(mount + "/"):
            return locator[: start + len(mount)]
        start = locator.find("/", start) + 1
        if start == 0:
            return None


def _invalid_token(body: dict[str, Any] | None) -> bool:
    errors = body.get("errors") if body else None
    return isinstance(errors, list) and any(isinstance(e, str) and "invalid token" in e for e in errors)


def _json_object(raw: bytes) -> dict[str, Any] | None:
    if not raw.strip():
        return None
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return parsed if isinstance(parsed, dict) else None


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
