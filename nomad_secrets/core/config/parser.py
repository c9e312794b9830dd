"""TOML to ``Config``: every key checked by name and type against the
dataclasses of ``model``, every value range and rule checked, and the
order rules that keep a file cut short from granting more.

``build_settings``, ``reject_unknown`` and ``allow_last`` are public: the
server's sections (serve/settings.py) are checked the same way.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any, TypeVar

from nomad_secrets.core.config.model import (
    MAX_CACHE_SECONDS,
    MAX_OUTPUT_BYTES,
    RESERVED_NAMES,
    SECTIONS,
    SERVER_SECTIONS,
    SYSLOG_FACILITIES,
    VAULT_AUTH_METHODS,
    AgentSettings,
    AuditSettings,
    CacheSettings,
    Config,
    MetricsSettings,
    PluginSettings,
    Provider,
    Settings,
    VaultSettings,
)
from nomad_secrets.core.policy import Rule, rule
from nomad_secrets.core.schemes import SCHEMES, section_of
from nomad_secrets.process.errors import ConfigError


def parse(text: bytes, path: str, check: str = "") -> Config:
    """``check``: the command that reads ``path`` as its reader does, the
    operator's next step after mending a file that cannot be parsed (until
    then every fetch, or the server, fails)."""
    next_step = f", then run `{check}`, which reads it the same way" if check else ""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python 3.10 only
        import tomli as tomllib
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = text[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"the config file {path} is not UTF-8 (line {line}): save it as UTF-8{next_step}"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"the config file {path} is not valid TOML: {exc}: correct it there{next_step}"
        ) from None
    known = {"plugin", *SECTIONS, "providers", "policy", "agent", "audit", "metrics", *SERVER_SECTIONS}
    reject_unknown(data, known, "", path)
    sections: dict[str, Settings] = {}  # the stores' top-level sections: [aws], [vault]
    for section, settings_class in SECTIONS.items():
        sections[section] = build_settings(settings_class, _table(data, section, "", path), section, path)
        _check_section(sections[section], section, path)
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
        providers[name] = _provider(name, table, sections, path)
    plugin = build_settings(PluginSettings, _table(data, "plugin", "", path), "plugin", path)
    if not 0 < plugin.deadline_seconds <= 3600:
        raise ConfigError(f"plugin.deadline_seconds in {path} must be between 0 and 3600")
    if not 1024 <= plugin.max_output_bytes <= MAX_OUTPUT_BYTES:
        raise ConfigError(f"plugin.max_output_bytes in {path} must be between 1024 and 67108864 (64 MiB)")
    agent = build_settings(AgentSettings, _table(data, "agent", "", path), "agent", path)
    if agent.socket is not None and not os.path.isabs(agent.socket):
        raise ConfigError(
            f"agent.socket in {path} must be an absolute path, such as /run/nomad-secrets/agent.sock"
        )
    if not 0 <= agent.idle_exit_seconds <= 7 * 86400:
        raise ConfigError(f"agent.idle_exit_seconds in {path} must be between 0 (never) and 604800 (a week)")
    if agent.nomad_jwks_file is not None and not os.path.isabs(agent.nomad_jwks_file):
        raise ConfigError(f"agent.nomad_jwks_file in {path} must be an absolute path")
    if "policy" in data:
        _policy_last(text.decode("utf-8"), data["policy"], path, tomllib.loads)
    config = Config(
        agent=agent,
        policy=_policy(data.get("policy"), path),
        path=path,
        plugin=plugin,
        providers=providers,
        audit=_audit(build_settings(AuditSettings, _table(data, "audit", "", path), "audit", path), path),
        metrics=_metrics(
            build_settings(MetricsSettings, _table(data, "metrics", "", path), "metrics", path), path
        ),
        server_tables={key: data[key] for key in SERVER_SECTIONS if key in data},
    )
    chosen: dict[str, Any] = {**sections}  # each section is the field of its name
    return replace(config, **chosen)


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


def _provider(name: str, table: dict[str, Any], sections: dict[str, Settings], path: str) -> Provider:
    """``[providers.NAME]``: its store, and its own keys over the top-level
    section its store reads (core/schemes.py says which)."""
    where = f"providers.{name}"
    store = table.get("store")
    if store not in SCHEMES:
        raise ConfigError(
            f"{where}.store in {path} is {store!r}; use one of {', '.join(SCHEMES)}"
            if store is not None
            else f"{where} in {path} has no store; set store = one of {', '.join(SCHEMES)}"
        )
    own = {key: value for key, value in table.items() if key != "store"}
    section = section_of(store)
    keys = {f.name for f in fields(SECTIONS[section])}
    for key in own:
        other = next((s for s, cls in SECTIONS.items() if key not in keys and key in _names(cls)), None)
        if other is not None:
            raise ConfigError(
                f"{where}.{key} in {path} is {'an' if other[0] in 'aeiou' else 'a'} [{other}] key,"
                f" and {where} reads {store}:"
                f" a provider sets keys of its own store's section, [{section}]"
            )
    settings = build_settings(SECTIONS[section], own, where, path, base=sections[section])
    _check_section(settings, where, path)
    chosen: dict[str, Any] = {**sections, section: settings}  # each section is the field of its name
    return replace(Provider(name, store, own_keys=tuple(own)), **chosen)


def _names(settings_class: type[Settings]) -> set[str]:
    return {f.name for f in fields(settings_class)}


def _check_section(settings: Settings, where: str, path: str) -> None:
    """The checks of a store section's values beyond their types."""
    _check_cache(settings, where, path)
    if isinstance(settings, VaultSettings):
        _check_vault(settings, where, path)


