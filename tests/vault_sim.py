"""In-process simulator of the HashiCorp Vault HTTP API.

THIS IS A TEST DOUBLE, NOT VAULT.  It exists because no Vault binary can be
installed in the test environment; it lets the plugin's Vault backend (and
real clients such as ``hvac``) be exercised against Vault's documented wire
format.  It stores everything in memory, has no storage, no real crypto
barrier, no real token store and implements only a small part of Vault.
Faithfulness to the request/response envelopes, status codes and error
bodies of the endpoints it does implement is the priority; breadth is not.

Parts of the Vault documentation it follows
-------------------------------------------
* "HTTP API" overview (developer.hashicorp.com/vault/api-docs): ``/v1/``
  prefix, ``X-Vault-Token`` and ``Authorization: Bearer`` headers,
  ``X-Vault-Namespace`` header and the namespace path-prefix form, the
  response envelope (request_id, lease_id, renewable, lease_duration, data,
  wrap_info, warnings, auth, mount_type), ``{"errors": [...]}`` error bodies,
  HTTP status codes, the ``LIST`` verb and ``GET ...?list=true``.
* "KV secrets engine - version 1" API: ``/v1/<mount>/<path>`` read, list,
  create/update (204), delete (204).
* "KV secrets engine - version 2" API: ``data/`` (read with ``?version=N``,
  create/update with ``options.cas``, JSON merge ``PATCH``, delete latest),
  ``metadata/`` (read, list, write, delete), ``delete/``, ``undelete/``,
  ``destroy/`` and ``config``.
* ``sys/internal/ui/mounts/<path>`` (the preflight call the Vault CLI makes),
  ``sys/mounts``, ``sys/auth``, ``sys/health``, ``sys/seal-status``,
  ``sys/init``, ``sys/leases/renew``, ``sys/leases/revoke``,
  ``sys/capabilities-self``.
* Token auth method: ``auth/token/lookup-self``, ``auth/token/renew-self``,
  ``auth/token/revoke-self``.
* AppRole auth method: ``auth/<mount>/login``.
* JWT/OIDC auth method: ``auth/<mount>/login`` with a role and a JWT that is
  verified against a static JWKS (RS256/384/512, PS256/384/512,
  ES256/384/512, EdDSA), ``iss``, ``aud``, ``sub``, ``exp``/``nbf``/``iat``
  (with Vault's leeway rules) and ``bound_claims`` (string or glob).
* TLS certificates auth method: ``auth/<mount>/login`` reading the TLS peer
  certificate.
* "Policies" concept page: path rules with a trailing ``*`` glob and ``+``
  segment wildcards, the priority rules between them, ``deny``, and the
  ``default`` policy's grants for the token self-service endpoints.

Error texts were checked against Vault's source (vault core, the kv, approle,
jwt and cert plugins and hashicorp/cap); the comments next to each constant say
what was chosen where Vault versions differ.

Deliberate simplifications (read these before trusting a test result)
----------------------------------------------------------------------
* Policies are given inline as one ``{path glob: [capabilities]}`` map per
  token/role instead of named policies; ``{"*": ["root"]}`` (or
  :meth:`VaultSimulator.add_root_token`) makes a root token.  Named policies
  only appear in responses (``policies``/``token_policies``).
* A token only works in the namespace it was created in.  (Real Vault also
  lets a parent-namespace token act in child namespaces, with policy paths
  prefixed by the child namespace path.)  Using a token in another namespace
  is answered as a policy denial.
* JWT "templated policies": instead of Vault's identity templating
  (``{{identity.entity.aliases.<accessor>.metadata.<key>}}``) a policy path
  may contain ``{{claims.<name>}}``, filled from the JWT's claims at login.
  A rule whose placeholder cannot be filled (claim absent or not a scalar) is
  dropped, as Vault does with unsatisfiable templated paths.
* The JWKS is given directly (Vault fetches it from ``jwks_url`` or takes
  ``jwt_validation_pubkeys``/``jwks_pairs``); signature failures use the text
  of the JWKS code path (go-oidc's "failed to verify id token signature").
* Cert auth: a configured certificate matches the client certificate when it
  is the same certificate or directly issued it (no intermediate chains), and
  the leaf must be within its validity period.  Python's TLS stack verifies a
  presented client certificate during the handshake (Vault's Go listener only
  requests it), so the server ``SSLContext`` must trust every client CA that
  a test wants to reach the login handler (e.g. a "rogue" CA for the negative
  case); use ``ssl.CERT_OPTIONAL`` so that clients without a certificate get
  the login handler's own error.
* Leases exist only for :meth:`VaultSimulator.enable_engine` secrets;
  nothing is revoked automatically when a lease or token expires.
* No response wrapping, no sudo/root-path checks, no control groups, no
  Sentinel, no identity store, no audit devices, no storage/raft.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fnmatch
import json
import re
import secrets
import socket
import ssl
import string
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import ExtensionOID, NameOID

__all__ = [
    "ERR_INVALID_TOKEN",
    "ERR_PERMISSION_DENIED",
    "ERR_POLICY_DENIED",
    "ERR_SEALED",
    "JwtRole",
    "Policies",
    "RecordedRequest",
    "Responder",
    "VaultSimulator",
    "kv2_invalid_path_warning",
]

#: Policy rules: Vault policy path (``*`` trailing glob, ``+`` segment
#: wildcard, ``{{claims.x}}`` for JWT logins) -> capabilities.
Policies = dict[str, list[str]]
#: Generic engine callback: sub-path below the mount -> ``data`` map, or None for 404.
Responder = Callable[[str], dict[str, Any] | None]

# --------------------------------------------------------------------------
# Error texts
# --------------------------------------------------------------------------

#: Missing token.  Current Vault's fetchACLTokenEntryAndEntity returns a bare
#: logical.ErrPermissionDenied when no token is sent -> 403 with this text.
#: (Vault <= 1.1x answered 400 "missing client token"; we follow current Vault.)
ERR_PERMISSION_DENIED = "permission denied"
#: Policy denial.  CheckToken wraps ErrPermissionDenied in a go-multierror,
#: whose Error() text is exactly this.
ERR_POLICY_DENIED = "1 error occurred:\n\t* permission denied\n\n"
#: Unknown, revoked or expired token.  Vault >= 1.15 joins ErrPermissionDenied
#: and ErrInvalidToken in a multierror; older releases sent just
#: "permission denied".  Set ``VaultSimulator.invalid_token_errors`` to
#: ``["permission denied"]`` to simulate an older server.
ERR_INVALID_TOKEN = "2 errors occurred:\n\t* permission denied\n\t* invalid token\n\n"
#: consts.ErrSealed, answered with 503.
ERR_SEALED = "Vault is sealed"
#: logical.ErrUnsupportedPath / ErrUnsupportedOperation as they reach the
#: client through handleRequest's multierror (404 / 405).
ERR_UNSUPPORTED_PATH = "1 error occurred:\n\t* unsupported path\n\n"
ERR_UNSUPPORTED_OPERATION = "1 error occurred:\n\t* unsupported operation\n\n"
#: approle path_login.go, for an unknown role_id and for a wrong secret_id.
ERR_APPROLE_INVALID = "invalid role or secret ID"
#: cert path_login.go verifyCredentials.
ERR_CERT_INVALID = "invalid certificate or no client certificate supplied"
ERR_CERT_NO_TLS = "tls connection required"
ERR_CERT_MISSING = "client certificate must be supplied"


def kv2_invalid_path_warning(subcommand: str) -> str:
    """The warning the KV v2 plugin returns (with 404) for a path that lacks
    ``data/``/``metadata/``; ``subcommand`` is get, put, list or delete."""
    return (
        "Invalid path for a versioned K/V secrets engine. See the API docs for the "
        "appropriate API endpoints to use. If using the Vault CLI, use "
        f"'vault kv {subcommand}' for this operation."
    )


# --------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------

SIM_VAULT_VERSION = "1.15.6"
#: KV v1 (passthrough) read: the mount's default lease TTL, 768h.
KV1_LEASE_DURATION = 2764800
#: KV v2 keeps 10 versions when neither the mount nor the key says otherwise.
KV2_DEFAULT_MAX_VERSIONS = 10
#: Subset of Vault's built-in "default" policy that matters here; every
#: non-root token gets it merged in (Vault attaches "default" by default).
DEFAULT_POLICY_RULES: dict[str, list[str]] = {
    "auth/token/lookup-self": ["read"],
    "auth/token/renew-self": ["update"],
    "auth/token/revoke-self": ["update"],
    "sys/capabilities-self": ["update"],
    "sys/renew": ["update"],
    "sys/leases/renew": ["update"],
    "sys/leases/lookup": ["update"],
    "sys/internal/ui/resultant-acl": ["read"],
    "cubbyhole/*": ["create", "read", "update", "delete", "list"],
}
_BASE62 = string.ascii_letters + string.digits
_JWT_ALGS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


def _rand(n: int = 24) -> str:
    return "".join(secrets.choice(_BASE62) for _ in range(n))


def _rfc3339(ts: float) -> str:
    """RFC 3339 with fractional seconds, trailing zeros trimmed (Go's RFC3339Nano)."""
    dt = datetime.fromtimestamp(ts, tz=timezone.utc)
    frac = f"{dt.microsecond:06d}".rstrip("0")
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{frac}Z" if frac else f"{base}Z"


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(h|m|s|ms)")


def _parse_duration(value: Any) -> int | None:
    """Seconds from an int or a Go-style duration string ("90", "1h30m", "20s")."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        pos, total = 0, 0.0
        for m in _DURATION_RE.finditer(text):
            if m.start() != pos:
                return None
            pos = m.end()
            unit = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}[m.group(2)]
            total += float(m.group(1)) * unit
        if pos == len(text) and text:
            return int(total)
    return None


def _envelope(
    data: dict[str, Any] | None = None,
    *,
    lease_id: str = "",
    renewable: bool = False,
    lease_duration: int = 0,
    warnings: list[str] | None = None,
    auth: dict[str, Any] | None = None,
    mount_type: str = "",
) -> dict[str, Any]:
    """logical.HTTPResponse, field for field and in Vault's order."""
    return {
        "request_id": str(uuid.uuid4()),
        "lease_id": lease_id,
        "renewable": renewable,
        "lease_duration": lease_duration,
        "data": data,
        "wrap_info": None,
        "warnings": warnings,
        "auth": auth,
        "mount_type": mount_type,
    }


# --------------------------------------------------------------------------
# Public records
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the simulator received it (recorded before answering)."""

    method: str
    #: URL path as sent, percent-decoded, without the query (e.g. "/v1/secret/data/app").
    path: str
    #: Query parameters (last value wins).
    query: dict[str, str]
    #: Request headers with lower-cased names.
    headers: dict[str, str]
    #: Parsed JSON body, or None when there was no (valid JSON) body.
    body: Any
    #: Effective namespace (header plus path prefix), "" for the root namespace.
    namespace: str
    #: Namespace-relative Vault path without "/v1/" (e.g. "secret/data/app").
    api_path: str
    raw_body: bytes = b""

    @property
    def token(self) -> str | None:
        """The client token sent (X-Vault-Token, else Authorization: Bearer)."""
        tok = self.headers.get("x-vault-token")
        if tok:
            return tok
        authz = self.headers.get("authorization", "")
        if authz.lower().startswith("bearer "):
            return authz[7:].strip() or None
        return None


@dataclass
class JwtRole:
    """A role of a simulated JWT auth mount (subset of Vault's role fields)."""

    #: Claim -> required value or list of accepted values (JSON pointer keys
    #: such as "/nested/claim" are supported, as in Vault).
    bound_claims: dict[str, Any] = field(default_factory=dict)
    #: Claim used as the alias/user name; must be a string claim.
    user_claim: str = "sub"
    #: Policy rules granted to the issued token; may use "{{claims.<name>}}".
    policies: Policies = field(default_factory=dict)
    token_ttl: int = 3600
    #: Overrides the mount-level ``bound_audiences`` when not None.
    bound_audiences: list[str] | None = None
    bound_subject: str = ""
    #: "string" (exact) or "glob" matching of bound_claims values.
    bound_claims_type: str = "string"
    #: Policy names reported in responses; default ["default", <role name>].
    policy_names: list[str] | None = None
    #: Leeways in seconds with hashicorp/cap semantics: 0 = default
    #: (60/150/150), negative = none.
    clock_skew_leeway: int = 60
    expiration_leeway: int = 150
    not_before_leeway: int = 150
    role_type: str = "jwt"


# --------------------------------------------------------------------------
# ACL evaluation (vault/acl.go semantics)
# --------------------------------------------------------------------------


class _Acl:
    """Evaluates one merged set of policy rules the way vault/acl.go does.

    Lookup order: exact rule; for LIST also the exact rule without the
    trailing slash; otherwise the best of (longest ``*`` prefix rule, matching
    ``+`` rules) by Vault's priority: later first wildcard/glob wins, then
    non-prefix over prefix, then fewer ``+`` segments, then longer path.
    Capabilities of identical paths are unioned; ``deny`` anywhere in the
    winning rule denies everything.
    """

    def __init__(self, rules: Mapping[str, Sequence[str]]) -> None:
        self.root = False
        self.exact: dict[str, set[str]] = {}
        self.prefix: dict[str, set[str]] = {}
        self.wildcard: dict[str, set[str]] = {}
        for raw_path, caps in rules.items():
            capset = {str(c).lower() for c in caps}
            if "root" in capset:
                self.root = True
            path = raw_path.lstrip("/")
            if "+" in path:
                self.wildcard.setdefault(path, set()).update(capset)
            elif path.endswith("*"):
                self.prefix.setdefault(path[:-1], set()).update(capset)
            else:
                self.exact.setdefault(path, set()).update(capset)

    def capabilities(self, path: str, *, is_list: bool = False) -> set[str]:
        """The winning rule's capabilities for ``path`` (empty set if none)."""
        if self.root:
            return {"root"}
        if path in self.exact:
            return set(self.exact[path])
        if is_list and path.endswith("/") and path[:-1] in self.exact:
            return set(self.exact[path[:-1]])
        found = self._non_exact(path, bare_mount=False)
        return set(found) if found is not None else set()

    def allows(self, path: str, capability: str, *, is_list: bool = False) -> bool:
        if self.root:
            return True
        caps = self.capabilities(path, is_list=is_list)
        return "deny" not in caps and capability in caps

    def _non_exact(self, path: str, *, bare_mount: bool) -> set[str] | None:
        # (first wildcard/glob index, is non-prefix, -wildcards, len(path)) -> caps
        candidates: list[tuple[tuple[int, bool, int, int], set[str]]] = []
        best: str | None = None
        for pre in self.prefix:
            if path.startswith(pre) and (best is None or len(pre) > len(best)):
                best = pre
        if best is not None:
            candidates.append(((len(best), False, 0, len(best)), self.prefix[best]))
        path_parts = path.split("/")
        for full, caps in self.wildcard.items():
            is_prefix = full.endswith("*")
            cur = full[:-1] if is_prefix else full
            acl_parts = cur.split("/")
            if not bare_mount and len(path_parts) < len(acl_parts):
                continue
            if not bare_mount and not is_prefix and len(acl_parts) != len(path_parts):
                continue
            wildcards = 0
            matched = True
            for i, part in enumerate(acl_parts):
                if i >= len(path_parts):
                    break  # bare mount check: rule reaches below the mount path
                if part == "+":
                    wildcards += 1
                    continue
                last_acl = i == len(acl_parts) - 1
                if part == path_parts[i] or (is_prefix and last_acl and path_parts[i].startswith(part)):
                    continue
                if bare_mount and i == len(path_parts) - 1 and path_parts[i] == "":
                    continue  # "secret/" against "secret/+/x": the rule reaches below
                matched = False
                break
            if matched:
                candidates.append(((full.index("+"), not is_prefix, -wildcards, len(cur)), caps))
        if not candidates:
            return None
        candidates.sort(key=lambda c: c[0])
        return candidates[-1][1]

    def has_mount_access(self, mount_path: str) -> bool:
        """vault/logical_system.go hasMountAccess: any non-deny grant on the
        mount path itself or on any rule path below it."""
        if self.root:
            return True
        caps = self.capabilities(mount_path)
        if caps and "deny" not in caps:
            return True
        for table in (self.exact, self.prefix):
            for rule_path, rule_caps in table.items():
                if rule_path.startswith(mount_path) and rule_caps and "deny" not in rule_caps:
                    return True
        found = self._non_exact(mount_path, bare_mount=True)
        return bool(found) and found is not None and "deny" not in found


# --------------------------------------------------------------------------
# Internal state
# --------------------------------------------------------------------------


@dataclass
class _Token:
    id: str
    accessor: str
    namespace: str
    acl: _Acl
    policy_names: list[str]
    ttl: int  # creation TTL in seconds; 0 = never expires
    created: float
    expires: float | None
    renewable: bool
    display_name: str
    meta: dict[str, str] | None
    path: str
    orphan: bool
    entity_id: str

    def valid(self, now: float) -> bool:
        return self.expires is None or self.expires > now


@dataclass
class _KvVersion:
    data: dict[str, Any] | None
    created: float
    deletion_time: float | None = None
    destroyed: bool = False

    def metadata(self, version: int, custom: dict[str, str] | None) -> dict[str, Any]:
        return {
            "created_time": _rfc3339(self.created),
            "custom_metadata": custom,
            "deletion_time": _rfc3339(self.deletion_time) if self.deletion_time is not None else "",
            "destroyed": self.destroyed,
            "version": version,
        }

    def readable(self, now: float) -> bool:
        return not self.destroyed and (self.deletion_time is None or self.deletion_time > now)


@dataclass
class _KvSecret:
    created: float
    updated: float
    versions: dict[int, _KvVersion] = field(default_factory=dict)
    current: int = 0
    oldest: int = 0
    max_versions: int = 0
    cas_required: bool = False
    delete_version_after: str = "0s"
    custom_metadata: dict[str, str] | None = None


@dataclass
class _Lease:
    id: str
    namespace: str
    ttl: int
    renewable: bool
    expires: float
    revoked: bool = False


@dataclass
class _Mount:
    path: str  # router path with trailing slash: "secret/", "auth/approle/"
    type: str
    description: str
    accessor: str
    uuid: str
    options: dict[str, str] | None = None
    kv_version: int = 0  # 0 = not a KV mount
    kv1: dict[str, dict[str, Any]] = field(default_factory=dict)
    kv2: dict[str, _KvSecret] = field(default_factory=dict)
    kv2_config: dict[str, Any] = field(
        default_factory=lambda: {"cas_required": False, "delete_version_after": "0s", "max_versions": 0}
    )
    responder: Responder | None = None
    lease_duration: int = 3600
    renewable: bool = True
    builtin: bool = False
    # auth mounts
    approle: dict[str, _AppRole] = field(default_factory=dict)
    jwt: _JwtConfig | None = None
    certs: dict[str, _CertEntry] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        """mountInfo() as sys/mounts and sys/internal/ui/mounts render it."""
        running = "v0.16.1+builtin" if self.type == "kv" else f"v{SIM_VAULT_VERSION}+builtin.vault"
        return {
            "accessor": self.accessor,
            "config": {"default_lease_ttl": 0, "force_no_cache": False, "max_lease_ttl": 0},
            "deprecation_status": "supported",
            "description": self.description,
            "external_entropy_access": False,
            "local": self.type in ("cubbyhole",),
            "options": dict(self.options) if self.options is not None else None,
            "plugin_version": "",
            "running_plugin_version": running,
            "running_sha256": "",
            "seal_wrap": False,
            "type": self.type,
            "uuid": self.uuid,
        }


@dataclass
class _AppRole:
    name: str
    role_id: str
    secret_id: str | None
    rules: Policies
    policy_names: list[str]
    token_ttl: int


@dataclass
class _JwtConfig:
    keys: list[dict[str, Any]]
    bound_issuer: str | None
    bound_audiences: list[str]
    roles: dict[str, JwtRole]
    default_role: str | None
    supported_algs: list[str]


@dataclass
class _CertEntry:
    name: str
    certs: list[x509.Certificate]
    rules: Policies
    policy_names: list[str]
    token_ttl: int


@dataclass
class _Namespace:
    mounts: dict[str, _Mount] = field(default_factory=dict)


@dataclass
class _Resp:
    status: int
    body: Any = None


@dataclass
class _Ctx:
    method: str
    op: str | None  # read, list, update, delete, patch, head; None = unsupported verb
    namespace: str
    namespace_exists: bool
    path: str  # namespace-relative api path (LIST paths end with "/")
    query: dict[str, str]
    body: Any
    body_error: str | None
    token: str | None
    tls: bool
    peer_cert: bytes | None


def _err(status: int, *messages: str) -> _Resp:
    return _Resp(status, {"errors": list(messages)})


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64url_int(text: Any) -> int:
    if not isinstance(text, str):
        raise ValueError("not a base64url string")
    return int.from_bytes(_b64url_decode(text), "big")


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch (what KV v2 PATCH applies)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _hex_colon(data: bytes | None) -> str:
    return ":".join(f"{b:02x}" for b in data) if data else ""


# --------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, sim: VaultSimulator, tls: ssl.SSLContext | None) -> None:
        self.sim = sim
        self.tls_context = tls
        self._conn_lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        super().__init__(("127.0.0.1", 0), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Runs on the per-connection thread, so a slow TLS handshake never
        # blocks the accept loop.
        sock = cast(socket.socket, request)
        wrapped = False
        if self.tls_context is not None:
            try:
                sock.settimeout(10)
                sock = self.tls_context.wrap_socket(sock, server_side=True)
                sock.settimeout(None)
                wrapped = True
            except (OSError, ValueError):
                return
        with self._conn_lock:
            self._conns.add(sock)
        try:
            _Handler(sock, client_address, self)
        finally:
            with self._conn_lock:
                self._conns.discard(sock)
            if wrapped:
                with contextlib.suppress(OSError):
                    sock.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # connection resets from clients that gave up are expected

    def close_connections(self) -> None:
        with self._conn_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "vault-sim"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # Vault's Go net/http sets TCP_NODELAY on every connection; without it
        # http.server's separate header and body writes meet the client's
        # delayed ACK and every reused keep-alive connection waits ~40 ms.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _dispatch(self) -> None:
        cast(_Server, self.server).sim._serve(self)

    do_GET = _dispatch
    do_HEAD = _dispatch
    do_POST = _dispatch
    do_PUT = _dispatch
    do_PATCH = _dispatch
    do_DELETE = _dispatch
    do_LIST = _dispatch
    do_OPTIONS = _dispatch

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def peer_certificate(self) -> bytes | None:
        conn = self.connection
        if isinstance(conn, ssl.SSLSocket):
            try:
                return conn.getpeercert(binary_form=True)
            except (OSError, ValueError):
                return None
        return None

    def write_response(self, resp: _Resp) -> None:
        body = b""
        if resp.body is not None and self.command != "HEAD":
            body = (json.dumps(resp.body) + "\n").encode("utf-8")
        self.send_response(resp.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        if resp.status != 204:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)


# --------------------------------------------------------------------------
# The simulator
# --------------------------------------------------------------------------


class VaultSimulator:
    """A Vault HTTP API test double on 127.0.0.1 (see the module docstring).

    Typical use::

        with VaultSimulator() as vault:
            vault.enable_kv("secret", 2)
            vault.put_kv("secret", "app/db", {"password": "s3cret"})
            vault.add_token("t1", {"secret/data/app/*": ["read"]})
            ... point the client at vault.address ...
            assert vault.requests[-1].token == "t1"

    Attributes that tests may flip at any time: ``sealed``, ``latency``
    (seconds slept before answering each request), ``hang`` (accept and
    record requests but never answer until :meth:`stop`) and
    ``invalid_token_errors``.  ``requests`` and ``revoked_tokens`` /
    ``revoked_leases`` are append-only logs; ``errors`` collects exceptions
    raised inside the simulator (e.g. by a responder), answered with 500.
    """

    def __init__(self, *, tls: ssl.SSLContext | None = None) -> None:
        self._tls = tls
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._namespaces: dict[str, _Namespace] = {}
        self._tokens: dict[str, _Token] = {}
        self._leases: dict[str, _Lease] = {}
        self.sealed = False
        self.latency = 0.0
        self.hang = False
        self.invalid_token_errors: list[str] = [ERR_INVALID_TOKEN]
        self.requests: list[RecordedRequest] = []
        self.revoked_tokens: list[str] = []
        self.revoked_leases: list[str] = []
        self.errors: list[BaseException] = []
        self._namespace("")

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Bind 127.0.0.1 on a free port and serve on a daemon thread."""
        if self._server is not None:
            raise RuntimeError("VaultSimulator already started")
        self._stop_event = threading.Event()
        server = _Server(self, self._tls)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="vault-sim", daemon=True
        )
        self._server, self._thread = server, thread
        thread.start()

    def stop(self) -> None:
        """Stop serving; releases hanging/sleeping handlers and closes
        keep-alive connections.  Idempotent."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stop_event.set()
        server.shutdown()
        server.server_close()
        server.close_connections()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> VaultSimulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """Base URL, e.g. "http://127.0.0.1:54321" ("https" when tls is given)."""
        if self._server is None:
            raise RuntimeError("VaultSimulator not started")
        port = self._server.server_address[1]
        return f"{'https' if self._tls is not None else 'http'}://127.0.0.1:{port}"

    # -- state helpers -----------------------------------------------------

    def _namespace(self, name: str) -> _Namespace:
        key = name.strip("/")
        with self._lock:
            ns = self._namespaces.get(key)
            if ns is None:
                ns = _Namespace()
                for path, mtype, desc in (
                    ("sys/", "system", "system endpoints used for control, policy and debugging"),
                    ("cubbyhole/", "cubbyhole", "per-token private secret storage"),
                    ("identity/", "identity", "identity store"),
                    ("auth/token/", "token", "token based credentials"),
                ):
                    ns.mounts[path] = _Mount(
                        path=path,
                        type=mtype,
                        description=desc,
                        accessor=f"{mtype}_{_rand(8).lower()}",
                        uuid=str(uuid.uuid4()),
                        builtin=True,
                    )
                self._namespaces[key] = ns
            return ns

    def create_namespace(self, namespace: str) -> None:
        """Make a namespace exist (enable_* and add_token also create them)."""
        self._namespace(namespace)

    def _add_mount(self, namespace: str, mount: _Mount) -> None:
        with self._lock:
            self._namespace(namespace).mounts[mount.path] = mount

    def _get_mount(self, namespace: str, mount: str) -> _Mount:
        key = mount.strip("/") + "/"
        with self._lock:
            ns = self._namespaces.get(namespace.strip("/"))
            found = ns.mounts.get(key) if ns is not None else None
        if found is None:
            raise KeyError(f"no mount {key!r} in namespace {namespace!r}")
        return found

    def enable_kv(
        self,
        mount: str,
        version: int,
        *,
        namespace: str = "",
        description: str = "key/value secret storage",
        explicit_version: bool = True,
    ) -> None:
        """Mount a KV engine.  ``explicit_version=False`` on a v1 mount makes
        its mount options null, as after a plain ``vault secrets enable kv``."""
        if version not in (1, 2):
            raise ValueError("KV version must be 1 or 2")
        options: dict[str, str] | None = {"version": str(version)}
        if version == 1 and not explicit_version:
            options = None
        self._add_mount(
            namespace,
            _Mount(
                path=mount.strip("/") + "/",
                type="kv",
                description=description,
                accessor=f"kv_{_rand(8).lower()}",
                uuid=str(uuid.uuid4()),
                options=options,
                kv_version=version,
            ),
        )

    def put_kv(self, mount: str, path: str, data: dict[str, Any], *, namespace: str = "") -> int:
        """Write a secret; returns the new version (KV v2) or 0 (KV v1)."""
        m = self._get_mount(namespace, mount)
        key = path.strip("/")
        with self._lock:
            if m.kv_version == 1:
                m.kv1[key] = json.loads(json.dumps(data))
                return 0
            if m.kv_version == 2:
                return self._kv2_write(m, key, json.loads(json.dumps(data)), time.time())
        raise KeyError(f"mount {m.path!r} is not a KV mount")

    def _kv2_version(self, mount: str, path: str, version: int, namespace: str) -> _KvVersion:
        m = self._get_mount(namespace, mount)
        sec = m.kv2.get(path.strip("/"))
        ver = sec.versions.get(version) if sec is not None else None
        if ver is None:
            raise KeyError(f"no version {version} of {path!r} in {m.path!r}")
        return ver

    def delete_kv_version(self, mount: str, path: str, version: int, *, namespace: str = "") -> None:
        """Soft-delete one KV v2 version (sets deletion_time)."""
        with self._lock:
            ver = self._kv2_version(mount, path, version, namespace)
            if ver.deletion_time is None and not ver.destroyed:
                ver.deletion_time = time.time()

    def destroy_kv_version(self, mount: str, path: str, version: int, *, namespace: str = "") -> None:
        """Permanently destroy one KV v2 version (destroyed=true, data gone)."""
        with self._lock:
            ver = self._kv2_version(mount, path, version, namespace)
            ver.destroyed = True
            ver.data = None

    def enable_engine(
        self,
        mount: str,
        responder: Responder,
        *,
        namespace: str = "",
        engine_type: str | None = None,
        lease_duration: int = 3600,
        renewable: bool = True,
        description: str = "",
    ) -> None:
        """Mount a generic leased engine (e.g. "database").  GET/PUT/POST on
        ``<mount>/<sub>`` calls ``responder(sub)``; its dict becomes ``data``
        of an envelope with lease_id "<mount>/<sub>/<random>"; None is 404."""
        path = mount.strip("/") + "/"
        mtype = engine_type or path.rstrip("/").rsplit("/", 1)[-1]
        self._add_mount(
            namespace,
            _Mount(
                path=path,
                type=mtype,
                description=description,
                accessor=f"{mtype}_{_rand(8).lower()}",
                uuid=str(uuid.uuid4()),
                responder=responder,
                lease_duration=lease_duration,
                renewable=renewable,
            ),
        )

    def _auth_mount(self, namespace: str, mount: str, mtype: str) -> _Mount:
        path = "auth/" + mount.strip("/") + "/"
        with self._lock:
            ns = self._namespace(namespace)
            existing = ns.mounts.get(path)
            if existing is not None and existing.type == mtype:
                return existing
            created = _Mount(
                path=path,
                type=mtype,
                description="",
                accessor=f"auth_{mtype}_{_rand(8).lower()}",
                uuid=str(uuid.uuid4()),
            )
            ns.mounts[path] = created
            return created

    def add_token(
        self,
        token: str,
        policies: Policies,
        *,
        namespace: str = "",
        ttl: int | None = None,
        policy_names: list[str] | None = None,
        renewable: bool | None = None,
        display_name: str = "token",
        meta: dict[str, str] | None = None,
    ) -> None:
        """Register a token.  A "root" capability anywhere makes a root token
        (policies ["root"], ttl 0, all paths allowed).  ``ttl`` defaults to
        3600 (0 for root; 0 = never expires)."""
        acl = _Acl(policies)
        if acl.root:
            names = ["root"]
            ttl_s = 0 if ttl is None else ttl
        else:
            names = policy_names if policy_names is not None else (["sim-policy"] if policies else [])
            ttl_s = 3600 if ttl is None else ttl
        self._issue_token(
            namespace,
            policies,
            names,
            ttl_s,
            token_id=token,
            renewable=(not acl.root) if renewable is None else renewable,
            display_name="root" if acl.root else display_name,
            meta=meta,
            path="auth/token/root" if acl.root else "auth/token/create",
            orphan=acl.root,
        )

    def add_root_token(self, token: str = "root", *, namespace: str = "") -> None:
        """Shorthand for ``add_token(token, {"*": ["root"]})``."""
        self.add_token(token, {"*": ["root"]}, namespace=namespace)

    def expire_token(self, token: str) -> None:
        """Make a token expired now (it then gets the invalid-token answer)."""
        with self._lock:
            self._tokens[token].expires = time.time() - 1

    def _issue_token(
        self,
        namespace: str,
        rules: Policies,
        policy_names: list[str],
        ttl: int,
        *,
        token_id: str | None = None,
        renewable: bool = True,
        display_name: str = "token",
        meta: dict[str, str] | None = None,
        path: str = "auth/token/create",
        orphan: bool = False,
        entity_id: str = "",
    ) -> _Token:
        acl = _Acl(rules)
        if acl.root:
            names = ["root"]
        else:
            # policyutil.SanitizePolicies: "default" added, de-duplicated, sorted.
            names = sorted(set(policy_names) | {"default"})
            merged: dict[str, list[str]] = {k: list(v) for k, v in DEFAULT_POLICY_RULES.items()}
            for rule_path, caps in rules.items():
                merged.setdefault(rule_path.lstrip("/"), []).extend(caps)
            acl = _Acl(merged)
        now = time.time()
        tok = _Token(
            id=token_id or f"hvs.{_rand(24)}",
            accessor=_rand(24),
            namespace=namespace.strip("/"),
            acl=acl,
            policy_names=names,
            ttl=ttl,
            created=now,
            expires=(now + ttl) if ttl > 0 else None,
            renewable=renewable,
            display_name=display_name,
            meta=dict(meta) if meta is not None else None,
            path=path,
            orphan=orphan,
            entity_id=entity_id,
        )
        with self._lock:
            self._namespace(namespace)
            self._tokens[tok.id] = tok
        return tok

    def enable_approle(
        self,
        role_name: str,
        role_id: str,
        secret_id: str | None,
        policies: Policies,
        *,
        mount: str = "approle",
        namespace: str = "",
        token_ttl: int = 3600,
        policy_names: list[str] | None = None,
    ) -> None:
        """Add a role to an AppRole mount (created on first use).
        ``secret_id=None`` means bind_secret_id=false."""
        m = self._auth_mount(namespace, mount, "approle")
        with self._lock:
            m.approle[role_name] = _AppRole(
                name=role_name,
                role_id=role_id,
                secret_id=secret_id,
                rules=dict(policies),
                policy_names=list(policy_names) if policy_names is not None else [role_name],
                token_ttl=token_ttl,
            )

    def enable_jwt(
        self,
        *,
        mount: str = "jwt",
        jwks: Mapping[str, Any],
        bound_issuer: str | None = None,
        bound_audiences: Sequence[str] = (),
        roles: Mapping[str, JwtRole],
        namespace: str = "",
        default_role: str | None = None,
        supported_algs: Sequence[str] = (),
    ) -> None:
        """Configure a JWT auth mount with a static JWKS.  ``bound_audiences``
        applies to roles whose own ``bound_audiences`` is None.  An empty
        ``supported_algs`` accepts every algorithm the simulator verifies (as
        Vault does when jwt_supported_algs is unset)."""
        keys = jwks.get("keys")
        if not isinstance(keys, list):
            raise ValueError("jwks must be a JWKS object with a 'keys' list")
        m = self._auth_mount(namespace, mount, "jwt")
        with self._lock:
            m.jwt = _JwtConfig(
                keys=[dict(k) for k in keys],
                bound_issuer=bound_issuer,
                bound_audiences=list(bound_audiences),
                roles={name.lower(): role for name, role in roles.items()},
                default_role=default_role.lower() if default_role else None,
                supported_algs=list(supported_algs) or list(_JWT_ALGS),
            )

    def enable_cert(
        self,
        *,
        mount: str = "cert",
        certs: Mapping[str, tuple[str, Policies]],
        namespace: str = "",
        token_ttl: int = 3600,
    ) -> None:
        """Configure a TLS-certificate auth mount: name -> (PEM of the CA or
        certificate that the client certificate must equal or be directly
        issued by, policy rules).  Needs ``tls`` with client certificates
        requested (``ssl.CERT_OPTIONAL``)."""
        m = self._auth_mount(namespace, mount, "cert")
        entries: dict[str, _CertEntry] = {}
        for name, (pem, rules) in certs.items():
            parsed = x509.load_pem_x509_certificates(pem.encode() if isinstance(pem, str) else pem)
            entries[name] = _CertEntry(
                name=name, certs=parsed, rules=dict(rules), policy_names=[name], token_ttl=token_ttl
            )
        with self._lock:
            m.certs.update(entries)

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def requests_to(self, api_path: str, method: str | None = None) -> list[RecordedRequest]:
        """Recorded requests whose namespace-relative path equals ``api_path``
        (leading/trailing slashes ignored), optionally filtered by method."""
        want = api_path.strip("/")
        with self._lock:
            return [
                r
                for r in self.requests
                if r.api_path.strip("/") == want and (method is None or r.method == method.upper())
            ]

    # -- request entry point ----------------------------------------------

    def _resolve_namespace(self, header: str, path: str) -> tuple[str, str, bool]:
        """Header namespace plus any leading path segments naming child
        namespaces (namespaceStore.ResolveNamespaceFromRequest)."""
        ns = header.strip("/")
        with self._lock:
            exists = ns in self._namespaces
            if not exists:
                return ns, path, False
            rest = path
            while "/" in rest:
                seg, tail = rest.split("/", 1)
                candidate = f"{ns}/{seg}" if ns else seg
                if seg and candidate in self._namespaces:
                    ns, rest = candidate, tail
                else:
                    break
            return ns, rest, True

    def _serve(self, h: _Handler) -> None:
        try:
            raw = h.read_body()
        except (OSError, ValueError):
            h.close_connection = True
            return
        split = urlsplit(h.path)
        url_path = unquote(split.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        headers = {k.lower(): v for k, v in h.headers.items()}
        body: Any = None
        body_error: str | None = None
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError as exc:
                body_error = f"failed to parse JSON input: {exc}"
        api = url_path[len("/v1/") :] if url_path.startswith("/v1/") else url_path.lstrip("/")
        ns, rel, ns_exists = self._resolve_namespace(headers.get("x-vault-namespace", ""), api)
        method = h.command.upper()
        op: str | None
        if method in ("GET", "HEAD"):
            op = "read"
            if query.get("list", "").lower() in ("1", "t", "true"):
                op = "list"
        elif method == "LIST":
            op = "list"
        elif method in ("POST", "PUT"):
            op = "update"
        elif method == "DELETE":
            op = "delete"
        elif method == "PATCH":
            op = "patch"
        else:
            op = None
        if op == "list" and not rel.endswith("/"):
            rel += "/"
        record = RecordedRequest(
            method=method,
            path=url_path,
            query=query,
            headers=headers,
            body=body,
            namespace=ns,
            api_path=rel,
            raw_body=raw,
        )
        with self._lock:
            self.requests.append(record)
        stop = self._stop_event
        if self.hang:
            stop.wait()
            h.close_connection = True
            return
        if self.latency > 0:
            stop.wait(self.latency)
        if stop.is_set():
            h.close_connection = True
            return
        token = record.token
        ctx = _Ctx(
            method=method,
            op=op,
            namespace=ns,
            namespace_exists=ns_exists,
            path=rel,
            query=query,
            body=body,
            body_error=body_error,
            token=token,
            tls=isinstance(h.connection, ssl.SSLSocket),
            peer_cert=h.peer_certificate(),
        )
        if not url_path.startswith("/v1/"):
            resp = _err(404)
        else:
            try:
                with self._lock:
                    resp = self._handle(ctx)
            except Exception as exc:  # surfaced to the test through .errors
                self.errors.append(exc)
                resp = _err(500, "internal error")
        try:
            h.write_response(resp)
        except OSError:
            h.close_connection = True

    # -- routing -----------------------------------------------------------

    def _handle(self, c: _Ctx) -> _Resp:
        # Unauthenticated status endpoints answer even when sealed.
        if c.path == "sys/health":
            return self._sys_health(c)
        if c.path == "sys/seal-status":
            return _Resp(200, self._seal_status())
        # The HTTP layer parses the body before the core sees the request.
        if c.body_error is not None and c.op in ("update", "patch"):
            return _err(400, c.body_error)
        if self.sealed:
            return _err(503, ERR_SEALED)
        if not c.namespace_exists:
            return _err(404, "namespace not found")
        if c.op is None:
            return _err(405)
        if c.path == "sys/init":
            if c.op != "read":
                return _err(405, ERR_UNSUPPORTED_OPERATION)
            return _Resp(200, {"initialized": True})
        ns = self._namespaces[c.namespace]
        login = self._login_mount(ns, c.path)
        if login is not None:
            return self._login(c, login)
        if c.path.rstrip("/") == "sys/internal/ui/mounts" or c.path.startswith("sys/internal/ui/mounts/"):
            return self._ui_mounts(c, ns)

        token, denial = self._check_token(c)
        if denial is not None:
            return denial
        assert token is not None
        mount = self._match_mount(ns, c.path)
        op = c.op
        if op == "update":
            op = self._existence_op(mount, c.path)
        if token.namespace != c.namespace or not token.acl.allows(c.path, op, is_list=op == "list"):
            return _err(403, ERR_POLICY_DENIED)

        if c.path.startswith("auth/token/"):
            return self._token_endpoint(c, token, op)
        if c.path.startswith("sys/"):
            return self._sys_endpoint(c, token, ns, op)
        if mount is None:
            # router.go: the text of logical.ErrUnsupportedPath's companion
            # error response for a path with no mount at all.
            return _err(404, f'no handler for route "{c.path}". route entry not found.')
        sub = c.path[len(mount.path) :] if c.path.startswith(mount.path) else ""
        if mount.kv_version == 1:
            return self._kv1(c, mount, sub, op)
        if mount.kv_version == 2:
            return self._kv2(c, mount, sub, op)
        if mount.responder is not None:
            return self._engine(c, mount, sub, op)
        if mount.type == "cubbyhole" and op in ("read", "list"):
            return _err(404)
        return _err(404, ERR_UNSUPPORTED_PATH)

    @staticmethod
    def _match_mount(ns: _Namespace, path: str) -> _Mount | None:
        """router.go MatchingMount: longest mount prefix, retried with a
        trailing slash appended."""
        best: _Mount | None = None
        for candidate in (path, path if path.endswith("/") else path + "/"):
            for mpath, mount in ns.mounts.items():
                if candidate.startswith(mpath) and (best is None or len(mpath) > len(best.path)):
                    best = mount
            if best is not None:
                return best
        return None

    @staticmethod
    def _login_mount(ns: _Namespace, path: str) -> _Mount | None:
        if not (path.startswith("auth/") and path.endswith("/login")):
            return None
        mount = ns.mounts.get(path[: -len("login")])
        if mount is None or mount.type not in ("approle", "jwt", "cert"):
            return None
        return mount

    def _check_token(self, c: _Ctx) -> tuple[_Token | None, _Resp | None]:
        if not c.token:
            return None, _err(403, ERR_PERMISSION_DENIED)
        tok = self._tokens.get(c.token)
        if tok is None or not tok.valid(time.time()):
            return None, _Resp(403, {"errors": list(self.invalid_token_errors)})
        return tok, None

    def _existence_op(self, mount: _Mount | None, path: str) -> str:
        """Existence check for writes: KV paths become "create" when the
        target does not exist yet; everything else is "update"."""
        if mount is None or not path.startswith(mount.path):
            return "update"
        sub = path[len(mount.path) :]
        if mount.kv_version == 1:
            return "update" if sub in mount.kv1 else "create"
        if mount.kv_version == 2:
            for prefix in ("data/", "metadata/"):
                if sub.startswith(prefix):
                    return "update" if sub[len(prefix) :] in mount.kv2 else "create"
        return "update"

    # -- sys -----------------------------------------------------------------

    def _seal_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "type": "shamir",
            "initialized": True,
            "sealed": self.sealed,
            "t": 1,
            "n": 1,
            "progress": 0,
            "nonce": "",
            "version": SIM_VAULT_VERSION,
            "build_date": "2024-02-28T17:07:34Z",
            "migration": False,
            "recovery_seal": False,
            "storage_type": "inmem",
        }
        if not self.sealed:
            status["cluster_name"] = "vault-cluster-sim"
            status["cluster_id"] = "5d9bb4d3-1c1a-4d3b-9a5e-000000000000"
        return status

    def _sys_health(self, c: _Ctx) -> _Resp:
        def code(name: str, default: int) -> int:
            try:
                return int(c.query[name])
            except (KeyError, ValueError):
                return default

        status = code("sealedcode", 503) if self.sealed else code("activecode", 200)
        body: dict[str, Any] = {
            "initialized": True,
            "sealed": self.sealed,
            "standby": False,
            "performance_standby": False,
            "replication_performance_mode": "disabled",
            "replication_dr_mode": "disabled",
            "server_time_utc": int(time.time()),
            "version": SIM_VAULT_VERSION,
            "enterprise": False,
            "echo_duration_ms": 0,
            "clock_skew_ms": 0,
            "replication_primary_canary_age_ms": 0,
        }
        if not self.sealed:
            body["cluster_name"] = "vault-cluster-sim"
            body["cluster_id"] = "5d9bb4d3-1c1a-4d3b-9a5e-000000000000"
        return _Resp(status, None if c.method == "HEAD" else body)

    def _ui_mounts(self, c: _Ctx, ns: _Namespace) -> _Resp:
        # An unauthenticated path in Vault; the handler itself loads the ACL,
        # so the token errors come from fetchACLTokenEntryAndEntity.
        if c.op != "read":
            return _err(405, ERR_UNSUPPORTED_OPERATION)
        token, denial = self._check_token(c)
        if denial is not None:
            return denial
        assert token is not None
        raw = c.path[len("sys/internal/ui/mounts") :].lstrip("/")
        if not raw:
            secret: dict[str, Any] = {}
            auth: dict[str, Any] = {}
            for mpath, mount in sorted(ns.mounts.items()):
                if token.namespace == c.namespace and token.acl.has_mount_access(mpath):
                    if mpath.startswith("auth/"):
                        auth[mpath[len("auth/") :]] = mount.info()
                    else:
                        secret[mpath] = mount.info()
            return _Resp(200, _envelope({"auth": auth, "secret": secret}, mount_type="system"))
        # sanitizePath: trailing slash added, leading slash removed.
        path = raw if raw.endswith("/") else raw + "/"
        denied = _err(
            403,
            "preflight capability check returned 403, please ensure client's policies grant "
            f'access to path "{path}"',
        )
        found = self._match_mount(ns, path)
        if found is None:
            return denied  # deliberately the same answer: no mount enumeration
        if token.namespace != c.namespace or not token.acl.has_mount_access(found.path):
            return denied
        data = found.info()
        data["path"] = found.path
        return _Resp(200, _envelope(data, mount_type="system"))

    def _sys_endpoint(self, c: _Ctx, token: _Token, ns: _Namespace, op: str) -> _Resp:
        body = c.body if isinstance(c.body, dict) else {}
        path = c.path
        if path in ("sys/mounts", "sys/auth") and op == "read":
            want_auth = path == "sys/auth"
            data: dict[str, Any] = {}
            for mpath, mount in sorted(ns.mounts.items()):
                if mpath.startswith("auth/") == want_auth:
                    data[mpath[len("auth/") :] if want_auth else mpath] = mount.info()
            out = _envelope(data, mount_type="system")
            out.update({k: v for k, v in data.items() if k not in out})  # legacy top-level copy
            return _Resp(200, out)
        if path == "sys/capabilities-self" and op in ("update", "create"):
            raw_paths = body.get("paths", body.get("path", []))
            paths = [raw_paths] if isinstance(raw_paths, str) else [str(p) for p in raw_paths or []]
            if not paths:
                return _err(400, "paths must be supplied")
            result: dict[str, Any] = {}
            for p in paths:
                caps = token.acl.capabilities(p.lstrip("/"))
                if token.namespace != c.namespace:
                    caps = set()
                if "deny" in caps or not caps:
                    result[p] = ["deny"]
                else:
                    result[p] = sorted(caps)
            if len(paths) == 1:
                result["capabilities"] = result[paths[0]]
            return _Resp(200, _envelope(result, mount_type="system"))
        for prefix, action in (
            ("sys/leases/renew", "renew"),
            ("sys/renew", "renew"),
            ("sys/leases/revoke", "revoke"),
            ("sys/revoke", "revoke"),
        ):
            if path == prefix or path.startswith(prefix + "/"):
                if op not in ("update", "create"):
                    return _err(405, ERR_UNSUPPORTED_OPERATION)
                lease_id = path[len(prefix) + 1 :] if path != prefix else str(body.get("lease_id", "") or "")
                if not lease_id:
                    return _err(400, "lease_id must be specified")
                lease = self._leases.get(lease_id)
                if lease is not None and lease.namespace != c.namespace:
                    lease = None
                if action == "revoke":
                    if lease is not None and not lease.revoked:
                        lease.revoked = True
                    self.revoked_leases.append(lease_id)
                    return _Resp(204)
                if lease is None or lease.revoked or lease.expires <= time.time():
                    return _err(400, "lease not found")
                if not lease.renewable:
                    return _err(400, "lease is not renewable")
                inc = _parse_duration(body.get("increment")) or lease.ttl
                lease.expires = time.time() + inc
                return _Resp(
                    200,
                    _envelope(lease_id=lease.id, renewable=True, lease_duration=inc, mount_type="system"),
                )
        return _err(404, ERR_UNSUPPORTED_PATH)

    # -- token store -----------------------------------------------------

    def _auth_block(self, tok: _Token, lease_duration: int | None = None) -> dict[str, Any]:
        return {
            "client_token": tok.id,
            "accessor": tok.accessor,
            "policies": list(tok.policy_names),
            "token_policies": list(tok.policy_names),
            "metadata": dict(tok.meta) if tok.meta is not None else None,
            "lease_duration": tok.ttl if lease_duration is None else lease_duration,
            "renewable": tok.renewable,
            "entity_id": tok.entity_id,
            "token_type": "service",
            "orphan": tok.orphan,
            "mfa_requirement": None,
            "num_uses": 0,
        }

    def _token_endpoint(self, c: _Ctx, tok: _Token, op: str) -> _Resp:
        body = c.body if isinstance(c.body, dict) else {}
        now = time.time()
        if c.path == "auth/token/lookup-self":
            if op != "read":
                return _err(405, ERR_UNSUPPORTED_OPERATION)
            data: dict[str, Any] = {
                "accessor": tok.accessor,
                "creation_time": int(tok.created),
                "creation_ttl": tok.ttl,
                "display_name": tok.display_name,
                "entity_id": tok.entity_id,
                "expire_time": _rfc3339(tok.expires) if tok.expires is not None else None,
                "explicit_max_ttl": 0,
                "id": tok.id,
                "issue_time": _rfc3339(tok.created),
                "meta": dict(tok.meta) if tok.meta is not None else None,
                "num_uses": 0,
                "orphan": tok.orphan,
                "path": tok.path,
                "policies": list(tok.policy_names),
                "renewable": tok.renewable,
                "ttl": max(0, round(tok.expires - now)) if tok.expires is not None else 0,
                "type": "service",
            }
            if tok.namespace:
                data["namespace_path"] = tok.namespace + "/"
            return _Resp(200, _envelope(data, mount_type="token"))
        if c.path == "auth/token/revoke-self":
            if op not in ("update", "create"):
                return _err(405, ERR_UNSUPPORTED_OPERATION)
            self._tokens.pop(tok.id, None)
            self.revoked_tokens.append(tok.id)
            return _Resp(204)
        if c.path == "auth/token/renew-self":
            if op not in ("update", "create"):
                return _err(405, ERR_UNSUPPORTED_OPERATION)
            if not tok.renewable or tok.expires is None:
                return _err(400, "lease is not renewable")
            inc = _parse_duration(body.get("increment")) or tok.ttl
            tok.expires = now + inc
            return _Resp(200, _envelope(auth=self._auth_block(tok, inc), mount_type="token"))
        return _err(404, ERR_UNSUPPORTED_PATH)

    # -- KV v1 ---------------------------------------------------------------

    @staticmethod
    def _list_keys(keys: Sequence[str], prefix: str) -> list[str]:
        out: set[str] = set()
        for key in keys:
            if key.startswith(prefix) and key != prefix:
                rest = key[len(prefix) :]
                out.add(rest.split("/", 1)[0] + "/" if "/" in rest else rest)
        return sorted(out)

    def _kv1(self, c: _Ctx, m: _Mount, sub: str, op: str) -> _Resp:
        if op == "read":
            data = m.kv1.get(sub)
            if data is None:
                return _err(404)
            lease = KV1_LEASE_DURATION
            ttl = _parse_duration(data.get("ttl")) if "ttl" in data else None
            if ttl is not None:
                lease = ttl
            return _Resp(200, _envelope(json.loads(json.dumps(data)), lease_duration=lease, mount_type="kv"))
        if op == "list":
            keys = self._list_keys(list(m.kv1), sub)
            if not keys:
                return _err(404)
            return _Resp(200, _envelope({"keys": keys}, mount_type="kv"))
        if op in ("create", "update"):
            if not sub or sub.endswith("/"):
                return _err(400, "cannot write to a path ending in '/'")
            if not isinstance(c.body, dict) or not c.body:
                return _err(400, "missing data fields")
            m.kv1[sub] = json.loads(json.dumps(c.body))
            return _Resp(204)
        if op == "delete":
            m.kv1.pop(sub, None)
            return _Resp(204)
        return _err(405, ERR_UNSUPPORTED_OPERATION)

    # -- KV v2 ---------------------------------------------------------------

    def _kv2_write(self, m: _Mount, key: str, data: dict[str, Any], now: float) -> int:
        sec = m.kv2.get(key)
        if sec is None:
            sec = _KvSecret(created=now, updated=now)
            m.kv2[key] = sec
        sec.current += 1
        sec.updated = now
        sec.versions[sec.current] = _KvVersion(data=data, created=now)
        limit = sec.max_versions or int(m.kv2_config.get("max_versions") or 0) or KV2_DEFAULT_MAX_VERSIONS
        while len(sec.versions) > limit:
            oldest = min(sec.versions)
            del sec.versions[oldest]
            sec.oldest = min(sec.versions)
        return sec.current

    def _kv2(self, c: _Ctx, m: _Mount, sub: str, op: str) -> _Resp:
        now = time.time()
        body = c.body if isinstance(c.body, dict) else {}
        section, _, key = sub.partition("/")
        if sub == "config":
            if op == "read":
                return _Resp(200, _envelope(dict(m.kv2_config), mount_type="kv"))
            if op in ("create", "update"):
                for name in ("cas_required", "delete_version_after", "max_versions"):
                    if name in body:
                        m.kv2_config[name] = body[name]
                return _Resp(204)
            return _err(405, ERR_UNSUPPORTED_OPERATION)
        if section == "data" and "/" in sub:
            return self._kv2_data(c, m, key, op, body, now)
        if section == "metadata" and "/" in sub:
            return self._kv2_metadata(m, key, op, body, now)
        if section in ("delete", "undelete", "destroy") and "/" in sub and op in ("create", "update"):
            sec = m.kv2.get(key)
            versions = body.get("versions")
            if not isinstance(versions, list) or not versions:
                return _err(400, "no version number provided")
            if sec is not None:
                for raw_v in versions:
                    try:
                        ver = sec.versions.get(int(raw_v))
                    except (TypeError, ValueError):
                        return _err(400, f"error parsing version: {raw_v}")
                    if ver is None:
                        continue
                    if section == "delete" and ver.deletion_time is None and not ver.destroyed:
                        ver.deletion_time = now
                    elif section == "undelete" and not ver.destroyed:
                        ver.deletion_time = None
                    elif section == "destroy":
                        ver.destroyed = True
                        ver.data = None
            return _Resp(204)
        # pathInvalid(): a raw 404 whose body is a full envelope with a warning
        # and no "errors" key (mount_type is empty in raw responses).
        subcommand = {"read": "get", "list": "list", "delete": "delete"}.get(op, "put")
        return _Resp(404, _envelope(warnings=[kv2_invalid_path_warning(subcommand)]))

    def _kv2_data(self, c: _Ctx, m: _Mount, key: str, op: str, body: dict[str, Any], now: float) -> _Resp:
        sec = m.kv2.get(key)
        if op == "read":
            if sec is None:
                return _err(404)
            raw_version = c.query.get("version", "")
            try:
                version = int(raw_version) if raw_version != "" else 0
            except ValueError:
                return _err(400, f'error converting input {raw_version} for field "version"')
            if version == 0:
                version = sec.current
            ver = sec.versions.get(version)
            if ver is None:
                return _err(404)
            meta = ver.metadata(version, sec.custom_metadata)
            if not ver.readable(now):
                # logical.RespondWithStatusCode(resp, req, 404): the envelope
                # is returned with the metadata and data=null.
                return _Resp(404, _envelope({"data": None, "metadata": meta}))
            payload = {"data": json.loads(json.dumps(ver.data)), "metadata": meta}
            return _Resp(200, _envelope(payload, mount_type="kv"))
        if op in ("create", "update", "patch"):
            if not key or key.endswith("/"):
                return _err(400, "cannot write to a path ending in '/'")
            data = body.get("data")
            if not isinstance(data, dict):
                return _err(400, "no data provided")
            options = body.get("options")
            cas = options.get("cas") if isinstance(options, dict) else None
            current = sec.current if sec is not None else 0
            cas_required = bool(m.kv2_config.get("cas_required")) or (sec is not None and sec.cas_required)
            if cas is None and cas_required:
                return _err(400, "check-and-set parameter required for this call")
            if cas is not None:
                try:
                    cas_int = int(cas)
                except (TypeError, ValueError):
                    return _err(400, "check-and-set parameter must be an integer")
                if cas_int != current:
                    return _err(400, "check-and-set parameter did not match the current version")
            if op == "patch":
                cur = sec.versions.get(sec.current) if sec is not None else None
                if sec is None or cur is None or not cur.readable(now):
                    return _err(404)
                data = _merge_patch(cur.data or {}, data)
            new_version = self._kv2_write(m, key, json.loads(json.dumps(data)), now)
            meta = m.kv2[key].versions[new_version].metadata(new_version, m.kv2[key].custom_metadata)
            return _Resp(200, _envelope(meta, mount_type="kv"))
        if op == "delete":
            if sec is not None:
                ver = sec.versions.get(sec.current)
                if ver is not None and ver.deletion_time is None and not ver.destroyed:
                    ver.deletion_time = now
            return _Resp(204)
        if op == "list":
            return _Resp(404, _envelope(warnings=[kv2_invalid_path_warning("list")]))
        return _err(405, ERR_UNSUPPORTED_OPERATION)

    def _kv2_metadata(self, m: _Mount, key: str, op: str, body: dict[str, Any], now: float) -> _Resp:
        sec = m.kv2.get(key)
        if op == "read":
            if sec is None:
                return _err(404)
            versions = {
                str(n): {
                    "created_time": _rfc3339(v.created),
                    "deletion_time": _rfc3339(v.deletion_time) if v.deletion_time is not None else "",
                    "destroyed": v.destroyed,
                }
                for n, v in sorted(sec.versions.items())
            }
            data = {
                "cas_required": sec.cas_required,
                "created_time": _rfc3339(sec.created),
                "current_version": sec.current,
                "custom_metadata": sec.custom_metadata,
                "delete_version_after": sec.delete_version_after,
                "max_versions": sec.max_versions,
                "oldest_version": sec.oldest,
                "updated_time": _rfc3339(sec.updated),
                "versions": versions,
            }
            return _Resp(200, _envelope(data, mount_type="kv"))
        if op == "list":
            keys = self._list_keys(list(m.kv2), key)
            if not keys:
                return _err(404)
            return _Resp(200, _envelope({"keys": keys}, mount_type="kv"))
        if op in ("create", "update"):
            if sec is None:
                sec = _KvSecret(created=now, updated=now)
                m.kv2[key] = sec
            if "max_versions" in body:
                sec.max_versions = int(body["max_versions"])
            if "cas_required" in body:
                sec.cas_required = bool(body["cas_required"])
            if "delete_version_after" in body:
                sec.delete_version_after = str(body["delete_version_after"])
            if "custom_metadata" in body:
                custom = body["custom_metadata"]
                sec.custom_metadata = (
                    {str(k): str(v) for k, v in custom.items()} if isinstance(custom, dict) else None
                )
            sec.updated = now
            return _Resp(204)
        if op == "delete":
            m.kv2.pop(key, None)
            return _Resp(204)
        return _err(405, ERR_UNSUPPORTED_OPERATION)

    # -- generic leased engine -----------------------------------------

    def _engine(self, c: _Ctx, m: _Mount, sub: str, op: str) -> _Resp:
        if op not in ("read", "create", "update"):
            return _err(405, ERR_UNSUPPORTED_OPERATION)
        assert m.responder is not None
        data = m.responder(sub)
        if data is None:
            return _err(404)
        lease_id = f"{m.path}{sub}/{_rand(24)}"
        self._leases[lease_id] = _Lease(
            id=lease_id,
            namespace=c.namespace,
            ttl=m.lease_duration,
            renewable=m.renewable,
            expires=time.time() + m.lease_duration,
        )
        return _Resp(
            200,
            _envelope(
                json.loads(json.dumps(data)),
                lease_id=lease_id,
                renewable=m.renewable,
                lease_duration=m.lease_duration,
                mount_type=m.type,
            ),
        )

    # -- auth methods ----------------------------------------------------

    def _login(self, c: _Ctx, m: _Mount) -> _Resp:
        if c.op not in ("update",):
            return _err(405, ERR_UNSUPPORTED_OPERATION)
        body = c.body if isinstance(c.body, dict) else {}
        if m.type == "approle":
            return self._login_approle(c, m, body)
        if m.type == "jwt":
            return self._login_jwt(c, m, body)
        return self._login_cert(c, m, body)

    def _login_response(self, tok: _Token, mount_type: str) -> _Resp:
        return _Resp(200, _envelope(auth=self._auth_block(tok), mount_type=mount_type))

    def _login_approle(self, c: _Ctx, m: _Mount, body: dict[str, Any]) -> _Resp:
        role_id = str(body.get("role_id") or "").strip()
        if not role_id:
            return _err(400, "missing role_id")
        role = next((r for r in m.approle.values() if r.role_id == role_id), None)
        if role is None:
            return _err(400, ERR_APPROLE_INVALID)
        if role.secret_id is not None:
            secret_id = str(body.get("secret_id") or "").strip()
            if not secret_id:
                return _err(400, "missing secret_id")
            if not secrets.compare_digest(secret_id, role.secret_id):
                return _err(400, ERR_APPROLE_INVALID)
        tok = self._issue_token(
            c.namespace,
            role.rules,
            role.policy_names,
            role.token_ttl,
            display_name="approle",
            meta={"role_name": role.name},
            path=f"{m.path}login",
            orphan=True,
            entity_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{m.accessor}/{role.role_id}")),
        )
        return self._login_response(tok, "approle")

    def _login_jwt(self, c: _Ctx, m: _Mount, body: dict[str, Any]) -> _Resp:
        cfg = m.jwt
        if cfg is None:
            return _err(400, "could not load configuration")
        role_name = str(body.get("role") or "").lower() or (cfg.default_role or "")
        if not role_name:
            return _err(400, "missing role")
        role = cfg.roles.get(role_name)
        if role is None:
            return _err(400, f'role "{role_name}" could not be found')
        if role.role_type == "oidc":
            return _err(400, "role with oidc role_type is not allowed")
        token = str(body.get("jwt") or "")
        if not token:
            return _err(400, "missing token")
        claims, problem = self._validate_jwt(token, cfg, role)
        if problem is not None or claims is None:
            return _err(400, f"error validating token: {problem}")
        aud = claims.get("aud")
        audiences = role.bound_audiences if role.bound_audiences is not None else cfg.bound_audiences
        # Only a *list* aud trips this check in Vault (getClaim(...).([]interface{})).
        if isinstance(aud, list) and aud and not audiences:
            return _err(400, "audience claim found in JWT but no audiences bound to the role")
        user = claims.get(role.user_claim)
        if role.user_claim not in claims:
            return _err(400, f'claim "{role.user_claim}" not found in token')
        if not isinstance(user, str):
            return _err(400, f'claim "{role.user_claim}" could not be converted to string')
        problem = _validate_bound_claims(role.bound_claims_type, role.bound_claims, claims)
        if problem is not None:
            return _err(400, f"error validating claims: {problem}")
        rules = _template_policies(role.policies, claims)
        names = role.policy_names if role.policy_names is not None else [role_name]
        tok = self._issue_token(
            c.namespace,
            rules,
            names,
            role.token_ttl,
            display_name=f"{m.path[5:-1].replace('/', '-')}-{user}",
            meta={"role": role_name},
            path=f"{m.path}login",
            orphan=True,
            entity_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{m.accessor}/{user}")),
        )
        return self._login_response(tok, "jwt")

    @staticmethod
    def _validate_jwt(token: str, cfg: _JwtConfig, role: JwtRole) -> tuple[dict[str, Any] | None, str | None]:
        """hashicorp/cap jwt.Validator.Validate, in its order and with its texts."""
        parts = token.split(".")
        if len(parts) != 3:
            return None, (
                f"error verifying token signature: oidc: malformed jwt, expected 3 parts got {len(parts)}"
            )
        try:
            header = json.loads(_b64url_decode(parts[0]))
            payload = _b64url_decode(parts[1])
            signature = _b64url_decode(parts[2])
        except (ValueError, binascii.Error) as exc:
            return None, f"error verifying token signature: oidc: malformed jwt: {exc}"
        if not isinstance(header, dict):
            return None, "error verifying token signature: oidc: malformed jwt: header is not an object"
        alg = str(header.get("alg", ""))
        kid = header.get("kid")
        signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
        keys = [k for k in cfg.keys if kid is None or k.get("kid") == kid]
        if not any(_verify_jws(k, alg, signing_input, signature) for k in keys):
            return None, "error verifying token signature: failed to verify id token signature"
        if alg not in cfg.supported_algs:
            return None, "invalid algorithm (alg) header parameter: token signed with unexpected algorithm"
        try:
            claims = json.loads(payload)
        except ValueError as exc:
            return None, f"oidc: failed to unmarshal claims: {exc}"
        if not isinstance(claims, dict):
            return None, "oidc: failed to unmarshal claims: not an object"
        if cfg.bound_issuer and claims.get("iss") != cfg.bound_issuer:
            return None, "invalid issuer (iss) claim"
        if role.bound_subject and claims.get("sub") != role.bound_subject:
            return None, "invalid subject (sub) claim"
        audiences = role.bound_audiences if role.bound_audiences is not None else cfg.bound_audiences
        raw_aud = claims.get("aud")
        aud = [raw_aud] if isinstance(raw_aud, str) else [a for a in raw_aud or [] if isinstance(a, str)]
        if audiences and not any(a in aud for a in audiences):
            return None, "invalid audience (aud) claim: audience claim does not match any expected audience"

        def numeric(name: str) -> float:
            value = claims.get(name)
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0

        def leeway(value: int, default: int) -> float:
            return 0.0 if value < 0 else float(value or default)

        iat, exp, nbf = numeric("iat"), numeric("exp"), numeric("nbf")
        if iat == 0 and exp == 0 and nbf == 0:
            return None, "no issued at (iat), not before (nbf), or expiration time (exp) claims in token"
        if exp == 0:
            exp = max(iat, nbf) + leeway(role.expiration_leeway, 150)
        if nbf == 0:
            nbf = iat if iat != 0 else exp - leeway(role.not_before_leeway, 150)
        skew = leeway(role.clock_skew_leeway, 60)
        now = time.time()
        if now + skew < nbf:
            return None, "invalid not before (nbf) claim: token not yet valid"
        if now - skew > exp:
            return None, "invalid expiration time (exp) claim: token is expired"
        if iat and now + skew < iat:
            return None, "invalid issued at (iat) claim: token issued in the future"
        return claims, None

    def _login_cert(self, c: _Ctx, m: _Mount, body: dict[str, Any]) -> _Resp:
        if not c.tls:
            return _err(400, ERR_CERT_NO_TLS)
        if not c.peer_cert:
            return _err(400, ERR_CERT_MISSING)
        leaf = x509.load_der_x509_certificate(c.peer_cert)
        name = str(body.get("name") or "")
        entries = [m.certs[name]] if name in m.certs else ([] if name else list(m.certs.values()))
        now = datetime.now(timezone.utc)
        if not (leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc):
            return _err(400, ERR_CERT_INVALID)
        matched: _CertEntry | None = None
        for entry in sorted(entries, key=lambda e: e.name):
            if any(_cert_trusts(trusted, leaf) for trusted in entry.certs):
                matched = entry
                break
        if matched is None:
            return _err(400, ERR_CERT_INVALID)
        cns = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        meta = {
            "authority_key_id": _hex_colon(_key_id(leaf, authority=True)),
            "cert_name": matched.name,
            "common_name": str(cns[0].value) if cns else "",
            "serial_number": str(leaf.serial_number),
            "subject_key_id": _hex_colon(_key_id(leaf, authority=False)),
        }
        tok = self._issue_token(
            c.namespace,
            matched.rules,
            matched.policy_names,
            matched.token_ttl,
            display_name=f"{m.path[5:-1].replace('/', '-')}-{matched.name}",
            meta=meta,
            path=f"{m.path}login",
            orphan=True,
            entity_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{m.accessor}/{matched.name}")),
        )
        return self._login_response(tok, "cert")


# --------------------------------------------------------------------------
# Auth helpers
# --------------------------------------------------------------------------


def _verify_jws(jwk: Mapping[str, Any], alg: str, signing_input: bytes, signature: bytes) -> bool:
    """Verify one JWS signature with one JWK (RFC 7518 algorithms)."""
    if jwk.get("use") not in (None, "sig"):
        return False
    kty = jwk.get("kty")
    hash_for: dict[str, hashes.HashAlgorithm] = {
        "256": hashes.SHA256(),
        "384": hashes.SHA384(),
        "512": hashes.SHA512(),
    }
    try:
        if alg[:2] in ("RS", "PS") and kty == "RSA" and alg[2:] in hash_for:
            rsa_key = rsa.RSAPublicNumbers(_b64url_int(jwk.get("e")), _b64url_int(jwk.get("n"))).public_key()
            algo = hash_for[alg[2:]]
            pad: padding.AsymmetricPadding
            if alg.startswith("RS"):
                pad = padding.PKCS1v15()
            else:
                pad = padding.PSS(mgf=padding.MGF1(algo), salt_length=algo.digest_size)
            rsa_key.verify(signature, signing_input, pad, algo)
            return True
        if alg in ("ES256", "ES384", "ES512") and kty == "EC":
            curve: ec.EllipticCurve
            curve, size = {
                "ES256": (ec.SECP256R1(), 32),
                "ES384": (ec.SECP384R1(), 48),
                "ES512": (ec.SECP521R1(), 66),
            }[alg]
            if jwk.get("crv") != {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}[alg]:
                return False
            if len(signature) != 2 * size:
                return False
            ec_key = ec.EllipticCurvePublicNumbers(
                _b64url_int(jwk.get("x")), _b64url_int(jwk.get("y")), curve
            ).public_key()
            der = encode_dss_signature(
                int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
            )
            ec_key.verify(der, signing_input, ec.ECDSA(hash_for[alg[2:]]))
            return True
        if alg == "EdDSA" and kty == "OKP" and jwk.get("crv") == "Ed25519":
            x = jwk.get("x")
            if not isinstance(x, str):
                return False
            ed25519.Ed25519PublicKey.from_public_bytes(_b64url_decode(x)).verify(signature, signing_input)
            return True
    except (InvalidSignature, ValueError, TypeError, binascii.Error):
        return False
    return False


def _claim(claims: Mapping[str, Any], name: str) -> Any:
    """getClaim: a plain claim name, or a JSON pointer when it starts with "/"."""
    if not name.startswith("/"):
        return claims.get(name)
    node: Any = claims
    for raw in name[1:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _normalize_claim(value: Any) -> list[Any] | None:
    """normalizeList: string/bool/number -> [value]; lists pass; else None.
    Integral floats compare as ints (getClaim turns them into json.Number)."""

    def norm(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        return v

    if isinstance(value, list):
        return [norm(v) for v in value]
    if isinstance(value, (str, bool, int, float)):
        return [norm(value)]
    return None


def _validate_bound_claims(kind: str, bound: Mapping[str, Any], claims: Mapping[str, Any]) -> str | None:
    """vault-plugin-auth-jwt claims.go validateBoundClaims, same texts."""
    for name, expected in bound.items():
        actual = _claim(claims, name)
        if actual is None:
            return f'claim "{name}" is missing'
        act_vals = _normalize_claim(actual)
        if act_vals is None:
            return f"received claim is not a string, bool, int or list: {actual}"
        exp_vals = _normalize_claim(expected)
        if exp_vals is None:
            return f"bound claim is not a string, bool, int or list: {expected}"
        found = False
        for exp in exp_vals:
            for act in act_vals:
                if kind == "glob":
                    if isinstance(exp, str) and isinstance(act, str) and fnmatch.fnmatchcase(act, exp):
                        found = True
                elif type(exp) is type(act) and exp == act:
                    found = True
        if not found:
            return f'claim "{name}" does not match any associated bound claim values'
    return None


_TEMPLATE_RE = re.compile(r"\{\{\s*claims\.([A-Za-z0-9_\-./]+)\s*\}\}")


def _template_policies(rules: Policies, claims: Mapping[str, Any]) -> Policies:
    """Fill "{{claims.<name>}}" placeholders; drop rules that cannot be filled."""
    out: Policies = {}
    for path, caps in rules.items():
        ok = True

        def fill(match: re.Match[str]) -> str:
            nonlocal ok
            value = _claim(claims, match.group(1))
            if isinstance(value, bool) or not isinstance(value, (str, int, float)) or value == "":
                ok = False
                return ""
            return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)

        filled = _TEMPLATE_RE.sub(fill, path)
        if ok:
            out.setdefault(filled, []).extend(caps)
    return out


def _key_id(cert: x509.Certificate, *, authority: bool) -> bytes | None:
    try:
        if authority:
            aki = cert.extensions.get_extension_for_oid(ExtensionOID.AUTHORITY_KEY_IDENTIFIER).value
            return cast(x509.AuthorityKeyIdentifier, aki).key_identifier
        ski = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_KEY_IDENTIFIER).value
        return cast(x509.SubjectKeyIdentifier, ski).digest
    except x509.ExtensionNotFound:
        return None


def _cert_trusts(trusted: x509.Certificate, leaf: x509.Certificate) -> bool:
    """The client certificate is the configured one or directly issued by it."""
    if trusted == leaf:
        return True
    try:
        leaf.verify_directly_issued_by(trusted)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
