"""``nomad-secrets check``: the operator's look at what a fetch would do.

Run it as the installed name, as root, e.g.
``/opt/nomad/data/common_plugins/secrets/aws check``: it reads the same
config a fetch would (same environment scrub, same trust checks), says what
each provider name in the plugin directory resolves to and with which store
settings (credentials blanked), tries each store's credentials with a
harmless call (STS GetCallerIdentity; Vault's token lookup or login), and
prints the effective access policy. Exit status 0 when all is well, 1 when
something would make fetches fail; ``--format json`` prints the same as one
JSON object, with the same exit status, for configuration management.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import stat
import sys
from collections.abc import Callable
from typing import Any

from nomad_secrets.core import config as config_module
from nomad_secrets.core.config import Config, Provider, Settings, VaultSettings, require_policy
from nomad_secrets.core.policy import everyone_reads_everything
from nomad_secrets.process import endings
from nomad_secrets.process.errors import ConfigError, PluginError
from nomad_secrets.process.trust import untrusted, untrusted_ancestors, untrusted_log
from nomad_secrets.stores import registry

PROBE_SECONDS = 5.0


HIDDEN = "(set, not shown)"
DESCRIPTION = (
    "Check what a fetch through this provider name would use: the config, its files, each"
    " provider's store settings and credentials, and the access policy. Exit status 0 when"
    " all is well, 1 when something would make fetches fail."
)


class Report:
    """What check found, line by line: printed as it goes (text), or kept
    for one JSON object at the end."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write
        self.problems = 0
        self.warnings = 0
        self.section = ""
        self.items: list[dict[str, str]] = []
        self.providers: dict[str, dict[str, Any]] = {}

    def start(self, section: str) -> None:
        self.section = section
        self.write(f"{section}:")

    def ok(self, text: str) -> None:
        self._add("ok", text, "  ok       ")

    def warn(self, text: str) -> None:
        self.warnings += 1
        self._add("warning", text, "  WARNING  ")

    def problem(self, text: str) -> None:
        self.problems += 1
        self._add("problem", text, "  PROBLEM  ")

    def detail(self, text: str) -> None:
        """A line that belongs to the item above it (text output only)."""
        self.write(f"             {text}")

    def _add(self, level: str, text: str, prefix: str) -> None:
        self.items.append({"section": self.section, "level": level, "message": text})
        self.write(prefix + text)

    @property
    def result(self) -> str:
        return "OK" if not self.problems else "NOT OK"

    def summary(self) -> str:
        """The last line, one form for every run: a config that cannot be
        loaded ends as a check that found problems further on does."""
        return endings.check_summary(self.problems, self.warnings)


def main(argv: list[str], executable: str) -> int:
    parser = argparse.ArgumentParser(prog=f"{os.path.basename(executable)} check", description=DESCRIPTION)
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text for a person (default), or one JSON object for Ansible, Salt and the like",
    )
    args = parser.parse_args(argv)
    if args.format == "json":
        report = Report(lambda _: None)
        status = run_check(executable, report=report)
        print(json.dumps(as_json(report), indent=1))
        return status
    return run_check(executable)


def as_json(report: Report) -> dict[str, Any]:
    from nomad_secrets._version import GO_VERSION, __version__

    return {
        "version": __version__,
        "fingerprint_version": GO_VERSION,
        "python": sys.version.split()[0],
        "result": report.result,
        "problems": report.problems,
        "warnings": report.warnings,
        "providers": report.providers,
        "items": report.items,
    }


