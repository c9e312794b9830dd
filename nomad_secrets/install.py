"""``nomad-secrets install``: put the executable where Nomad finds it.

    nomad-secrets install --plugin-dir /opt/nomad/data/common_plugins [--as aws --as openbao] [--force]

Layout it makes (idempotent)::

    <plugin-dir>/nomad-secrets              the executable (0755; outside
                                            secrets/, so Nomad does not run
                                            it under that name)
    <plugin-dir>/secrets/<name>             one symlink per provider name
    <plugin-dir>/secrets/nomad-secrets.toml an example config, 0600, only if
                                            no config exists yet

Run it from the built executable (``dist/nomad-secrets install ...``). It
refuses the names ``nomad`` and ``vault`` (Nomad's built-in providers win
over a plugin file of that name), and refuses to replace a different
executable or a file that is not its symlink without ``--force``.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import re
import shutil
import zipfile
from collections.abc import Callable

from nomad_secrets.config import CONFIG_FILE_NAME, RESERVED_NAMES, SYSTEM_CONFIG

EXECUTABLE_NAME = "nomad-secrets"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
SUGGESTED = "aws, aws-ssm, openbao, vault-kv"

EXAMPLE_CONFIG = """\
# nomad-secrets operator config: docs/configuration.md has every key.
# Keep this file root-owned and 0600; a job can neither read nor replace it.

[plugin]
deadline_seconds = 8                 # Nomad 1.11.0-1.11.3 kill plugins at 10 s
# debug_log = "/var/log/nomad-secrets.log"

[aws]
# region = "us-east-1"               # default when a job sets no AWS_REGION
# Without keys, the node's default AWS credentials (instance profile) are used.

# [vault]
# address = "https://vault.service.consul:8200"
# token_file = "/etc/nomad-secrets/vault-token"

# [providers.openbao]                # what the executable named openbao reads
# store = "vault"

# Which jobs may read what (docs/policy.md). Without [[policy]], every job
# may read everything this node's credentials can read.
# [[policy]]
# allow = ["aws-sm:nomad/{namespace}/{job}/**"]
"""


class InstallError(Exception):
    pass


def install(
    source: str, plugin_dir: str, names: list[str], force: bool, write: Callable[[str], None] = print
) -> None:
    if not zipfile.is_zipfile(source):
        raise InstallError(f"{source} is not the built executable: run dist/nomad-secrets install ...")
    for name in names:
        if name in RESERVED_NAMES:
            raise InstallError(
                f"{name!r} is one of Nomad's built-in providers ({', '.join(RESERVED_NAMES)}):"
                f" Nomad would never run a plugin of that name; pick another, such as {SUGGESTED}"
            )
        if not _NAME.match(name) or name == EXECUTABLE_NAME:
            raise InstallError(f"{name!r} is not a usable provider name; try one of {SUGGESTED}")
    secrets = os.path.join(plugin_dir, "secrets")
    os.makedirs(secrets, mode=0o755, exist_ok=True)
    target = os.path.join(plugin_dir, EXECUTABLE_NAME)
    same = os.path.isfile(target) and filecmp.cmp(source, target, shallow=False)
    if os.path.lexists(target) and not same and not force:
        raise InstallError(f"{target} exists and is a different file; add --force to replace it")
    if os.path.abspath(source) != os.path.abspath(target):
        tmp = target + ".tmp"
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o755)  # noqa: S103 - an executable others may run, not write
        os.replace(tmp, target)
    write(f"installed {target}")
    for name in names:
        link = os.path.join(secrets, name)
        wanted = os.path.join("..", EXECUTABLE_NAME)
        if os.path.islink(link) and os.readlink(link) == wanted:
            write(f"  {link} -> {wanted} (already)")
            continue
        if os.path.lexists(link):
            if not force:
                raise InstallError(
                    f"{link} exists and is not this plugin's symlink; add --force to replace it"
                )
            os.remove(link)
        os.symlink(wanted, link)
        write(f"  {link} -> {wanted}")
    config = os.path.join(secrets, CONFIG_FILE_NAME)
    if os.path.lexists(config) or os.path.lexists(SYSTEM_CONFIG):
        write(f"kept the existing config ({config if os.path.lexists(config) else SYSTEM_CONFIG})")
    else:
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(EXAMPLE_CONFIG)
        first = os.path.join(secrets, names[0])
        write(f"wrote an example config {config} (0600): edit it, then run {first} check")
    write("")
    write("In the Nomad client's agent config (the default is <data_dir>/common_plugins):")
    write(f'  client {{ common_plugin_dir = "{os.path.abspath(plugin_dir)}" }}')
    write("then make the agent fingerprint plugins again: systemctl reload nomad  (or kill -HUP <agent pid>)")


def main(argv: list[str], source: str) -> int:
    parser = argparse.ArgumentParser(prog="nomad-secrets install", description=__doc__.split("\n\n")[0])
    parser.add_argument("--plugin-dir", required=True, help="the client's common_plugin_dir")
    parser.add_argument(
        "--as",
        dest="names",
        action="append",
        metavar="NAME",
        help=f"a provider name to install (repeatable; default aws). Ideas: {SUGGESTED}",
    )
    parser.add_argument("--force", action="store_true", help="replace a different executable or file")
    args = parser.parse_args(argv)
    try:
        install(os.path.realpath(source), args.plugin_dir, args.names or ["aws"], args.force)
    except (InstallError, OSError) as exc:
        print(f"nomad-secrets install: {exc}")
        return 1
    return 0
