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
                        # as read here, checked by nomad_secrets/serve/

Every key is declared by a dataclass (``model``); an unknown key is an error that

The package has three jobs, one module each: ``model`` (the settings'
data classes and constants), ``reader`` (finding the file and reading it
whole, once it and the files it names are trusted) and ``parser`` (TOML to
``Config``). Everyone imports from here.
"""

from nomad_secrets.core.config.model import (
    BUILTIN_PROVIDERS,
    CONFIG_FILE_NAME,
    DEFAULT_CACHE_BYTES,
    MAX_OUTPUT_BYTES,
    OPEN_POLICY,
    RESERVED_NAMES,
    SECRET_KEYS,
    SECTIONS,
    SYSLOG_FACILITIES,
    SYSTEM_CONFIG,
    VAULT_CREDENTIAL_KEYS,
    AuditSettings,
    AwsSettings,
    CacheSettings,
    Config,
    Provider,
    Settings,
    VaultSettings,
    require_policy,
)
from nomad_secrets.core.config.parser import AFTER_RULES, allow_last, build_settings, parse, reject_unknown
from nomad_secrets.core.config.reader import (
    BeingDeployed,
    check_files,
    find_config,
    load,
    load_file,
    provider_name,
    require_trusted,
)

__all__ = [
    "AFTER_RULES",
    "BUILTIN_PROVIDERS",
    "CONFIG_FILE_NAME",
    "DEFAULT_CACHE_BYTES",
    "MAX_OUTPUT_BYTES",
    "OPEN_POLICY",
    "RESERVED_NAMES",
    "SECRET_KEYS",
    "SECTIONS",
    "SYSLOG_FACILITIES",
    "SYSTEM_CONFIG",
    "VAULT_CREDENTIAL_KEYS",
    "AuditSettings",
    "AwsSettings",
    "BeingDeployed",
    "CacheSettings",
    "Config",
    "Provider",
    "Settings",
    "VaultSettings",
    "allow_last",
    "build_settings",
    "check_files",
    "find_config",
    "load",
    "load_file",
    "parse",
    "provider_name",
    "reject_unknown",
    "require_policy",
    "require_trusted",
]
