"""The unpack cache's directories: which one a fetch uses, and removing the
ones of other builds that nothing uses any more.

``<cache>/<build id>-<interpreter tag>/`` holds one build's code, unpacked
by the first fetch of that build (bootstrap.py). Every fetch holds a shared
flock on its directory for as long as it runs (``hold``: the descriptor
stays open until the process exits). ``prune`` takes an exclusive lock
without waiting, so a directory that any running process imports from is
never touched; one it can lock it renames out of the way first (a fetch
that opened it a moment before then finds its path changed and unpacks
again), then removes. Pruning runs in ``install`` and in a fetch that has
just unpacked a new build: a fetch that finds its directory in place never
lists the cache.

Only what passes the trust rules is removed (not a symlink, ours, writable
by no one else), and only directories that say they follow this protocol
(``HELD_MARK``): a build before 0.2 holds no lock, so its directory is left
for the operator. Standard library only: ``scripts/build`` stores a copy of
this file beside the zip's ``__main__.py``, like trust.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time

try:  # the source tree and the installed package
    from nomad_secrets.process import endings, trust
except ImportError:  # the executable's bootstrap: scripts/build stores both beside it
    import nomad_secrets_endings as endings  # type: ignore[import-not-found,no-redef]
    import nomad_secrets_trust as trust  # type: ignore[import-not-found,no-redef]

TYPE_CHECKING = False  # not typing's: importing typing costs a fetch's start ms
if TYPE_CHECKING:
    from collections.abc import Callable

ROOT_CACHE = "/var/cache/nomad-secrets"
HELD_MARK = ".held-while-in-use"  # written into each directory before it is published
MANIFEST = ".manifest"  # every file's size and CRC-32, written before it is published
_HEX = frozenset("0123456789abcdef")
_TAG = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def is_entry(name: str) -> bool:
    """``<build id>-<sys.implementation.cache_tag>``: 24 hex digits, a dash,
    a tag. Without ``re``, whose import a fetch's start does not pay."""
    build, dash, tag = name[:24], name[24:25], name[25:]
    return len(build) == 24 and set(build) <= _HEX and dash == "-" and bool(tag) and set(tag) <= _TAG


# A fetch prunes only directories older than this (by their own time): two
# builds in use on one node (two plugin dirs) then unpack each other's at
# most once an hour, not at every fetch. install prunes at any age.
FETCH_PRUNE_MIN_AGE = 3600.0
# A ".unpack-*" no run holds (its unpacker locks it from its first
# moment) and this old is a killed unpack's.
STALE_UNPACK_AGE = 60.0

_held: list[int] = []  # descriptors kept open (and locked) until exit

# Set (to the pid) in the environment of a run started again after its
# unpack directory was found damaged and moved aside (``heal``): that run
# does not try again. Any other value is the job's, and refused as such.
AGAIN = "_NOMAD_SECRETS_STARTED_AGAIN"  # not NOMAD_*, which a job option check lets by


def started_again(environ: dict[str, str]) -> bool:
    """Whether this run is ``heal``'s second try; takes its mark out of
    ``environ`` (a job's own value stays, for the job options' check)."""
    if environ.get(AGAIN) == str(os.getpid()):
        del environ[AGAIN]
        return True
    return False


# Started again only this early in a run: a fresh unpack takes about a
# second on an idle node, and Nomad's clock counts from the first start.
HEAL_BEFORE_SECONDS = 4.0


def default_cache_dir() -> str:
    if os.geteuid() == 0:
        return ROOT_CACHE
    import pwd

    return os.path.join(pwd.getpwuid(os.geteuid()).pw_dir, ".cache", "nomad-secrets")


def entry_name(build_id: str) -> str:
    return f"{build_id}-{sys.implementation.cache_tag}"


def hold(entry: str) -> bool:
    """Mark ``entry`` in use by this process until it exits (a shared lock);
    False when ``entry`` was removed or replaced before the lock was taken,
    and the caller must look again."""
    try:
        fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    fcntl.flock(fd, fcntl.LOCK_SH)  # a pruner holds its exclusive lock for a rename only
    try:
        now = os.stat(entry, follow_symlinks=False)
    except OSError:
        now = None
    opened = os.fstat(fd)
    if now is None or (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino):
        os.close(fd)
        return False
    _held.append(fd)
    return True