def run_check(executable: str, write: Callable[[str], None] = print, report: Report | None = None) -> int:
    from nomad_secrets._version import GO_VERSION, __version__

    report = report or Report(write)
    write = report.write
    write(f"nomad-secrets {__version__} (fingerprint version {GO_VERSION}), Python {sys.version.split()[0]}")
    report.start("files")
    try:
        config = config_module.load(executable)
    except PluginError as exc:
        report.problem(exc.message)
        write(report.summary())
        return 1
    plugin_dir = os.path.dirname(os.path.abspath(executable))
    report.ok(f"plugin directory {plugin_dir} {_owner_mode(plugin_dir)}, and every directory above it")
    for unusable in config.unusable_files.values():  # fetches that use the file fail; others go on
        report.problem(unusable)
    real = os.path.realpath(executable)
    problem = untrusted(real, "executable") or untrusted_ancestors(real)
    if problem:
        report.problem(f"{problem} (whoever can change it runs code as this user)")
    else:
        report.ok(f"executable {real} {_owner_mode(real)}")
    if os.path.basename(plugin_dir) != "secrets":
        report.warn(
            f"{plugin_dir} is not a plugin directory (<common_plugin_dir>/secrets/): run check as"
            " <common_plugin_dir>/secrets/<provider name> check, to read the config that Nomad's runs read"
        )
    _unpacked(real, report)
    if config.path is None:
        report.ok(
            f"no config file ({config_module.CONFIG_FILE_NAME} here or {config_module.SYSTEM_CONFIG}):"
            " built-in defaults"
        )
    else:
        report.ok(f"config file {config.path} {_owner_mode(config.path)}")
        keys = [
            a.secret_access_key or a.session_token
            for a in (config.aws, *(p.aws for p in config.providers.values()))
        ]
        if os.stat(config.path).st_mode & 0o004 and any(keys):
            report.warn(f"{config.path} holds AWS keys and is readable by everyone: chmod 0600")
    if config.plugin.debug_log:
        problem = untrusted_log(config.plugin.debug_log, "debug log")
        if problem:
            report.warn(f"{problem}: fetches run without the debug log until it is fixed")
        else:
            report.ok(f"debug log {config.plugin.debug_log}")
    _observers(config, report)
    providers = _providers(executable, config, report)
    report.start("stores")
    probe_stores(providers, report)
    if not providers:
        report.warn("no provider name here resolves to a store")
    report.start("agent")
    _agent(executable, config, report)
    report.start("policy")
    _policy(config, report)
    write(report.summary())
    return 1 if report.problems else 0


def _agent(executable: str, config: Config, report: Report) -> None:
    """Whether fetches will reach the node agent, proved by a round trip
    with it, and why not (docs/agent.md)."""
    import json

    from nomad_secrets.agent import client
    from nomad_secrets.agent.build import build_id, socket_dir

    executable = os.path.abspath(executable)
    agent = client.Agent(executable, build_id(), socket_dir())
    if config.agent.socket and config.agent.socket != agent.path:
        report.warn(
            f"agent.socket is no longer used: fetches of this plugin directory look for their agent at"
            f" {agent.path}; remove the key, and set ListenStream={agent.path} in a systemd socket unit"
            " (docs/agent.md, Upgrading)"
        )
    if config.path is None:
        report.ok("no config file: fetches run in process (an agent serves only a plugin directory with one)")
        return
    if config.agent.auto:
        problem = _socket_directory(agent.socket_dir)
        if problem:
            report.problem(f"{problem}: fetches can start no agent, and run in process (docs/agent.md)")
    with open(config.path, "rb") as f:
        plain = client.auto_off(f.read().decode("utf-8", "replace"))
    if plain != (not config.agent.auto):
        report.warn(
            "write auto = false as a plain line in the [agent] section: fetches read it before any TOML"
            " parser, so in this form each one starts an agent that stops at once"
        )
    try:
        info = json.loads(agent.ask(client.request(client.KIND_PING, executable, "", agent.build, {})))
    except client.NoAgent as exc:
        if exc.hung:
            then = "replaces it" if config.agent.auto else "runs in process"
            report.warn(f"{exc}: each fetch waits for it, then {then}")
        elif config.agent.auto:
            report.ok(f"{exc}; the next fetch starts one (agent.auto)")
        else:  # the operator's choice: said, not warned of
            report.ok(
                f"{exc}, and agent.auto = false: fetches run in process, slower under a burst of task"
                " starts (docs/agent.md)"
            )
            if config.keeps_values():  # kept values live in an agent only: an outage fails these fetches
                report.warn(
                    "cache_seconds is set, but no agent runs and agent.auto ="
                    " false: fetches in process keep nothing, and a store outage fails them; start the"
                    " agent (docs/agent.md) or remove the cache settings"
                )
        return
    said = (
        f"an agent answers at {agent.path}: build {info['build']}, pid {info['pid']}, uid {info['uid']},"
        f" started by {info['started_by']}, config {info['config']},"
        f" AWS credentials: {info['aws_credentials']}, Vault auth: {info['vault_auth']}"
    )
    if info["build"] != agent.build:
        report.warn(
            f"{said}; it is another build than this executable ({agent.build}): it stops when its own"
            " executable is replaced, and until then this build's fetches run in process"
        )
    elif info["plugin_dir"] != agent.plugin_dir:
        report.warn(f"{said}; it serves {info['plugin_dir']}, not this directory: fetches run in process")
    else:
        report.ok(said + "; fetches go to it")
    if config.agent.users and not config.agent.nomad_jwks_file:
        report.warn(
            "agent.users is set without agent.nomad_jwks_file: those users' fetches are refused by the agent"
            " (it answers them only for the job a verified workload identity proves) and run in process"
        )


