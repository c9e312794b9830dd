"""The operator's configuration: one TOML file a job cannot point elsewhere.

Looked up, in order, as ``nomad-secrets.toml`` beside the invoked executable
(the plugin directory) and ``/etc/nomad-secrets/config.toml``; never from an
environment variable, which the job writes. No file at all means built-in
defaults, so the spec's example job (provider ``aws``) needs no config.

Shape::

    [plugin]            # the process: deadline, debug log
    [aws]               # the AWS connection, for aws-sm: and aws-ssm:
    [vault]             # the Vault / OpenBao connection, for vault:
    [providers.NAME]    # what the executable named NAME reads by default, and
                        # any [aws] or [vault] key in place of the top-level one
    [[policy]]          # which jobs may read which references (policy.py)
    [audit]             # a record per fetch: syslog (journald) and/or a file
    [metrics]           # counters and a histogram for node_exporter's textfile collector
    [server] [drone] [admission] [bitbucket] [woodpecker]
                        # `nomad-secrets serve`, the CI front doors: kept
                        # as read here, checked by nomad_secrets/server/

Every key is declared by a dataclass below; an unknown key is an error that
names the key and the file, so that a typo is seen, not ignored.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

from nomad_secrets.deadline import DEFAULT_SECONDS
from nomad_secrets.errors import ConfigError
from nomad_secrets.policy import Rule, rule
from nomad_secrets.trust import Untrusted, untrusted
from nomad_secrets.trust import check as check_trust

CONFIG_FILE_NAME = "nomad-secrets.toml"
SYSTEM_CONFIG = "/etc/nomad-secrets/config.toml"
STORES = ("aws-sm", "aws-ssm", "vault")
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
class AwsSettings:
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
    # The node agent's memory cache of this store's values (docs/agent.md):
    # seconds a value is kept after it was read (0: off), its bound in bytes,
    # and how long past that a value may stand in for a store that is down.
    cache_seconds: float = 0.0
    cache_max_bytes: int = DEFAULT_CACHE_BYTES
    stale_if_error_seconds: float = 0.0


VAULT_AUTH_METHODS = ("token", "approle", "cert", "jwt")


@dataclass(frozen=True)
class VaultSettings:
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
    # The node agent's memory cache of this store's values (docs/agent.md):
    # seconds a value is kept after it was read (0: off), its bound in bytes,
    # and how long past that a value may stand in for a store that is down.
    cache_seconds: float = 0.0
    cache_max_bytes: int = DEFAULT_CACHE_BYTES
    stale_if_error_seconds: float = 0.0


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
            f" store = one of {', '.join(STORES)} to {where}, or install the"
            f" plugin under a built-in name ({', '.join(BUILTIN_PROVIDERS)})"
        )


def find_config(executable: str) -> str | None:
    """The config file for the executable at ``executable``, if any.

    ``executable`` is the path Nomad ran (argv[0]), not a resolved symlink:
    the plugin directory is where the operator put the name.
    """
    beside = os.path.join(os.path.dirname(os.path.abspath(executable)), CONFIG_FILE_NAME)
    import time

    give_up = time.monotonic() + ABSENT_WAIT_SECONDS
    first_seen: dict[str, int] = {}
    while True:
        for candidate in (beside, SYSTEM_CONFIG):
            if os.path.lexists(candidate):
                return candidate
            # Missing. A deploy that removes the file, then writes the new
            # one (`install -m`, `rm; cp`) shows a moment without it, which
            # must read neither as "no config" (every job reads everything)
            # nor as the next place's config: while its directory is
            # changing, wait here.
            if _being_redeployed(os.path.dirname(candidate), first_seen):
                break
        else:
            return None
        if time.monotonic() > give_up:
            raise ConfigError(
                f"no config file at {candidate}, and entries of {os.path.dirname(candidate)} kept being"
                f" created or removed for {ABSENT_WAIT_SECONDS:g} s: deploy the config by renaming a new"
                " file into place (docs/configuration.md), and keep other programs' files out of that"
                " directory"
            )
        time.sleep(ABSENT_POLL_SECONDS)


# A config directory whose entries changed less than ABSENT_QUIET_SECONDS
# ago, or change while a fetch looks, with no config in it: being
# redeployed; looked at again for up to ABSENT_WAIT_SECONDS.
ABSENT_QUIET_SECONDS, ABSENT_WAIT_SECONDS, ABSENT_POLL_SECONDS = 0.25, 1.0, 0.02


def _being_redeployed(directory: str, first_seen: dict[str, int]) -> bool:
    import time

    try:
        st = os.stat(directory)
    except OSError:
        return False
    if first_seen.setdefault(directory, st.st_mtime_ns) != st.st_mtime_ns:
        return True  # changed while we look
    age = time.time() - st.st_mtime
    return 0 <= age < ABSENT_QUIET_SECONDS  # a time in the future (a clock stepped back) is no sign


def provider_name(executable: str) -> str:
    """The provider name is the file name Nomad ran (a symlink counts)."""
    name = os.path.basename(executable)
    return "nomad-secrets" if name == "__main__.py" else name


def load(executable: str, *, cache: dict[tuple[str, bytes], Config] | None = None) -> Config:
    """The config for ``executable``, once every file it trusts is checked:
    the plugin directory (a file dropped there would be our config) and the
    config file, here; the secret files it names are checked here too, but
    a problem with one is kept in ``unusable_files`` and raised only by a
    fetch that uses that file (``check_files``): one provider's missing
    token file must not stop every other provider on the node. ``cache`` (a
    long-lived process's) keeps parsed configs by path and content: the
    checks and the read happen every time."""
    plugin_dir = os.path.dirname(os.path.abspath(executable))
    _check_trust(plugin_dir, "plugin directory")
    path = find_config(executable)
    if path is None:
        return Config()
    try:
        return load_file(path, cache=cache, strict=False)
    except ConfigError:
        if os.path.lexists(path):
            raise
    # Gone between the look and the read (a deploy that removes, then
    # writes): look once more, waiting for it as find_config does.
    path = find_config(executable)
    return Config() if path is None else load_file(path, cache=cache, strict=False)


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


def check_files(config: Config, vault: VaultSettings) -> None:
    """Raise the trust problem of a secret file ``vault`` uses, if any."""
    for key in SECRET_FILE_KEYS:
        problem = config.unusable_files.get(getattr(vault, key) or "")
        if problem:
            raise ConfigError(problem)


SECRET_FILE_KEYS = ("token_file", "secret_id_file", "client_key")


def load_file(
    path: str,
    *,
    cache: dict[tuple[str, bytes], Config] | None = None,
    ancestors: bool = True,
    strict: bool = True,
) -> Config:
    """The config in ``path``, once it and the secret files it names are
    trusted. ``ancestors=False`` checks the files but not the directories
    above them: for ``serve --nomad-task``, whose files are in a Nomad task's
    directories (0777 by Nomad's design, the task's isolation guards them)."""
    _check_trust(path, "config file", ancestors=ancestors)
    text = _settled_read(path)
    if not text.strip():
        # Emptied in place and left so (a writer that died, `: > file`):
        # it must not read as "no config", every job reading everything.
        raise ConfigError(
            f"the config file {path} is empty: write the new config to a temporary file and rename it"
            " into place (or remove the file for built-in defaults)"
        )
    config = cache.get((path, text)) if cache is not None else None
    if config is None:
        config = parse(text, path)
        if cache is not None:
            if len(cache) >= 8:  # rewritten files leave old entries behind
                cache.clear()
            cache[(path, text)] = config
    unusable: dict[str, str] = {}
    for where, vault in [("vault", config.vault)] + [
        (f"providers.{p.name}", p.vault) for p in config.providers.values() if p.store == "vault"
    ]:
        for key in SECRET_FILE_KEYS:
            secret_file = getattr(vault, key)
            if secret_file and secret_file not in unusable:
                try:
                    _check_trust(secret_file, f"file of {where}.{key}", ancestors=ancestors)
                except ConfigError as exc:
                    if strict:
                        raise
                    unusable[secret_file] = exc.message
    return replace(config, unusable_files=unusable) if unusable else config


WRITER_WAIT_SECONDS = 2.0  # a config still open for writing after this: refused
WRITER_POLL_SECONDS = 0.02


def _settled_read(path: str) -> bytes:
    """The file's bytes, read while no process has it open for writing.

    ``cp``, ``cat >`` and most tools rewrite a file in place: truncate, then
    write, then close. A read in between sees part of the new file (an
    empty file is waited for too, then refused by load_file). A read
    lease (fcntl F_SETLEASE) is granted only while no process has the file
    open for writing, and a writer's open waits while we hold it: the bytes
    are the whole of a finished write. Where leases are not to be had (NFS,
    a thread with SIGIO not ignored) the file's size and mtime must not
    change across the read. Either way a file cut short by a writer that
    died keeps its cut: ``require_policy`` and the rule order check make
    sure such a cut never grants more (docs/configuration.md)."""
    import fcntl
    import stat
    import time

    give_up = time.monotonic() + WRITER_WAIT_SECONDS
    while True:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise ConfigError(f"cannot read the config file {path}: {exc.strerror}") from None
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                # A FIFO would block the read until Nomad's SIGTERM.
                raise ConfigError(f"the config file {path} is not a regular file; write a file there")
            leased = _ignoring_lease_breaks() and _lease(fd, fcntl.F_RDLCK)
            if leased is None:  # a writer has it open: wait for its close
                text = None
            else:
                try:
                    text = _read_all(fd, path)
                    after = os.fstat(fd)
                finally:
                    if leased:
                        _lease(fd, fcntl.F_UNLCK)
                if not leased and (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
                    text = None  # changed under the read
        finally:
            os.close(fd)
        late = time.monotonic() > give_up
        # Empty: most likely truncated by one write and about to be filled
        # by the next (`: > f; cat new > f`); load_file refuses it if it stays.
        if text is not None and (text.strip() or late):
            return text
        if late:
            raise ConfigError(
                f"the config file {path} stayed open for writing for {WRITER_WAIT_SECONDS:g} s"
                f" (`fuser -v {path}` shows the process): write the new config to a temporary"
                " file in the same directory and rename it into place"
            )
        time.sleep(WRITER_POLL_SECONDS)


def _read_all(fd: int, path: str) -> bytes:
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror}") from None
    return b"".join(chunks)


def _lease(fd: int, kind: int) -> bool | None:
    """True: the lease is ours (or let go); None: a process has the file open
    for writing; False: no lease on this file system, or not ours to take."""
    import errno
    import fcntl

    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, kind)
    except OSError as exc:
        return None if exc.errno == errno.EAGAIN else False
    return True


def _ignoring_lease_breaks() -> bool:
    """A writer opening the file while we hold the lease sends us SIGIO, whose
    default is to end the process: leases are for processes that ignore it
    (the executable and the agent do, from their start)."""
    import signal
    import threading

    if signal.getsignal(signal.SIGIO) == signal.SIG_IGN:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGIO, signal.SIG_IGN)
    return True


def _check_trust(path: str, what: str, *, ancestors: bool = True) -> None:
    try:
        if ancestors:
            check_trust(path, what)
        else:
            problem = untrusted(path, what)
            if problem:
                raise Untrusted(problem)
    except Untrusted as exc:
        raise ConfigError(f"refusing to run: {exc}") from None


def parse(text: bytes, path: str) -> Config:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python 3.10 only
        import tomli as tomllib
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"the config file {path} is not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the config file {path} is not valid TOML: {exc}") from None
    known = {"plugin", "aws", "vault", "providers", "policy", "agent", "audit", "metrics", *SERVER_SECTIONS}
    _reject_unknown(data, known, "", path)
    aws = _build(AwsSettings, _table(data, "aws", "", path), "aws", path)
    vault = _build(VaultSettings, _table(data, "vault", "", path), "vault", path)
    _check_vault(vault, "vault", path)
    _check_cache(aws, "aws", path)
    _check_cache(vault, "vault", path)
    providers: dict[str, Provider] = {}
    for name, table in _table(data, "providers", "", path).items():
        where = f"providers.{name}"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} in {path} must be a table")
        if name in RESERVED_NAMES:
            raise ConfigError(
                f"{where} in {path}: Nomad never runs a plugin named {name!r}"
                " (its built-in provider wins); pick another name"
            )
        providers[name] = _provider(name, table, aws, vault, path)
    plugin = _build(PluginSettings, _table(data, "plugin", "", path), "plugin", path)
    if not 0 < plugin.deadline_seconds <= 3600:
        raise ConfigError(f"plugin.deadline_seconds in {path} must be between 0 and 3600")
    if not 1024 <= plugin.max_output_bytes <= MAX_OUTPUT_BYTES:
        raise ConfigError(f"plugin.max_output_bytes in {path} must be between 1024 and 67108864 (64 MiB)")
    agent = _build(AgentSettings, _table(data, "agent", "", path), "agent", path)
    if agent.socket is not None and not os.path.isabs(agent.socket):
        raise ConfigError(
            f"agent.socket in {path} must be an absolute path, such as /run/nomad-secrets/agent.sock"
        )
    if not 0 <= agent.idle_exit_seconds <= 7 * 86400:
        raise ConfigError(f"agent.idle_exit_seconds in {path} must be between 0 (never) and 604800 (a week)")
    if agent.nomad_jwks_file is not None and not os.path.isabs(agent.nomad_jwks_file):
        raise ConfigError(f"agent.nomad_jwks_file in {path} must be an absolute path")
    if "policy" in data:
        _policy_last(text.decode("utf-8"), path, tomllib.loads)
    return Config(
        agent=agent,
        policy=_policy(data.get("policy"), path),
        path=path,
        plugin=plugin,
        aws=aws,
        vault=vault,
        providers=providers,
        audit=_audit(_build(AuditSettings, _table(data, "audit", "", path), "audit", path), path),
        metrics=_metrics(_build(MetricsSettings, _table(data, "metrics", "", path), "metrics", path), path),
        server_tables={key: data[key] for key in SERVER_SECTIONS if key in data},
    )


def _audit(audit: AuditSettings, path: str) -> AuditSettings:
    if audit.syslog_facility not in SYSLOG_FACILITIES:
        raise ConfigError(
            f"audit.syslog_facility in {path} is {audit.syslog_facility!r};"
            f" use one of {', '.join(SYSLOG_FACILITIES)}"
        )
    for key in ("syslog_socket", "file"):
        value = getattr(audit, key)
        if value is not None and not os.path.isabs(value):
            raise ConfigError(f"audit.{key} in {path} must be an absolute path, not {value!r}")
    return audit


def _metrics(metrics: MetricsSettings, path: str) -> MetricsSettings:
    if metrics.file is not None and not (os.path.isabs(metrics.file) and metrics.file.endswith(".prom")):
        raise ConfigError(
            f"metrics.file in {path} must be an absolute path ending in .prom (node_exporter's"
            f" textfile collector reads only those), not {metrics.file!r}"
        )
    return metrics


def _provider(
    name: str, table: dict[str, Any], aws: AwsSettings, vault: VaultSettings, path: str
) -> Provider:
    """``[providers.NAME]``: its store, and its own keys over the top-level
    section of that store's kind."""
    where = f"providers.{name}"
    store = table.get("store")
    if store not in STORES:
        raise ConfigError(
            f"{where}.store in {path} is {store!r}; use one of {', '.join(STORES)}"
            if store is not None
            else f"{where} in {path} has no store; set store = one of {', '.join(STORES)}"
        )
    own = {key: value for key, value in table.items() if key != "store"}
    kind, other = ("vault", "aws") if store == "vault" else ("aws", "vault")
    other_keys = {f.name for f in fields(AwsSettings if other == "aws" else VaultSettings)}
    # Keys both sections have (cache_*) are its own store's too.
    other_keys -= {f.name for f in fields(VaultSettings if other == "aws" else AwsSettings)}
    for key in own:
        if key in other_keys:
            raise ConfigError(
                f"{where}.{key} in {path} is {'an' if other == 'aws' else 'a'} [{other}] key,"
                f" and {where} reads {store}:"
                f" a provider sets keys of its own store's section, [{kind}]"
            )
    if kind == "vault":
        own_vault = _build(VaultSettings, own, where, path, base=vault)
        _check_vault(own_vault, where, path)
        _check_cache(own_vault, where, path)
        return Provider(name, str(store), aws=aws, vault=own_vault, own_keys=tuple(own))
    own_aws = _build(AwsSettings, own, where, path, base=aws)
    _check_cache(own_aws, where, path)
    return Provider(name, str(store), aws=own_aws, vault=vault, own_keys=tuple(own))


def _check_vault(vault: VaultSettings, where: str, path: str) -> None:
    if vault.auth_method not in VAULT_AUTH_METHODS:
        raise ConfigError(
            f"{where}.auth_method in {path} is {vault.auth_method!r};"
            f" use one of {', '.join(VAULT_AUTH_METHODS)}"
        )
    for mount, version in vault.kv_mounts.items():
        if version not in (1, 2):
            raise ConfigError(f"{where}.kv_mounts.{mount} in {path} is {version}; KV versions are 1 and 2")


def _check_cache(settings: AwsSettings | VaultSettings, where: str, path: str) -> None:
    for key in ("cache_seconds", "stale_if_error_seconds"):
        if not 0 <= getattr(settings, key) <= MAX_CACHE_SECONDS:
            raise ConfigError(f"{where}.{key} in {path} must be between 0 (off) and 86400 (a day)")
    if not 0 <= settings.cache_max_bytes <= 1 << 30:
        raise ConfigError(f"{where}.cache_max_bytes in {path} must be between 0 and 1073741824 (1 GiB)")


def allow_last(table: dict[str, Any], where: str, path: str) -> None:
    """A rule's allow comes after the keys that narrow it: a file cut just
    after allow would otherwise read as a rule for every namespace or job
    (or repo, branch...)."""
    if "allow" in table and list(table)[-1] != "allow":
        narrowing = " and ".join(key for key in table if key != "allow")
        raise ConfigError(
            f"{where} in {path}: write allow last, after {narrowing}, so that a file cut short never"
            " reads as a wider rule"
        )


_POLICY_HEADER = re.compile(r"^[ \t]*\[\[[ \t]*policy[ \t]*\]\]", re.M)


def _policy_last(text: str, path: str, loads: Callable[[str], dict[str, Any]]) -> None:
    """The rules come last in the file, after every other section: a file
    cut short (a writer that died, a full disk, appends caught between two
    writes) then loses rules, which grants less, and never a setting such
    as a provider's own credentials or web_identity_role_arn, which could
    grant more. With require_policy and allow last in each rule, no prefix
    of the file grants more than the whole file (docs/configuration.md)."""
    first = _POLICY_HEADER.search(text)
    after = None
    if first is not None:
        try:
            after = sorted(set(loads(text[first.start() :])) - {"policy"})
        except ValueError:  # the header was inside a string: say it the plain way
            after = ["?"]
    if first is None or after:
        raise ConfigError(
            f"in {path}, write the [[policy]] rules at the end of the file, after every other section"
            + (f" ([{after[0]}] comes after a rule)" if after and after != ["?"] else "")
            + ": a file cut short must lose rules, never settings"
        )


def _policy(rules: Any, path: str) -> tuple[Rule, ...] | None:
    if rules is None:
        return None
    if not isinstance(rules, list):
        raise ConfigError(f"policy in {path} must be an array of tables: write [[policy]]")
    out = []
    for number, table in enumerate(rules, start=1):
        where = f"policy #{number}"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} in {path} must be a table")
        _reject_unknown(table, {"namespace", "job", "allow"}, where, path)
        allow_last(table, where, path)
        allow = table.get("allow")
        if not isinstance(allow, list) or not all(isinstance(p, str) and p for p in allow):
            raise ConfigError(f"{where}.allow in {path} must be a list of patterns such as 'aws-sm:app/*'")
        when = {key: table[key] for key in ("namespace", "job") if key in table}
        for key, glob in when.items():
            if not isinstance(glob, str):
                raise ConfigError(f"{where}.{key} in {path} must be a string glob")
        try:
            out.append(rule(tuple(allow), **when))
        except ValueError as exc:
            raise ConfigError(f"{where}.allow in {path}: {exc}") from None
    return tuple(out)


