"""The server's sections of the config file, checked, and the files they name.

``config.parse`` keeps these tables as read (the plugin never uses them);
here each key is checked the way config.py checks the plugin's, with
``config.build_settings``, so that a typo is an error that names the key::

    [server]             # listen address, TLS, limits (ServerSettings)
    [drone]              # the secret extension's shared secret
    [[drone.policy]]     # which repo, event, branch (and fork) reads what
    [admission]          # the admission extension: logins, email domains, admins
    [admission.github]   # optional: GitHub org/team membership
    [bitbucket]          # the OIDC issuer and audience of the workspace
    [[bitbucket.rule]]   # which step gets which NAME = reference
    [[bitbucket.policy]] # optional: a guard on what the rules may read
    [woodpecker]         # the Woodpecker server's public key, the endpoint's token
    [[woodpecker.rule]]  # which pipeline gets which NAME = reference
    [[woodpecker.policy]] # optional: a guard on what the rules may read

``parse_settings`` touches no file; ``load`` reads the config file and the
secret files, each held to the trust rules (nomad_secrets/process/trust.py).
docs/ci.md explains every key.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, TypeVar

from nomad_secrets.core import config as config_module
from nomad_secrets.core.config import Config
from nomad_secrets.core.policy import Rule, rule
from nomad_secrets.core.reference import Reference, parse_reference
from nomad_secrets.core.schemes import SCHEMES
from nomad_secrets.process.errors import ConfigError, RequestError

if TYPE_CHECKING:  # cryptography is the server extra's: imported when a key is read
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

# Drone's aesgcm answer takes its AES-256 key from the shared secret's first
# 32 bytes (drone-go plugin/internal/aesgcm); shorter secrets are refused
# there, and here for every shared secret.
MIN_SECRET_BYTES = 32
MAX_SECRET_BYTES = 4096

# The caller's fields each door fills (policy.Caller), and the placeholders
# its allow patterns may use with the number of segments each fills.
DRONE_FIELDS = ("repo", "event", "branch", "fork")
DRONE_PLACEHOLDERS: Mapping[str, int] = {"repo": 2}  # a slug is owner/name
BITBUCKET_FIELDS = ("workspace", "repository", "branch", "environment", "pipeline")
BITBUCKET_PLACEHOLDERS: Mapping[str, int] = {"workspace": 1, "repository": 1}
# Bitbucket's UUIDs come in braces ({...}); both spellings are accepted.
BITBUCKET_UUID_FIELDS = ("workspace", "repository", "environment", "pipeline")
# Woodpecker: repo is full_name; the rest are the pipeline's (deploy_to: a
# deployment's target); fork is "true" or "false" as for Drone.
WOODPECKER_FIELDS = ("repo", "event", "branch", "ref", "deploy_to", "fork")
WOODPECKER_PLACEHOLDERS: Mapping[str, int] = {"repo": 2}
MAX_PUBLIC_KEY_BYTES = 16 * 1024
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
_TEAM = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*/[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_ORG = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_URL_TOKEN = re.compile(rb"[A-Za-z0-9_-]+\Z")  # one path segment as it is, nothing to escape


@dataclass(frozen=True)
class ServerSettings:
    listen: str = "127.0.0.1:8443"  # host:port; [::]:8443 for IPv6
    tls_cert: str | None = None  # PEM chain
    tls_key: str | None = None
    plain_http: bool = False  # no TLS: only behind a TLS proxy, or on loopback
    store: str = "aws-sm"  # what a reference without a scheme reads
    request_seconds: float = 10.0  # each request: body, policy, stores
    header_seconds: float = 10.0  # to send a request's headers
    max_body_bytes: int = 256 * 1024
    max_connections: int = 1024  # past this, 503
    # From one address (an IPv6 /64): runners behind one NAT address share
    # it; past it, 429. At most a quarter of max_connections (the default).
    max_connections_per_peer: int = 256
    max_concurrent_reads: int = 64  # requests reading stores at once; others wait
    shutdown_seconds: float = 30.0  # SIGTERM: in-flight requests finish within this
    clock_skew_seconds: float = 300.0  # a signed request's Date, either way
    access_log: bool = True  # one JSON line per request on stdout

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


@dataclass(frozen=True)
class DroneSettings:
    secret_file: str = ""  # DRONE_SECRET_PLUGIN_TOKEN
    policy: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class GitHubSettings:
    api_url: str = "https://api.github.com"  # GitHub Enterprise: https://HOST/api/v3
    token_file: str = ""  # a token that may read the orgs' memberships
    ca_cert: str | None = None  # for a GitHub Enterprise with its own CA
    orgs: tuple[str, ...] = ()  # an active member of one is admitted
    teams: tuple[str, ...] = ()  # org/team-slug: an active member of one is admitted
    admin_teams: tuple[str, ...] = ()  # org/team-slug: members are admitted as admins


@dataclass(frozen=True)
class AdmissionSettings:
    secret_file: str = ""  # DRONE_ADMISSION_PLUGIN_SECRET
    logins: tuple[str, ...] = ()  # globs on the login
    email_domains: tuple[str, ...] = ()  # globs on the email's domain
    admins: tuple[str, ...] = ()  # globs on the login: admitted as admins
    github: GitHubSettings | None = None


@dataclass(frozen=True)
class NamedRule:
    """When every glob matches the caller (a Bitbucket step, a Woodpecker
    pipeline), the caller gets these names."""

    when: tuple[tuple[str, str], ...]
    secrets: tuple[Reference, ...]  # each reference carries its NAME


@dataclass(frozen=True)
class BitbucketSettings:
    issuer: str = ""  # https://api.bitbucket.org/2.0/workspaces/<workspace>/pipelines-config/identity/oidc
    audience: str = ""  # ari:cloud:bitbucket::workspace/<workspace uuid>
    jwks_cache_seconds: float = 3600.0
    rules: tuple[NamedRule, ...] = ()
    policy: tuple[Rule, ...] | None = None  # None: the rules are the whole policy


@dataclass(frozen=True)
class WoodpeckerSettings:
    public_key_file: str = ""  # the PEM the Woodpecker server serves at /api/signature/public-key
    # The secret part of the door's path: Woodpecker's signature does not
    # cover the host, so only this tells requests for this door from
    # requests Woodpecker signed for another extension URL with its path.
    endpoint_token_file: str = ""
    rules: tuple[NamedRule, ...] = ()
    policy: tuple[Rule, ...] | None = None  # None: the rules are the whole policy


@dataclass(frozen=True)
class Settings:
    config: Config
    server: ServerSettings
    drone: DroneSettings | None = None
    admission: AdmissionSettings | None = None
    bitbucket: BitbucketSettings | None = None
    woodpecker: WoodpeckerSettings | None = None

    @property
    def path(self) -> str:
        return self.config.path or "the config"


@dataclass(frozen=True)
class Keys:
    """The shared secrets, read from their files, and the public key that
    signs Woodpecker's requests. Never printed."""

    drone: bytes = b""
    admission: bytes = b""
    github_token: str = ""
    woodpecker: Ed25519PublicKey | None = None
    woodpecker_endpoint_token: str = ""  # /woodpecker/secrets/<this>

    def __repr__(self) -> str:
        return "Keys(<hidden>)"