def _check_cache(settings: CacheSettings, where: str, path: str) -> None:
    for key in ("cache_seconds", "stale_if_error_seconds"):
        if not 0 <= getattr(settings, key) <= MAX_CACHE_SECONDS:
            raise ConfigError(f"{where}.{key} in {path} must be between 0 (off) and 86400 (a day)")
    if not 0 <= settings.cache_max_bytes <= 1 << 30:
        raise ConfigError(f"{where}.cache_max_bytes in {path} must be between 0 and 1073741824 (1 GiB)")


def _check_vault(vault: VaultSettings, where: str, path: str) -> None:
    if vault.auth_method not in VAULT_AUTH_METHODS:
        raise ConfigError(
            f"{where}.auth_method in {path} is {vault.auth_method!r};"
            f" use one of {', '.join(VAULT_AUTH_METHODS)}"
        )
    for mount, version in vault.kv_mounts.items():
        if version not in (1, 2):
            raise ConfigError(f"{where}.kv_mounts.{mount} in {path} is {version}; KV versions are 1 and 2")


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


# The sections that may follow the rules. A cut loses the file's end first;
# losing these, whole or their last keys, changes neither what a job may
# read, nor the store, address or credentials it is read with, nor the
# audit record of the read: [agent] (users without nomad_jwks_file are
# refused), [plugin] (the deadline, the output cap, the debug log) and
# [metrics] (counters). Every other section holds such a setting.
AFTER_RULES = ("agent", "plugin", "metrics")
_POLICY_HEADER = re.compile(r"^[ \t]*\[\[[ \t]*policy[ \t]*\]\]", re.M)


def _policy_last(text: str, rules: Any, path: str, loads: Callable[[str], dict[str, Any]]) -> None:
    """The rules come after every section whose loss could grant more: a
    file cut short (a writer that died, a full disk, appends caught between
    two writes) then loses rules, which grants less, or a section of
    AFTER_RULES, and never a setting such as a provider's own credentials
    or web_identity_role_arn, which could grant more. With require_policy
    and allow last in each rule, no prefix of the file grants more than the
    whole file (docs/configuration.md)."""
    if isinstance(rules, dict):  # [policy], or policy = {...}: one table, read as no rule
        raise ConfigError(
            f"in {path}, policy is one table ([policy], single brackets): write each rule under"
            " [[policy]], with double brackets (TOML's array of tables: one table per rule)"
        )
    after: list[str] | None = None
    for first in _POLICY_HEADER.finditer(text):
        try:
            after = sorted(set(loads(text[first.start() :])) - {"policy", *AFTER_RULES})
            break
        except ValueError:  # this header is inside a multi-line string: the next one
            continue
    if after is None:
        raise ConfigError(
            f"in {path}, write the [[policy]] rules at the end of the file, as [[policy]] tables:"
            " policy = [...] is a key, which TOML puts above every section, where a file cut short"
            " keeps it and loses the settings below"
        )
    if after:
        line = text.count("\n", 0, first.start()) + 1
        raise ConfigError(
            f"in {path}, [{after[0]}] comes after the [[policy]] rules (the first is on line {line}):"
            " move it above them. Only [agent], [plugin] and [metrics] may follow the rules: a file"
            " cut short loses its end first, which must be rules or those, never a store's settings"
            " or the audit"
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
        reject_unknown(table, {"namespace", "job", "allow"}, where, path)
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


def reject_unknown(table: dict[str, Any], known: set[str], where: str, path: str) -> None:
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


def build_settings(cls: type[T], table: dict[str, Any], where: str, path: str, base: T | None = None) -> T:
    """Make ``cls`` from a TOML table, checking each key's name and type;
    with ``base``, the keys the table leaves out are ``base``'s.

    The field annotations are strings here (``from __future__ import
    annotations``): ``"str | None"`` reads as "a string, or left out".
    """
    declared = {f.name: str(f.type).split("|")[0].strip() for f in fields(cls)}  # type: ignore[arg-type]
    reject_unknown(table, set(declared), where, path)
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