def _socket_directory(directory: str) -> str | None:
    """Why a fetch cannot start an agent in ``directory``, as it would try."""
    from nomad_secrets.agent import client

    if not os.path.lexists(directory):
        parent = os.path.dirname(directory)
        if os.access(parent, os.W_OK) and not client.untrusted_directory(parent):
            return None  # the first fetch makes it
        user = _user_name()
        return (
            f"the agent's socket directory {directory} is missing and this user ({user}) cannot make it:"
            f" make it for this user, e.g. `d {directory} 0755 {user} {user} -` in a tmpfiles.d file"
        )
    problem = client.untrusted_directory(directory)
    if problem:
        return f"{problem}: chown it to root (or this user) and chmod 0755 {directory}"
    if not os.access(directory, os.W_OK):
        return f"the agent's socket directory {directory} is not writable by this user (uid {os.geteuid()})"
    return None


def _user_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _observers(config: Config, report: Report) -> None:
    """The audit trail and the metrics file: a fetch skips what fails here."""
    audit, metrics = config.audit, config.metrics
    if audit.syslog:
        try:
            is_socket = stat.S_ISSOCK(os.stat(audit.syslog_socket).st_mode)
        except OSError:
            is_socket = False
        if is_socket:
            report.ok(f"audit records to the syslog socket {audit.syslog_socket} ({audit.syslog_facility})")
        else:
            report.warn(
                f"audit.syslog_socket {audit.syslog_socket} is not a socket (no syslog daemon or"
                " journald here?): fetches send their records nowhere"
            )
    if audit.file:
        problem = untrusted_log(audit.file, "audit file")
        if problem:
            report.warn(f"{problem}: fetches run without the audit file until it is fixed")
        else:
            report.ok(f"audit file {audit.file}")
    if metrics.file:
        from nomad_secrets.records.metrics import health, untrusted_textfile

        problem = untrusted_textfile(metrics.file)
        if problem:
            report.warn(f"{problem}: fetches run without metrics until it is fixed")
            return

        report.ok(f"metrics file {metrics.file} (node_exporter's textfile collector)")
        for warning in health(metrics.file):
            report.warn(warning)


def _unpacked(executable: str, report: Report) -> None:
    """The build's unpack directory holds every file of the executable's
    lib.zip: a cleanup job or a full disk may have taken some since."""
    import io
    import zipfile

    from nomad_secrets.process import cache

    try:
        with zipfile.ZipFile(executable) as outer:
            build_id, cache_dir = outer.read("build-info").decode().split("\n")[:2]
            with zipfile.ZipFile(io.BytesIO(outer.read("lib.zip"))) as inner:
                names = [n for n in inner.namelist() if not n.endswith("/")]
    except (OSError, KeyError, zipfile.BadZipFile):
        return  # not the built executable (the source tree): nothing unpacked
    entry = os.path.join(cache_dir or cache.default_cache_dir(), cache.entry_name(build_id))
    if not os.path.isdir(entry):
        report.ok(f"unpack directory {entry}: not made yet (the first fetch makes it)")
        return
    missing = [n for n in names if not os.path.isfile(os.path.join(entry, n))]
    damage = (
        f"{len(missing)} of {len(names)} files are missing (such as {missing[0]})"
        if missing
        else cache.damage(entry)
    )
    if damage:
        report.problem(
            f"the unpack directory {entry} is damaged: {damage}; remove it, and the next fetch"
            " unpacks it again (a fetch that meets the damage moves it aside itself)"
        )
    else:
        report.ok(f"unpack directory {entry}: all {len(names)} files as unpacked")