def load(path: str, *, nomad_task: bool = False) -> tuple[Settings, Keys]:
    """The settings in ``path`` and the secrets they name, every file held
    to the trust rules (with ``nomad_task``, the files but not the
    directories above them: see ``config.load_file``)."""
    check = f"nomad-secrets serve --config {path}{' --nomad-task' if nomad_task else ''} --check"
    config = config_module.load_file(path, ancestors=not nomad_task, check=check)
    settings = parse_settings(config)
    ancestors = not nomad_task
    server = settings.server
    if server.tls_key:
        config_module.require_trusted(server.tls_key, "file of server.tls_key", ancestors=ancestors)
        _private(server.tls_key, "server.tls_key")
        _readable(server.tls_cert or "", "server.tls_cert", path)
    vault = settings.config.vault
    for key in ("token_file", "secret_id_file", "client_key"):  # trusted by config.load_file
        if getattr(vault, key):
            _private(getattr(vault, key), f"vault.{key}")
    keys = Keys()
    if settings.drone is not None:
        keys = replace(keys, drone=_secret(settings.drone.secret_file, "drone.secret_file", ancestors))
    if settings.admission is not None:
        secret = _secret(settings.admission.secret_file, "admission.secret_file", ancestors)
        keys = replace(keys, admission=secret)
        github = settings.admission.github
        if github is not None:
            token = _secret(github.token_file, "admission.github.token_file", ancestors, minimum=1)
            if not re.fullmatch(rb"[\x21-\x7e]+", token):
                raise ConfigError(
                    f"the file of admission.github.token_file ({github.token_file}) must hold one token"
                )
            keys = replace(keys, github_token=token.decode("ascii"))
    if settings.woodpecker is not None:
        woodpecker = settings.woodpecker
        public_key = _public_key(woodpecker.public_key_file, "woodpecker.public_key_file", ancestors)
        token = _secret(woodpecker.endpoint_token_file, "woodpecker.endpoint_token_file", ancestors)
        if not _URL_TOKEN.match(token):
            raise ConfigError(
                f"the file of woodpecker.endpoint_token_file ({woodpecker.endpoint_token_file}) must hold"
                " one token of letters, digits, - and _ (it goes in the endpoint's path), e.g."
                f" openssl rand -hex 32 > {woodpecker.endpoint_token_file}"
            )
        keys = replace(keys, woodpecker=public_key, woodpecker_endpoint_token=token.decode("ascii"))
    return settings, keys