def _table(data: dict[str, Any], key: str, prefix: str, path: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{prefix}{key} in {path} must be a table")
    return value


def _reject_unknown(table: dict[str, Any], known: set[str], where: str, path: str) -> None:
    for key in table:
        if key not in known:
            name = f"{where}.{key}" if where else key
            raise ConfigError(f"unknown key {name!r} in {path}; known here: {', '.join(sorted(known))}")


T = TypeVar("T")
_TYPES: dict[str, tuple[type, ...]] = {
    "list[str]": (list,),
    "dict[str, int]": (dict,),
    "dict[str, str]": (dict,),
    "str": (str,),
    "float": (int, float),
    "int": (int,),
    "bool": (bool,),
}


def _build(cls: type[T], table: dict[str, Any], where: str, path: str, base: T | None = None) -> T:
    """Make ``cls`` from a TOML table, checking each key's name and type;
    with ``base``, the keys the table leaves out are ``base``'s.

    The field annotations are strings here (``from __future__ import
    annotations``): ``"str | None"`` reads as "a string, or left out".
    """
    declared = {f.name: str(f.type).split("|")[0].strip() for f in fields(cls)}  # type: ignore[arg-type]
    _reject_unknown(table, set(declared), where, path)
    for key, value in table.items():
        type_name = declared[key]
        types = _TYPES.get(type_name, ())
        if (isinstance(value, bool) and type_name != "bool") or not isinstance(value, types):
            wanted = {"float": "number", "str": "string", "bool": "boolean (true or false)"}.get(
                type_name, type_name
            )
            raise ConfigError(f"{where}.{key} in {path} must be a {wanted}, not {type(value).__name__}")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise ConfigError(f"every item of {where}.{key} in {path} must be a string")
        if isinstance(value, dict):  # a table of one type: dict[str, int] or dict[str, str]
            item = type_name.split(", ")[1].rstrip("]")
            if not all(isinstance(v, _TYPES[item]) and not isinstance(v, bool) for v in value.values()):
                raise ConfigError(f"every value of {where}.{key} in {path} must be a {item}")
    if base is not None:
        return replace(base, **table)  # type: ignore[type-var]
    return cls(**table)
