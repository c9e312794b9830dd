"""``nomad-secrets check``: the operator's look at what a fetch would do.

Run it as the installed name, as root, e.g.
``/opt/nomad/data/common_plugins/secrets/aws check``: it reads the same
config a fetch would (same environment scrub, same trust checks), says what
each provider name in the plugin directory resolves to, tries each store's
credentials with a harmless call (STS GetCallerIdentity; Vault's token
lookup or login), and prints the effective access policy. Exit status 0 when
all is well, 1 when something would make fetches fail.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable

from nomad_secrets import config as config_module
from nomad_secrets.backends import STORE_LABELS
from nomad_secrets.config import Config
from nomad_secrets.deadline import Deadline
from nomad_secrets.errors import PluginError
from nomad_secrets.policy import everyone_reads_everything, template_ambiguity
from nomad_secrets.request import Identity, JobOptions
from nomad_secrets.trust import untrusted, untrusted_ancestors, untrusted_log

PROBE_SECONDS = 5.0


class Report:
    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write
        self.problems = 0
        self.warnings = 0

    def ok(self, text: str) -> None:
        self.write(f"  ok       {text}")

    def warn(self, text: str) -> None:
        self.warnings += 1
        self.write(f"  WARNING  {text}")

    def problem(self, text: str) -> None:
        self.problems += 1
        self.write(f"  PROBLEM  {text}")


def run_check(executable: str, write: Callable[[str], None] = print) -> int:
    from nomad_secrets._version import GO_VERSION, __version__

    report = Report(write)
    write(f"nomad-secrets {__version__} (fingerprint version {GO_VERSION}), Python {sys.version.split()[0]}")
    write("files:")
    try:
        config = config_module.load(executable)
    except PluginError as exc:
        report.problem(exc.message)
        write("result: 1 problem; fetches fail until it is fixed")
        return 1
    plugin_dir = os.path.dirname(os.path.abspath(executable))
    report.ok(f"plugin directory {plugin_dir} {_owner_mode(plugin_dir)}, and every directory above it")
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
    if config.path is None:
        report.ok(
            f"no config file ({config_module.CONFIG_FILE_NAME} here or {config_module.SYSTEM_CONFIG}):"
            " built-in defaults"
        )
    else:
        report.ok(f"config file {config.path} {_owner_mode(config.path)}")
        if os.stat(config.path).st_mode & 0o004 and (
            config.aws.secret_access_key or config.aws.session_token
        ):
            report.warn(f"{config.path} holds AWS keys and is readable by everyone: chmod 0600")
    if config.plugin.debug_log:
        problem = untrusted_log(config.plugin.debug_log, "debug log")
        if problem:
            report.warn(f"{problem}: fetches run without the debug log until it is fixed")
        else:
            report.ok(f"debug log {config.plugin.debug_log}")
    stores = _providers(executable, config, report)
    write("stores:")
    if {"aws-sm", "aws-ssm"} & stores:
        _probe_aws(config, report)
    if "vault" in stores:
        _probe_vault(config, report)
    if not stores:
        report.warn("no provider name here resolves to a store")
    write("policy:")
    _policy(config, report)
    summary = f"{report.problems} problem(s), {report.warnings} warning(s)"
    write(f"result: {'OK' if not report.problems else 'NOT OK'}: {summary}")
    return 1 if report.problems else 0


def _owner_mode(path: str) -> str:
    st = os.lstat(path)
    return f"(uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})"


def _providers(executable: str, config: Config, report: Report) -> set[str]:
    """Every executable name beside this one that is this plugin."""
    report.write("providers:")
    plugin_dir = os.path.dirname(os.path.abspath(executable))
    me = os.path.realpath(executable)
    stores: set[str] = set()
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
        report.ok(f"{name} -> {STORE_LABELS[provider.store]} ({source})")
        stores.add(provider.store)
    return stores


def _probe_aws(config: Config, report: Report) -> None:
    settings = config.aws
    where = f"region {settings.region or '(job sets AWS_REGION)'}, endpoint {settings.endpoint_url or 'AWS'}"
    if settings.web_identity_role_arn:
        problem = template_ambiguity(settings.web_identity_role_arn)
        if problem:
            report.warn(f"aws.web_identity_role_arn: {problem}")
        report.ok(
            f"AWS: {where}; reads use the job's workload identity and role"
            f" {settings.web_identity_role_arn!r} (not testable without a job's token)"
        )
        return
    from nomad_secrets.backends.aws import aws_errors, make_client, store_error

    credentials = "static keys from the config" if settings.access_key_id else "the node's default chain"
    try:
        options = JobOptions(region=settings.region or "us-east-1")
        sts = make_client("sts", settings, options, Deadline(PROBE_SECONDS), Identity(None, None))
        arn = sts.get_caller_identity()["Arn"]
    except PluginError as exc:
        report.problem(f"AWS ({where}, {credentials}): {exc.message}")
    except aws_errors() as exc:
        error = store_error(
            exc,
            "sts:GetCallerIdentity",
            "AWS STS",
            action="sts:GetCallerIdentity",
            resource="the node's identity",
        )
        report.problem(f"AWS ({where}, {credentials}): {error.message}")
    else:
        report.ok(f"AWS: {where}; {credentials} are {arn}")


def _probe_vault(config: Config, report: Report) -> None:
    settings = config.vault
    where = f"{settings.address}, auth {settings.auth_method}"
    if settings.auth_method == "jwt":
        report.ok(f"Vault: {where}: logs in with the job's workload identity (not testable without a token)")
        return
    from nomad_secrets.backends.vault import Vault

    vault = None
    try:
        vault = Vault(settings, JobOptions(), Deadline(PROBE_SECONDS))
        vault.probe()
    except PluginError as exc:
        report.problem(f"Vault ({where}): {exc.message}")
    else:
        report.ok(f"Vault: {where}: the token is valid")
    finally:
        if vault is not None:
            vault.close()


def _policy(config: Config, report: Report) -> None:
    if config.policy is None:
        report.warn(
            "no [[policy]] in the config: every job may read everything this node's credentials"
            " can read; add rules (docs/policy.md)"
        )
        return
    for number, rule in enumerate(config.policy, start=1):
        patterns = ", ".join(p.text for p in rule.allow)
        who = f"namespace {rule.glob('namespace')!r}, job {rule.glob('job')!r}"
        report.ok(f"rule {number}: {who} may read {patterns}")
    report.ok("first matching rule decides; a job no rule matches reads nothing")
    if everyone_reads_everything(config.policy):
        report.warn("a rule for every namespace and job allows a whole store: every job reads all of it")
