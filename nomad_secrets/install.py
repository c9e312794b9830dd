"""``nomad-secrets install``: put the executable where Nomad finds it.

    nomad-secrets install --common-plugin-dir /opt/nomad/data/common_plugins [--as aws --as openbao]

The common plugin dir is the client's ``common_plugin_dir``; the plugin
directory is its ``secrets/`` subdirectory (the docs' words). Layout it
makes (idempotent)::

    <common_plugin_dir>/nomad-secrets.<build id>
                                             the executable (0755; outside
                                             secrets/, so Nomad does not run
                                             it under that name), a file a
                                             build, never written again
    <common_plugin_dir>/nomad-secrets        a symlink to it, swapped
                                             atomically at each install
    <common_plugin_dir>/secrets/<name>       one symlink per provider name
    <common_plugin_dir>/secrets/nomad-secrets.toml
                                             an example config, 0600, only
                                             if no config exists yet

Run it from the built executable (``dist/nomad-secrets install ...``). It
refuses the names ``nomad`` and ``vault`` (Nomad's built-in providers win
over a plugin file of that name), refuses to replace a different
executable or a file that is not its symlink without ``--force``, and
refuses a plugin directory given where the common plugin dir is due (it
would make ``secrets/secrets/``). Last, it removes the unpack directories of
other builds that no running fetch holds (cache.py). ``--plugin-dir`` is the option's name
before 0.2, kept as an alias.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import re
import shutil
import tempfile
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

# Which jobs may read what (docs/policy.md): the first rule whose namespace
# and job match decides. With no [[policy]] at all no job reads anything;
# every job reading everything is a rule too: allow = ["*:**"].
[[policy]]
allow = ["aws-sm:nomad/{namespace}/{job}/**"]
"""


class InstallError(Exception):
    pass


DESCRIPTION = (
    "Install this executable for a Nomad client: itself in the common plugin dir (the client's"
    " common_plugin_dir), a symlink per provider name in the plugin directory, its secrets/"
    " subdirectory, and an example config there if there is none. Refuses Nomad's built-in"
    " names (nomad, vault), and replaces another executable or file only with --force. Last,"
    " removes the unpack directories of other builds that no running fetch uses."
)


def install(
    source: str, plugin_dir: str, names: list[str], force: bool, write: Callable[[str], None] = print
) -> None:
    """``plugin_dir`` is the common plugin dir (the name predates the docs'
    words; the option is ``--common-plugin-dir``)."""
    if not zipfile.is_zipfile(source):
        raise InstallError(f"{source} is not the built executable: run dist/nomad-secrets install ...")
    given = os.path.normpath(os.path.abspath(plugin_dir))
    if os.path.basename(given) == "secrets" and not os.path.isdir(os.path.join(given, "secrets")):
        raise InstallError(
            f"{plugin_dir} is a plugin directory (<common_plugin_dir>/secrets/), and install wants the"
            " common plugin dir, the client's common_plugin_dir, which holds it; run install"
            f" --common-plugin-dir {os.path.dirname(given)}"
        )
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
    if os.path.realpath(source) != os.path.realpath(target):
        _place(source, plugin_dir, target)
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
        _create_whole(config, EXAMPLE_CONFIG)
        first = os.path.join(secrets, names[0])
        write(f"wrote an example config {config} (0600): edit it, then run {first} check")
    _unpack_for_tasks(target, write)
    prune_cache(source, write)
    write("")
    write("In the Nomad client's agent config (the default is <data_dir>/common_plugins):")
    write(f'  client {{ common_plugin_dir = "{os.path.abspath(plugin_dir)}" }}')
    write("then make the agent fingerprint plugins again: systemctl reload nomad  (or kill -HUP <agent pid>)")