def _owner_mode(path: str) -> str:
    st = os.lstat(path)
    return f"(uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})"


def _providers(executable: str, config: Config, report: Report) -> list[Provider]:
    """Every executable name beside this one that is this plugin, and the
    store settings each one uses."""
    report.start("providers")
    plugin_dir = os.path.dirname(os.path.abspath(executable))
    me = os.path.realpath(executable)
    found: list[Provider] = []
    for name in sorted(os.listdir(plugin_dir)):
        path = os.path.join(plugin_dir, name)
        if os.path.realpath(path) != me or not os.access(path, os.X_OK):
            continue
        if name in config_module.RESERVED_NAMES:
            report.problem(f"{name}: Nomad never runs a plugin named {name!r} (built-in provider); rename it")
            continue
        try:
            provider = config.provider(name)
        except PluginError as exc:
            report.problem(f"{name}: {exc.message}")
            continue
        source = f"[providers.{name}]" if name in config.providers else "built-in name"
        report.ok(f"{name} -> {registry.store(provider.store).label} ({source})")
        kind = registry.store(provider.store).section
        settings = _shown(provider.settings)
        for key, value in settings.items():
            if value != _shown(type(provider.settings)())[key]:
                origin = f"[providers.{name}]" if key in provider.own_keys else f"[{kind}]"
                report.detail(f"{kind}.{key} = {value!r}  (from {origin})")
        report.providers[name] = {
            "store": provider.store,
            "source": source,
            "settings": {kind: settings},
            "set_by_provider": sorted(provider.own_keys),
        }
        _warn_borrowed_credentials(provider, report)
        from nomad_secrets.agent.memo import meaning

        report.detail(meaning(getattr(provider, kind), provider.store))
        found.append(provider)
    return found


def _shown(settings: Settings) -> dict[str, Any]:
    """Every key's effective value, credentials blanked."""
    return {
        key: (HIDDEN if key in config_module.SECRET_KEYS and value else value)
        for key, value in dataclasses.asdict(settings).items()
    }


def _warn_borrowed_credentials(provider: Provider, report: Report) -> None:
    """A provider that names another Vault but takes the top-level section's
    credentials would send them to that other server."""
    if not isinstance(provider.settings, VaultSettings) or "address" not in provider.own_keys:
        return
    borrowed = [
        key
        for key in config_module.VAULT_CREDENTIAL_KEYS
        if getattr(provider.vault, key) and key not in provider.own_keys
    ]
    if borrowed:
        report.warn(
            f"{provider.name}: [providers.{provider.name}] sets its own address but takes"
            f" {', '.join(borrowed)} from [vault]: those credentials would go to"
            f" {provider.vault.address}; set them in [providers.{provider.name}] too"
        )


def probe_stores(providers: list[Provider], report: Report) -> None:
    """Each distinct store connection, probed once by its store's probe
    (stores/registry.py) for the providers that use it."""
    for settings, users in _distinct_settings(providers):
        registry.store(users[0].store).probe(settings, users, report, PROBE_SECONDS)


def _distinct_settings(providers: list[Provider]) -> list[tuple[Settings, list[Provider]]]:
    """Each distinct store connection, and the providers that use it."""
    out: list[tuple[Settings, list[Provider]]] = []
    for provider in providers:
        settings = provider.settings
        for seen, users in out:
            if seen == settings:  # dataclass equality: same class, same values
                users.append(provider)
                break
        else:
            out.append((settings, [provider]))
    return out


def _policy(config: Config, report: Report) -> None:
    if config.policy is None:
        try:
            require_policy(config)
        except ConfigError as exc:
            report.problem(exc.message)
            return
        report.warn(
            "no config file, so no [[policy]]: every job may read everything this node's"
            " credentials can read; write a config with rules (docs/policy.md)"
        )
        return
    for number, rule in enumerate(config.policy, start=1):
        patterns = ", ".join(p.text for p in rule.allow)
        who = f"namespace {rule.glob('namespace')!r}, job {rule.glob('job')!r}"
        report.ok(f"rule {number}: {who} may read {patterns}")
    report.ok("first matching rule decides; a job no rule matches reads nothing")
    if everyone_reads_everything(config.policy):
        report.warn("a rule for every namespace and job allows a whole store: every job reads all of it")