def import_path(entry: str) -> str:
    """Where a run imports from once it holds ``entry``: the directory by its
    descriptor (``/proc/self/fd/N/lib``), which no rename can take from
    under the run (another run moving a damaged copy aside, a prune); the
    path itself where /proc is not mounted."""
    via = f"/proc/self/fd/{_held[-1]}/lib" if _held else ""
    return via if via and os.path.isdir(via) else os.path.join(entry, "lib")


def prune(cache_root: str, keep_build: str, min_age: float = 0.0) -> tuple[list[str], list[str]]:
    """Remove the directories of builds other than ``keep_build`` that no
    process holds; the names removed, and the ones kept with the reason.

    The caller has checked ``cache_root`` against the trust rules.
    """
    removed: list[str] = []
    kept: list[str] = []
    now = time.time()
    for name in sorted(os.listdir(cache_root)):
        path = os.path.join(cache_root, name)
        if name.startswith(".prune-"):  # moved aside (heal), or a pruner stopped midway
            if _remove_unheld(cache_root, path, name, kept, rename=False):
                removed.append(name)
            continue
        if name.startswith(".unpack-"):
            if _age(path, now) > STALE_UNPACK_AGE and _remove_unheld(cache_root, path, name, kept):
                removed.append(name)
            continue
        if not is_entry(name) or name.startswith(keep_build + "-"):
            continue
        problem = trust.untrusted(path, "cache directory")
        if problem:
            kept.append(f"{name}: {problem}")
            continue
        if not os.path.lexists(os.path.join(path, HELD_MARK)):
            kept.append(f"{name}: a build before 0.2, which does not mark when it is in use")
            continue
        if _age(path, now) < min_age:
            continue
        if _remove_unheld(cache_root, path, name, kept):
            removed.append(name)
    return removed, kept


def _remove_unheld(cache_root: str, path: str, name: str, kept: list[str], rename: bool = True) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        kept.append(f"{name}: {exc.strerror}")
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            kept.append(f"{name}: in use by a running fetch")
            return False
        trash = os.path.join(cache_root, f".prune-{name}-{os.getpid()}") if rename else path
        try:
            if rename:
                os.rename(path, trash)  # under the lock: no fetch takes it from here on
        except OSError as exc:
            kept.append(f"{name}: {exc.strerror}")
            return False
    finally:
        os.close(fd)
    return _remove(cache_root, trash, name, kept)


def _remove(cache_root: str, path: str, name: str, kept: list[str]) -> bool:
    import shutil

    problem = trust.untrusted(path, "cache directory")
    if problem:
        kept.append(f"{name}: {problem}")
        return False
    try:
        # Removes links, never follows them (the fd-based walk on Linux).
        shutil.rmtree(path)
    except OSError as exc:
        kept.append(f"{name}: {exc.strerror}")
        return False
    return True


def _age(path: str, now: float) -> float:
    try:
        return now - os.lstat(path).st_mtime
    except OSError:
        return 0.0


def write_manifest(entry: str) -> None:
    """Record every file under ``entry`` (size and CRC-32) for ``damage``:
    cheap to write once per unpack (about 10 ms), read only when something
    has already failed, and by ``check``."""
    import zlib

    lines = []
    for path in _files(entry):
        with open(os.path.join(entry, path), "rb") as f:
            data = f.read()
        lines.append(f"{len(data)} {zlib.crc32(data):08x} {path}\n")
    with open(os.path.join(entry, MANIFEST), "w") as f:
        f.writelines(lines)


def damage(entry: str) -> str | None:
    """What is wrong with the files of an unpack directory, or None: a file
    missing, cut short or changed since it was unpacked (a cleanup job, a
    full disk, a bad block). A directory without a manifest was never
    finished by this protocol."""
    import zlib

    try:
        with open(os.path.join(entry, MANIFEST)) as f:
            manifest = f.read().splitlines()
    except (FileNotFoundError, NotADirectoryError) as exc:
        return f"its manifest {MANIFEST} cannot be read ({exc.strerror})"
    except OSError:
        return None  # out of descriptors, say: nothing known to be wrong with the files
    for line in manifest:
        try:
            size, crc, path = line.split(" ", 2)
            int(size)
        except ValueError:
            return f"its manifest {MANIFEST} is damaged"
        try:
            with open(os.path.join(entry, path), "rb") as f:
                data = f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            return f"{path}: {exc.strerror}"
        except OSError:
            return None  # out of descriptors, say: nothing known to be wrong with the files
        if len(data) != int(size):
            return f"{path} has {len(data)} bytes, not {size}"
        if f"{zlib.crc32(data):08x}" != crc:
            return f"{path} has changed since it was unpacked"
    return None