def parse_settings(config: Config) -> Settings:
    """Check the server's sections of ``config`` (no file is read)."""
    path = config.path or "the config"
    tables = config.server_tables
    if not {"drone", "admission", "bitbucket", "woodpecker"} & set(tables):
        raise ConfigError(
            f"nothing to serve in {path}: add [drone] (Drone's secret extension), [admission]"
            " (Drone's admission extension), [bitbucket] (Bitbucket Pipelines) or [woodpecker]"
            " (Woodpecker's secret extension); docs/ci.md"
        )
    server = _server(_table(tables, "server", path), path)
    settings = Settings(config=config, server=server)
    if "drone" in tables:
        settings = replace(settings, drone=_drone(_table(tables, "drone", path), path))
    if "admission" in tables:
        settings = replace(settings, admission=_admission(_table(tables, "admission", path), path))
    if "bitbucket" in tables:
        settings = replace(settings, bitbucket=_bitbucket(_table(tables, "bitbucket", path), path))
    if "woodpecker" in tables:
        settings = replace(settings, woodpecker=_woodpecker(_table(tables, "woodpecker", path), path))
    if config.vault.auth_method == "jwt":
        raise ConfigError(
            f'vault.auth_method = "jwt" in {path} logs in with a Nomad job\'s token, which the server'
            " has not: log the server in with token, approle or cert"
        )
    if config.aws.web_identity_role_arn:
        raise ConfigError(
            f"aws.web_identity_role_arn in {path} needs a Nomad job's token, which the server has not:"
            " give the server AWS credentials of its own (static keys or the node's instance profile)"
        )
    return settings


# --- [server] ----------------------------------------------------------------


