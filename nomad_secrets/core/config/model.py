"""The configuration's data: one frozen dataclass per section, and the
constants the reader and the parser share.

Every key of the file is a field here: the parser accepts exactly these
names (``parser.build_settings``), so a new key is a new field with its
default, and nothing else to register.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

from nomad_secrets.core.policy import Rule
from nomad_secrets.core.schemes import DECLARED, SCHEMES, section_of
from nomad_secrets.process.deadline import DEFAULT_SECONDS
from nomad_secrets.process.errors import ConfigError

CONFIG_FILE_NAME = "nomad-secrets.toml"
SYSTEM_CONFIG = "/etc/nomad-secrets/config.toml"
# Provider names that mean a store with no config at all.
BUILTIN_PROVIDERS = {"aws": "aws-sm", "aws-sm": "aws-sm", "aws-ssm": "aws-ssm"}
# The largest plugin.max_output_bytes (agent/client.py's MAX_ANSWER holds it).
MAX_OUTPUT_BYTES = 64 * 1024 * 1024
# The node agent's cache, per provider (cache_max_bytes): a few MiB by default.
DEFAULT_CACHE_BYTES = 4 * 1024 * 1024
MAX_CACHE_SECONDS = 86400.0
# Nomad matches its own providers first: files with these names never run.
RESERVED_NAMES = ("nomad", "vault")
# The sections of `nomad-secrets serve` (docs/ci.md).
SERVER_SECTIONS = ("server", "drone", "admission", "bitbucket", "woodpecker")


@dataclass(frozen=True)
class PluginSettings:
    deadline_seconds: float = DEFAULT_SECONDS
    debug_log: str | None = None
    # The answer's size in bytes of JSON: Nomad's client buffers and decodes
    # it whole, and each value becomes an environment string of the task.
    max_output_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class CacheSettings:
    """What every store section has: the node agent's memory cache of its
    values (docs/agent.md): seconds a value is kept after it was read (0:
    off), its bound in bytes, and how long past that a value may stand in
    for a store that is down."""

    cache_seconds: float = 0.0
    cache_max_bytes: int = DEFAULT_CACHE_BYTES
    stale_if_error_seconds: float = 0.0


@dataclass(frozen=True)
class AwsSettings(CacheSettings):
    # Keys naming files that hold secrets: none (VaultSettings has some).
    secret_files: ClassVar[tuple[str, ...]] = ()

    region: str | None = None
    endpoint_url: str | None = None  # every AWS service: a local server, a proxy
    endpoint_urls: dict[str, str] = field(default_factory=dict)  # per service, e.g. VPC endpoints
    # Static credentials; without them the node's default chain is used.
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    # May the job's env block choose the region (AWS_REGION)?
    job_region: bool = True
    # Workload identity: with this set, a fetch needs the job's token and
    # uses STS AssumeRoleWithWebIdentity with this role, never the node's
    # credentials. {namespace} and {job} are filled from Nomad's identity.
    web_identity_role_arn: str | None = None


VAULT_AUTH_METHODS = ("token", "approle", "cert", "jwt")


@dataclass(frozen=True)
class VaultSettings(CacheSettings):
    # Keys naming files that hold secrets: trust-checked when the config
    # loads (reader.load_file), refused to the fetch that uses one.
    secret_files: ClassVar[tuple[str, ...]] = ("token_file", "secret_id_file", "client_key")

    address: str | None = None  # https://vault.example:8200
    namespace: str | None = None  # X-Vault-Namespace (Vault Enterprise, OpenBao)
    # TLS: verification is always on; these add trust and a client cert.
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    # How the plugin gets a token: token (token_file), approle (role_id and
    # secret_id_file), cert (client_cert/client_key), or jwt (the job's
    # workload identity, NOMAD_WORKLOAD_TOKEN).
    auth_method: str = "token"
    auth_mount: str | None = None  # default: the method's name
    token_file: str | None = None
    role_id: str | None = None
    secret_id_file: str | None = None
    role: str | None = None  # jwt or cert role
    revoke_token: bool = True  # revoke a login's token when the fetch ends
    # KV mounts and their version (1 or 2); unlisted mounts are detected
    # with the sys/internal/ui/mounts preflight.
    kv_mounts: dict[str, int] = field(default_factory=dict)


# syslog(3)'s facility codes (RFC 5424, section 6.2.1).
SYSLOG_FACILITIES = {
    "auth": 4,
    "authpriv": 10,
    "daemon": 3,
    "user": 1,
    **{f"local{n}": 16 + n for n in range(8)},
}


@dataclass(frozen=True)
class AuditSettings:
    """A record per fetch (who, which references, outcome; never a value)."""

    syslog: bool = False  # to the node's syslog socket: journald, rsyslog
    syslog_socket: str = "/dev/log"
    syslog_facility: str = "authpriv"  # access to credentials: auth.log / secure
    file: str | None = None  # JSON lines, appended under the trust rules


@dataclass(frozen=True)
class MetricsSettings:
    # Prometheus text format, rewritten atomically after every fetch, for
    # node_exporter's textfile collector (it reads *.prom in its directory).
    file: str | None = None


@dataclass(frozen=True)
class AgentSettings:
    # The node agent (docs/agent.md): a fetch asks its plugin directory's
    # agent first, and the first fetch that finds none starts one, unless
    # this is false (then only an agent the operator runs, under systemd).
    auto: bool = True
    # A self-started agent stops after this long without a request (0: never).
    idle_exit_seconds: float = 600.0
    # Before 0.2 the agent listened where this said; now every plugin
    # directory's agent has its own socket (docs/agent.md, Upgrading):
    # kept so that an older config loads, and `check` says what to change.
    socket: str | None = None
    # Who besides root may ask an agent running as root: the Nomad client's
    # user, when it does not run as root (user names or numeric uids). They
    # are answered only for the job that a Nomad workload identity token,
    # verified against nomad_jwks_file, proves.
    users: list[str] = field(default_factory=list)
    # The Nomad cluster's JWKS (what /.well-known/jwks.json serves), for
    # the tokens of callers in ``users``.
    nomad_jwks_file: str | None = None


@dataclass(frozen=True)
class Provider:
    """What the executable called ``name`` reads: its store, and the store
    settings it uses for every reference (``vault:...`` in a reference means
    this provider's Vault). A ``[providers.NAME]`` section may set any key
    of ``[aws]`` (stores aws-sm, aws-ssm) or ``[vault]`` (store vault); what
    it leaves out comes from the top-level section."""

    name: str
    store: str
    aws: AwsSettings = field(default_factory=AwsSettings)
    vault: VaultSettings = field(default_factory=VaultSettings)
    own_keys: tuple[str, ...] = ()  # the store keys its own section sets

    @property
    def settings(self) -> Settings:
        """The settings its store reads: its section's, with its own keys."""
        return self.settings_for(self.store)

    def settings_for(self, store: str) -> Settings:
        """The settings this provider reads ``store`` with (a reference may
        name another store than the provider's own)."""
        settings: Settings = getattr(self, section_of(store))
        return settings


# The settings of a store, per config section (core/schemes.py says each
# store's section). A section is also a field of Config and of Provider.
Settings = Union[AwsSettings, VaultSettings]
SECTIONS: dict[str, type[Settings]] = {"aws": AwsSettings, "vault": VaultSettings}
if {scheme.section for scheme in DECLARED} - set(SECTIONS):  # a store with nowhere to read settings
    raise ImportError(f"a store's section has no settings class: {DECLARED} against {list(SECTIONS)}")

# Keys whose values are credentials: never shown (check blanks them).
SECRET_KEYS = ("secret_access_key", "session_token", "role_id")
# Keys that name where a store is, and the credentials that belong to it.
VAULT_CREDENTIAL_KEYS = ("token_file", "secret_id_file", "role_id", "client_cert", "client_key")


@dataclass(frozen=True)
class Config:
    path: str | None = None
    plugin: PluginSettings = field(default_factory=PluginSettings)
    aws: AwsSettings = field(default_factory=AwsSettings)
    vault: VaultSettings = field(default_factory=VaultSettings)
    providers: dict[str, Provider] = field(default_factory=dict)
    # None: no [[policy]]. With no config file, every job reads all (built-in
    # defaults); in a config file, nothing (require_policy says why).
    policy: tuple[Rule, ...] | None = None
    audit: AuditSettings = field(default_factory=AuditSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    agent: AgentSettings = field(default_factory=AgentSettings)
    # Secret files that failed the trust rules: file -> the message, raised
    # by a fetch that uses it (config.check_files).
    unusable_files: dict[str, str] = field(default_factory=dict)
    # The server's sections as TOML tables, unchecked here: the plugin never
    # uses them, and their checks live with the server (settings.py there).
    server_tables: dict[str, Any] = field(default_factory=dict)

    def keeps_values(self) -> bool:
        """Whether any store section, top-level or a provider's, has the node
        agent keep values (cache_seconds; stale_if_error_seconds only
        lengthens what is kept)."""
        sections = [self.aws, self.vault]
        sections += [s for p in self.providers.values() for s in (p.aws, p.vault)]
        return any(s.cache_seconds > 0 for s in sections)

    def provider(self, name: str) -> Provider:
        """What the executable called ``name`` reads by default, and with
        which settings."""
        if name in self.providers:
            return self.providers[name]
        if name in BUILTIN_PROVIDERS:
            return Provider(name=name, store=BUILTIN_PROVIDERS[name], aws=self.aws, vault=self.vault)
        where = self.path or f"{SYSTEM_CONFIG} (or {CONFIG_FILE_NAME} beside the plugin)"
        raise ConfigError(
            f"provider {name!r} is not configured: add [providers.{name}] with"
            f" store = one of {', '.join(SCHEMES)} to {where}, or install the"
            f" plugin under a built-in name ({', '.join(BUILTIN_PROVIDERS)})"
        )


OPEN_POLICY = '[[policy]]\nallow = ["*:**"]'


def require_policy(config: Config) -> None:
    """A config file without ``[[policy]]`` reads nothing for anyone.

    A file cut short (a rewrite in place caught midway, a copy that ran out
    of disk) usually loses its end, where the rules are: read as "no policy,
    every job reads everything", the cut would grant more than the whole
    file does. So allowing everything must be written out as a rule."""
    if config.path is not None and config.policy is None:
        raise ConfigError(
            f"the config file {config.path} has no [[policy]], so no job may read anything:"
            " add rules for who reads what (docs/policy.md); to let every job read everything"
            ' this node\'s credentials can read, say so with a rule: [[policy]] allow = ["*:**"]'
        )
