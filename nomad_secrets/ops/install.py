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

It runs as root on a directory the operator names, so it trusts nothing
there: the common plugin dir must pass the config's trust rules (root's,
writable by no one else, no symlink along the path; a missing one is
created 0755 below a trusted directory), the build's file is written
through ``nodefile`` (a temporary file of its own, ``O_EXCL |
O_NOFOLLOW``, renamed into place), the new build is unpacked before the
link is swapped to it (a fetch right after the swap finds it ready), and
the previous builds' files are pruned by their real paths.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import re
import stat
import zipfile
from collections.abc import Callable

from nomad_secrets.core.config import CONFIG_FILE_NAME, RESERVED_NAMES, SYSTEM_CONFIG
from nomad_secrets.process import nodefile
from nomad_secrets.process.trust import untrusted, untrusted_ancestors

EXECUTABLE_NAME = "nomad-secrets"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_BUILD_FILE = re.compile(re.escape(EXECUTABLE_NAME) + r"\.[0-9a-f]{24}\Z")  # nomad-secrets.<build id>
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
# every job reading everything is a rule too: allow = ["*:**"]. The rules
# stay below every other section; only [agent], [plugin] and [metrics] may
# follow them (docs/configuration.md: a file cut short loses its end).
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
    plugin_dir = trusted_directory(plugin_dir, "common plugin dir", "--common-plugin-dir")
    secrets = trusted_directory(os.path.join(plugin_dir, "secrets"), "plugin directory")
    target = os.path.join(plugin_dir, EXECUTABLE_NAME)
    same = os.path.isfile(target) and filecmp.cmp(source, target, shallow=False)
    if os.path.lexists(target) and not same and not force:
        raise InstallError(f"{target} exists and is a different file; add --force to replace it")
    if os.path.realpath(source) != os.path.realpath(target):
        _place(source, plugin_dir, target, write)
    else:
        _unpack_for_tasks(target, write)
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
        # Whole or not at all: a fetch reading it now sees no file or all of it.
        problem = nodefile.create(config, EXAMPLE_CONFIG.encode(), 0o600, "example config")
        if problem:
            raise InstallError(problem)
        first = os.path.join(secrets, names[0])
        write(f"wrote an example config {config} (0600): edit it, then run {first} check")
    prune_cache(source, write)
    write("")
    write("In the Nomad client's agent config (the default is <data_dir>/common_plugins):")
    write(f'  client {{ common_plugin_dir = "{os.path.abspath(plugin_dir)}" }}')
    write("then make the agent fingerprint plugins again: systemctl reload nomad  (or kill -HUP <agent pid>)")


def trusted_directory(path: str, what: str, option: str | None = None) -> str:
    """``path`` as its real, absolute path, once it passes the config's
    trust rules: root's (or ours), writable by no one else, no symlink
    along it, below trusted directories. A missing one is made (0755) below
    its nearest directory that passes them."""
    given = os.path.normpath(os.path.abspath(path))
    real = os.path.realpath(given)
    if real != given:
        fix = f"give its real path, {option} {real}" if option else "make it a directory of its own"
        raise InstallError(f"the {what} {path} goes through a symlink (to {real}); {fix}")
    missing = []
    while not os.path.lexists(given):
        missing.append(given)
        given = os.path.dirname(given)
    problem = untrusted(given, "directory" if missing else what) or untrusted_ancestors(given)
    if problem is None and missing and not stat.S_ISDIR(os.lstat(given).st_mode):
        problem = f"{given} is not a directory"
    if problem:
        raise InstallError(f"refusing the {what} {path}: {problem}")
    for directory in reversed(missing):
        os.mkdir(directory, 0o755)
        os.chmod(directory, 0o755)  # noqa: S103 - whatever the umask; others read, never write
    if not os.path.isdir(real):
        raise InstallError(f"the {what} {path} is not a directory")
    return real


def _place(source: str, plugin_dir: str, target: str, write: Callable[[str], None]) -> None:
    """The build as its own file, ``nomad-secrets.<build id>``, never written
    again, unpacked, and then ``nomad-secrets`` a symlink to it, swapped
    atomically.

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
    if not _is_build(versioned, source):
        with open(source, "rb") as f:
            data = f.read()
        problem = nodefile.replace(versioned, data, 0o755, "executable", durable=True)
        if problem:
            raise InstallError(problem)
    # Before the swap: the first fetches of the new build find it unpacked.
    _unpack_for_tasks(versioned, write)
    previous = os.path.realpath(target) if os.path.islink(target) else None
    link = os.path.join(plugin_dir, f".{EXECUTABLE_NAME}.{os.getpid()}-{os.urandom(4).hex()}.link")
    os.symlink(os.path.basename(versioned), link)
    try:
        os.rename(link, target)
    except OSError:
        nodefile.remove(link)
        raise
    keep = {os.path.realpath(versioned), previous}
    for name in os.listdir(plugin_dir):
        path = os.path.join(plugin_dir, name)
        if _BUILD_FILE.match(name) and os.path.realpath(path) not in keep and _is_regular(path):
            os.remove(path)


def _is_build(path: str, source: str) -> bool:
    """``path`` is a regular file of root's (no symlink) with ``source``'s bytes."""
    return _is_regular(path) and filecmp.cmp(source, path, shallow=False)


def _is_regular(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid in (0, os.geteuid())


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
    from nomad_secrets.process import cache

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