def _place(source: str, plugin_dir: str, target: str) -> None:
    """The build as its own file, ``nomad-secrets.<build id>``, never written
    again, and ``nomad-secrets`` a symlink to it, swapped atomically.

    A running fetch reads its executable again by path after it starts
    (zipimport reopens the archive for each read), so a file replaced under
    it mixes two builds' bytes. The bootstrap follows ``nomad-secrets`` to
    the versioned file at once and reads only that; the previous build's
    file stays for the fetches still running it, older ones go.
    """
    with zipfile.ZipFile(source) as zf:
        build_id = zf.read("build-info").decode().split("\n")[0]
    versioned = os.path.join(plugin_dir, f"{EXECUTABLE_NAME}.{build_id}")
    # Written again only when its bytes are not the build's: a `cp` over the
    # symlink wrote another build into it (a reviewer's upgrade by hand).
    if not (os.path.isfile(versioned) and filecmp.cmp(source, versioned, shallow=False)):
        tmp = versioned + ".tmp"
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o755)  # noqa: S103 - an executable others may run, not write
        os.replace(tmp, versioned)
    previous = os.path.realpath(target) if os.path.islink(target) else None
    link = target + ".tmp"
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(os.path.basename(versioned), link)
    os.replace(link, target)
    keep = {versioned, previous}
    prefix = f"{EXECUTABLE_NAME}."
    for name in os.listdir(plugin_dir):
        path = os.path.join(plugin_dir, name)
        if (
            name.startswith(prefix)
            and not name.endswith(".tmp")
            and path not in keep
            and os.path.isfile(path)
        ):
            os.remove(path)


def _create_whole(path: str, text: str) -> None:
    """Write ``path`` only if it does not exist, and never half: a fetch that
    reads the config at this moment sees no file or the whole file (the
    temporary file is linked into place, which fails if one is there)."""
    fd, tmp = tempfile.mkstemp(prefix=".nomad-secrets-", suffix=".toml", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    finally:
        os.unlink(tmp)


def _unpack_for_tasks(target: str, write: Callable[[str], None]) -> None:
    """Run the installed file once, as Nomad will (its shebang's interpreter,
    its cache directory), so that the first task on the node does not pay
    for unpacking a new build, nor a burst of first tasks wait on it."""
    import subprocess

    try:
        run = subprocess.run(
            [target, "version"], capture_output=True, text=True, timeout=UNPACK_TIMEOUT_SECONDS, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"{target} did not run: {exc}") from None
    if run.returncode != 0:
        said = (run.stderr or run.stdout).strip().splitlines()
        raise InstallError(f"{target} cannot unpack its code: {said[-1] if said else run.returncode}")
    write(f"unpacked {target} for its interpreter ({run.stdout.strip()})")


UNPACK_TIMEOUT_SECONDS = 120


def prune_cache(source: str, write: Callable[[str], None]) -> None:
    """Remove the unpack directories of other builds that no run holds."""
    from nomad_secrets import cache
    from nomad_secrets.trust import untrusted, untrusted_ancestors

    with zipfile.ZipFile(source) as zf:
        build_id, cache_dir = zf.read("build-info").decode().split("\n")[:2]
    root = cache_dir or cache.default_cache_dir()
    if not os.path.isdir(root):
        return
    problem = untrusted_ancestors(root) or untrusted(root, "cache directory")
    if problem:
        write(f"left the unpack cache alone: {problem}")
        return
    removed, kept = cache.prune(root, build_id)
    if removed:
        write(f"removed {len(removed)} unpack directories of other builds from {root}: {', '.join(removed)}")
    for reason in kept:
        write(f"kept {os.path.join(root, reason)}")


def main(argv: list[str], source: str) -> int:
    parser = argparse.ArgumentParser(prog=f"{os.path.basename(source)} install", description=DESCRIPTION)
    parser.add_argument(
        "--common-plugin-dir",
        metavar="DIR",
        help="the common plugin dir: the Nomad client's common_plugin_dir (by default"
        " <data_dir>/common_plugins), which holds the plugin directory secrets/",
    )
    parser.add_argument("--plugin-dir", dest="old_plugin_dir", help=argparse.SUPPRESS)  # before 0.2
    parser.add_argument(
        "--as",
        dest="names",
        action="append",
        metavar="NAME",
        help=f"a provider name to install (repeatable; default aws). Ideas: {SUGGESTED}",
    )
    parser.add_argument("--force", action="store_true", help="replace a different executable or file")
    args = parser.parse_args(argv)
    common_plugin_dir = args.common_plugin_dir or args.old_plugin_dir
    if not common_plugin_dir:
        parser.error("the following argument is required: --common-plugin-dir")
    try:
        install(os.path.realpath(source), common_plugin_dir, args.names or ["aws"], args.force)
    except (InstallError, OSError) as exc:
        print(f"nomad-secrets install: {exc}")
        return 1
    return 0