def _server(table: dict[str, Any], path: str) -> ServerSettings:
    share_set = "max_connections_per_peer" in table
    server = config_module.build_settings(ServerSettings, table, "server", path)
    host, colon, port = server.listen.rpartition(":")
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"server.listen in {path} is {server.listen!r}; write host:port, e.g. 0.0.0.0:8443")
    if bool(server.tls_cert) != bool(server.tls_key):
        raise ConfigError(f"server.tls_cert and server.tls_key in {path} go together; set both")
    if not server.tls_cert and not server.plain_http:
        raise ConfigError(
            f"the server in {path} has no TLS: set server.tls_cert and server.tls_key, or"
            " plain_http = true when a TLS proxy in front of it, or loopback, keeps the secrets private"
        )
    if server.tls_cert and server.plain_http:
        raise ConfigError(f"server.plain_http in {path} contradicts server.tls_cert; keep one")
    if server.store not in SCHEMES:
        raise ConfigError(f"server.store in {path} is {server.store!r}; use one of {', '.join(SCHEMES)}")
    for key, low, high in (
        ("request_seconds", 0.1, 300),
        ("header_seconds", 0.1, 300),
        ("max_body_bytes", 1024, 16 * 1024 * 1024),
        ("max_connections", 1, 100_000),
        ("max_connections_per_peer", 1, 100_000),
        ("max_concurrent_reads", 1, 1024),
        ("shutdown_seconds", 0, 3600),
        ("clock_skew_seconds", 1, 3600),
    ):
        value = getattr(server, key)
        if not low <= value <= high:
            raise ConfigError(f"server.{key} in {path} is {value}; it must be between {low:g} and {high:g}")
    # A peer holds its share and a few connections more (listen.py): at a
    # quarter, two peers hold about half of all, never every one.
    quarter = max(1, server.max_connections // 4)
    if not share_set:
        server = replace(server, max_connections_per_peer=min(server.max_connections_per_peer, quarter))
    elif server.max_connections_per_peer > quarter:
        raise ConfigError(
            f"server.max_connections_per_peer in {path} is {server.max_connections_per_peer}, more than a"
            f" quarter of server.max_connections ({server.max_connections}): two addresses could hold"
            " half of all connections, and a few every one; lower it, or raise max_connections to at"
            " least 4 times it (each connection is an open file: mind ulimit -n)"
        )
    return server


# --- [drone] -----------------------------------------------------------------


def _drone(table: dict[str, Any], path: str) -> DroneSettings:
    rules = table.pop("policy", None)
    config_module.reject_unknown(table, {"secret_file"}, "drone", path)
    drone = config_module.build_settings(DroneSettings, table, "drone", path)
    _required(drone.secret_file, "drone.secret_file", path)
    if rules is None:
        raise ConfigError(
            f"[drone] in {path} has no [[drone.policy]], so every request would be denied: add a rule"
            ' such as repo = "acme/*" with allow = ["aws-sm:ci/{repo}/**"] (docs/ci.md)'
        )
    tables = [_fork_glob(t, "drone.policy", path) for t in _array(rules, "drone.policy", path)]
    return replace(drone, policy=_rules(tables, DRONE_FIELDS, DRONE_PLACEHOLDERS, "drone.policy", path))


# --- [admission] -------------------------------------------------------------


def _admission(table: dict[str, Any], path: str) -> AdmissionSettings:
    github_table = table.pop("github", None)
    admission = _build_with_lists(
        AdmissionSettings, table, ("logins", "email_domains", "admins"), "admission", path
    )
    _required(admission.secret_file, "admission.secret_file", path)
    admission = replace(
        admission,
        logins=tuple(g.lower() for g in admission.logins),
        email_domains=tuple(g.lower() for g in admission.email_domains),
        admins=tuple(g.lower() for g in admission.admins),
    )
    if github_table is not None:
        if not isinstance(github_table, dict):
            raise ConfigError(f"admission.github in {path} must be a table")
        github = _build_with_lists(
            GitHubSettings, github_table, ("orgs", "teams", "admin_teams"), "admission.github", path
        )
        _required(github.token_file, "admission.github.token_file", path)
        if not re.fullmatch(r"https?://[^/?#\s]+(/[^?#\s]*)?", github.api_url):
            raise ConfigError(
                f"admission.github.api_url in {path} is {github.api_url!r}; write https://api.github.com"
                " or https://HOST/api/v3 (GitHub Enterprise)"
            )
        if not (github.orgs or github.teams or github.admin_teams):
            raise ConfigError(f"admission.github in {path} names no orgs, teams or admin_teams")
        for org in github.orgs:
            if not _ORG.match(org):
                raise ConfigError(f"admission.github.orgs in {path}: {org!r} is not a GitHub org name")
        for team in (*github.teams, *github.admin_teams):
            if not _TEAM.match(team):
                raise ConfigError(
                    f"admission.github in {path}: the team {team!r} is not org/team-slug, e.g. acme/ci-users"
                )
        admission = replace(admission, github=github)
    if not (admission.logins or admission.email_domains or admission.admins or admission.github):
        raise ConfigError(
            f"[admission] in {path} admits no one: set logins, email_domains, admins or"
            ' [admission.github] (logins = ["*"] admits every user)'
        )
    return admission


# --- [bitbucket] -------------------------------------------------------------


def _bitbucket(table: dict[str, Any], path: str) -> BitbucketSettings:
    rules = table.pop("rule", None)
    policy = table.pop("policy", None)
    config_module.reject_unknown(table, {"issuer", "audience", "jwks_cache_seconds"}, "bitbucket", path)
    bitbucket = config_module.build_settings(BitbucketSettings, table, "bitbucket", path)
    _required(bitbucket.issuer, "bitbucket.issuer", path)
    _required(bitbucket.audience, "bitbucket.audience", path)
    if not re.fullmatch(r"https?://[^/?#\s]+(/[^?#\s]*)?", bitbucket.issuer):
        raise ConfigError(
            f"bitbucket.issuer in {path} is {bitbucket.issuer!r}; write"
            " https://api.bitbucket.org/2.0/workspaces/<workspace>/pipelines-config/identity/oidc"
        )
    if not 60 <= bitbucket.jwks_cache_seconds <= 86400:
        raise ConfigError(f"bitbucket.jwks_cache_seconds in {path} must be between 60 and 86400")
    if rules is None:
        raise ConfigError(
            f"[bitbucket] in {path} has no [[bitbucket.rule]], so no step would get anything:"
            ' add one, e.g. repository = "{uuid}" with secrets = { NAME = "aws-sm:ci/x#field" }'
        )
    parsed = _named_rules(_array(rules, "bitbucket.rule", path), BITBUCKET_FIELDS, "bitbucket.rule", path)
    parsed = tuple(replace(r, when=tuple(normalize_bitbucket(dict(r.when)).items())) for r in parsed)
    guard = None
    if policy is not None:
        tables = _array(policy, "bitbucket.policy", path)
        for table_ in tables:
            for key in BITBUCKET_UUID_FIELDS:
                if isinstance(table_.get(key), str):
                    table_[key] = bitbucket_uuid(table_[key])
        guard = _rules(tables, BITBUCKET_FIELDS, BITBUCKET_PLACEHOLDERS, "bitbucket.policy", path)
    return replace(bitbucket, rules=parsed, policy=guard)


def bitbucket_uuid(value: str) -> str:
    """A Bitbucket UUID (or a glob on one) without its braces, lower case."""
    if value.startswith("{") and value.endswith("}"):
        value = value[1:-1]
    return value.lower()


def normalize_bitbucket(values: Mapping[str, str]) -> dict[str, str]:
    return {k: bitbucket_uuid(v) if k in BITBUCKET_UUID_FIELDS else v for k, v in values.items()}


# --- [woodpecker] ------------------------------------------------------------


def _woodpecker(table: dict[str, Any], path: str) -> WoodpeckerSettings:
    rules = table.pop("rule", None)
    policy = table.pop("policy", None)
    config_module.reject_unknown(table, {"public_key_file", "endpoint_token_file"}, "woodpecker", path)
    woodpecker = config_module.build_settings(WoodpeckerSettings, table, "woodpecker", path)
    _required(woodpecker.public_key_file, "woodpecker.public_key_file", path)
    if not woodpecker.endpoint_token_file:
        raise ConfigError(
            f"woodpecker.endpoint_token_file is missing in {path}: the door answers only at"
            " /woodpecker/secrets/<the token in that file>; write one with"
            " openssl rand -hex 32 > /etc/nomad-secrets/woodpecker-endpoint-token (docs/ci.md)"
        )
    if rules is None:
        raise ConfigError(
            f"[woodpecker] in {path} has no [[woodpecker.rule]], so no pipeline would get anything:"
            ' add one, e.g. repo = "acme/*" with event = "push", branch = "main" and'
            ' secrets = { docker_password = "aws-sm:ci/docker#password" }'
        )
    tables = [_fork_glob(t, "woodpecker.rule", path) for t in _array(rules, "woodpecker.rule", path)]
    parsed = _named_rules(tables, WOODPECKER_FIELDS, "woodpecker.rule", path)
    guard = None
    if policy is not None:
        guards = [_fork_glob(t, "woodpecker.policy", path) for t in _array(policy, "woodpecker.policy", path)]
        guard = _rules(guards, WOODPECKER_FIELDS, WOODPECKER_PLACEHOLDERS, "woodpecker.policy", path)
    return replace(woodpecker, rules=parsed, policy=guard)


def _public_key(path: str, key: str, ancestors: bool) -> Ed25519PublicKey:
    """An ed25519 public key from its PEM file. Not a secret, but whoever
    may change the file may sign requests: it is held to the trust rules."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    config_module.require_trusted(path, f"file of {key}", ancestors=ancestors)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PUBLIC_KEY_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the file of {key} ({path}): {exc.strerror}") from None
    try:
        public_key = load_pem_public_key(data) if len(data) <= MAX_PUBLIC_KEY_BYTES else None
    except (ValueError, TypeError):
        public_key = None
    if not isinstance(public_key, Ed25519PublicKey):
        raise ConfigError(
            f"the file of {key} ({path}) does not hold an ed25519 public key in PEM: write what your"
            " Woodpecker server serves to a signed-in user, e.g. curl -fsS -H 'Authorization: Bearer"
            f" <personal access token>' https://<woodpecker>/api/signature/public-key > {path}"
        )
    return public_key


# --- shared ------------------------------------------------------------------


def _fork_glob(table: dict[str, Any], where: str, path: str) -> dict[str, Any]:
    """``fork = true`` or ``false`` (the default) as the glob on the caller's
    fork field: forks are denied unless a rule says ``fork = true``."""
    fork = table.get("fork", False)
    if not isinstance(fork, bool):
        raise ConfigError(f"{where}.fork in {path} must be true or false (false by default)")
    table["fork"] = "true" if fork else "false"
    return table


def _named_rules(
    tables: list[dict[str, Any]], names: tuple[str, ...], where: str, path: str
) -> tuple[NamedRule, ...]:
    """Rules that give NAME = reference pairs: globs on the caller's fields
    and ``secrets``, a table of NAME = "reference"."""
    parsed = []
    for number, rule_table in enumerate(tables, start=1):
        here = f"{where} #{number}"
        config_module.reject_unknown(rule_table, {*names, "secrets"}, here, path)
        when = _globs(rule_table, names, here, path)
        secrets = rule_table.get("secrets")
        if not isinstance(secrets, dict) or not secrets:
            raise ConfigError(f'{here}.secrets in {path} must be a table of NAME = "reference"')
        refs = []
        for name, text in secrets.items():
            if not _ENV_NAME.match(name):
                raise ConfigError(f"{here}.secrets in {path}: {name!r} is not a variable name (A-Z, 0-9, _)")
            if not isinstance(text, str):
                raise ConfigError(f"{here}.secrets.{name} in {path} must be a reference string")
            try:
                refs.append(parse_reference(text, name=name))
            except RequestError as exc:
                raise ConfigError(f"{here}.secrets.{name} in {path}: {exc.message}") from None
        parsed.append(NamedRule(when=tuple(when.items()), secrets=tuple(refs)))
    return tuple(parsed)


def _rules(
    tables: list[dict[str, Any]],
    names: tuple[str, ...],
    placeholders: Mapping[str, int],
    where: str,
    path: str,
) -> tuple[Rule, ...]:
    """Policy rules: globs on the caller's fields, and allow patterns (policy.rule)."""
    out = []
    for number, table in enumerate(tables, start=1):
        here = f"{where} #{number}"
        config_module.reject_unknown(table, {*names, "allow"}, here, path)
        allow = table.get("allow")
        if not isinstance(allow, list) or not all(isinstance(p, str) and p for p in allow):
            raise ConfigError(f"{here}.allow in {path} must be a list of patterns such as 'aws-sm:ci/**'")
        try:
            out.append(rule(tuple(allow), placeholders, **_globs(table, names, here, path)))
        except ValueError as exc:
            raise ConfigError(f"{here}.allow in {path}: {exc}") from None
    return tuple(out)


def _globs(table: dict[str, Any], names: tuple[str, ...], where: str, path: str) -> dict[str, str]:
    globs = {key: table[key] for key in names if key in table}
    for key, glob in globs.items():
        if not isinstance(glob, str):
            raise ConfigError(f"{where}.{key} in {path} must be a string glob")
    return globs


def _array(value: Any, where: str, path: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ConfigError(f"{where} in {path} must be an array of tables: write [[{where}]]")
    for number, table in enumerate(value, start=1):  # as written, before defaults are filled in
        config_module.allow_last(table, f"{where} #{number}", path)
    return [dict(t) for t in value]


def _table(tables: Mapping[str, Any], key: str, path: str) -> dict[str, Any]:
    value = tables.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{key} in {path} must be a table: write [{key}]")
    return dict(value)


def _required(value: str, key: str, path: str) -> None:
    if not value:
        raise ConfigError(f"{key} is missing in {path}")


T = TypeVar("T")


def _build_with_lists(
    cls: type[T], table: dict[str, Any], lists: tuple[str, ...], where: str, path: str
) -> T:
    """``config.build_settings`` for a dataclass with lists of strings too."""
    config_module.reject_unknown(table, {f.name for f in fields(cls)}, where, path)  # type: ignore[arg-type]
    values: dict[str, tuple[str, ...]] = {}
    for key in lists:
        if key in table:
            items = table.pop(key)
            if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
                raise ConfigError(f"{where}.{key} in {path} must be a list of strings")
            values[key] = tuple(items)
    return replace(config_module.build_settings(cls, table, where, path), **values)  # type: ignore[type-var]


def _secret(path: str, key: str, ancestors: bool, minimum: int = MIN_SECRET_BYTES) -> bytes:
    """A shared secret from its file (trusted like every secret file, and
    private), the trailing newline dropped."""
    config_module.require_trusted(path, f"file of {key}", ancestors=ancestors)
    _private(path, key)
    try:
        with open(path, "rb") as f:
            secret = f.read(MAX_SECRET_BYTES + 1).rstrip(b"\r\n")
    except OSError as exc:
        raise ConfigError(f"cannot read the file of {key} ({path}): {exc.strerror}") from None
    if len(secret) > MAX_SECRET_BYTES:
        raise ConfigError(f"the file of {key} ({path}) is larger than {MAX_SECRET_BYTES} bytes")
    if len(secret) < minimum:
        raise ConfigError(
            f"the secret in the file of {key} ({path}) has {len(secret)} bytes; it needs at least"
            f" {minimum} (e.g. openssl rand -hex 16 > {path})"
        )
    return secret


def _private(path: str, key: str) -> None:
    """A file that holds a secret must not be readable by everyone: any
    user of the host (or of a task's directories, which Nomad makes 0777)
    could take the secret and sign requests or read the stores as the
    server. A group read bit is the operator's choice (Debian's ssl-cert
    group for TLS keys), so it is allowed. The file already passed the trust
    rules (not a symlink), so its mode is its own."""
    try:
        mode = os.stat(path).st_mode & 0o7777
    except OSError as exc:
        raise ConfigError(f"cannot check the file of {key} ({path}): {exc.strerror}") from None
    if mode & 0o004:
        raise ConfigError(
            f"refusing to run: the file of {key} ({path}) is readable by everyone (mode {mode:04o}), and"
            f" it holds a secret; chmod o-r {path} (600, or 640 for a group you choose)"
        )


def warnings(settings: Settings) -> list[str]:
    """What is allowed but risky, for ``serve`` and ``serve --check`` to say."""
    server = settings.server
    found = []
    if server.plain_http and not _loopback(server.host):
        found.append(
            f"server.plain_http = true on {server.listen}, which is not a loopback address: Drone's"
            " signed requests, Bitbucket's OIDC tokens and the secrets in the answers cross the network"
            " in clear text, for anyone on the path to read (a token can be replayed until it expires);"
            " keep plain HTTP only behind a TLS proxy on this host or a private link to it, or set"
            " server.tls_cert and server.tls_key (docs/ci.md)"
        )
    return found


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: where it leads is not known here
        return False


def _readable(path: str, key: str, config_path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot read {key} ({path}) named in {config_path}: {exc.strerror}") from None