def damaged(held: str) -> tuple[str, str] | None:
    """(its name now, what is wrong) for the unpack directory this run
    imports from, when its manifest shows damage; None outside the
    executable, or when nothing is wrong. ``held``: the directory as this
    run reaches it (``/proc/self/fd/N``, import_path): what it really
    imports, whatever its name now. The name is what a message shows and
    heal moves: ``.prune-<entry>-<pid>`` once another run moved it aside."""
    entry = os.path.realpath(held).removesuffix(" (deleted)")  # /proc's name for one removed since
    name = os.path.basename(entry)
    if not (is_entry(name) or (name.startswith(".prune-") and is_entry(name[7:].rsplit("-", 1)[0]))):
        return None  # by its name, not its marks: a cleaner may have taken those
    what = damage(held)
    return (entry, what) if what else None


def held_by(module_file: str) -> str:
    """The unpack directory a module of ours (``<dir>/lib/nomad_secrets/x.py``) came from."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(module_file))))


def heal(entry: str, environ: dict[str, str], age: float, again: bool) -> bool:
    """Move a damaged unpack directory aside, then, unless this run is
    already a second try or late, start it again in place (``execve``: same
    process, same arguments, same environment, Nomad's clock still running),
    and that run unpacks afresh. Returns only when it does not start again
    (whether the directory was moved aside: the next fetch unpacks then).
    A directory another run moved aside already is left where it is. ``environ``: the environment Nomad gave;
    ``again``: this run is the second try (AGAIN was in its environment)."""
    cache_root = os.path.dirname(entry)
    aside = os.path.join(cache_root, f".prune-{os.path.basename(entry)}-{os.getpid()}")
    # Only moved: runs that hold it import through their descriptor
    # (import_path) and finish; prune removes it once none holds it. An
    # OSError: moved by another run already, or not ours to move.
    moved = not is_entry(os.path.basename(entry))  # moved aside by another run
    if not moved:
        with contextlib.suppress(OSError):
            os.rename(entry, aside)
            moved = True
    if again or age > HEAL_BEFORE_SECONDS:
        return moved
    # The mark is this process's pid (execve keeps it): a job's env block
    # cannot say "already tried" for a run it does not know the pid of.
    marked = {**environ, AGAIN: str(os.getpid())}
    # Nomad's stdout back on fd 1 for the new run: once protocol.py guards
    # it, fd 1 is /dev/null and the real one endings' private copy.
    endings.restore_stdout()
    try:
        os.execve(sys.executable, sys.orig_argv, marked)  # noqa: S606 - ourselves, as Nomad ran us
    except OSError:
        return moved


def healed(
    held: str, heal: Callable[[str], bool] | None, seen: Callable[[str, str], None] | None = None
) -> str | None:
    """What a run says when the unpack directory it imports from (``held``)
    is damaged, once ``heal`` moved it aside (and maybe started this run
    again: it returns only when it did not); None when nothing is wrong.
    ``heal`` None: a long-lived process (the agent), which moves nothing;
    ``seen``: told the directory and its damage first, for the debug log."""
    found = damaged(held)
    if found is None:
        return None
    entry, what = found
    if seen is not None:
        seen(entry, what)
    return endings.damaged(entry, what, None if heal is None else heal(entry))


def process_age() -> float:
    """Seconds since this process started (exec keeps the start): Nomad's
    timeout counts from there, and on a node starting many tasks at once
    the interpreter's own start can take seconds."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, since boot
        return min(max(time.clock_gettime(time.CLOCK_BOOTTIME) - started, 0.0), 60.0)
    except (OSError, ValueError, IndexError):
        return 0.0


def _files(entry: str) -> list[str]:
    out: list[str] = []
    for folder, _, names in os.walk(os.path.join(entry, "lib")):
        out.extend(os.path.relpath(os.path.join(folder, name), entry) for name in names)
    return sorted(out)
