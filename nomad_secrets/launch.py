"""Everything the executable does after fingerprint, before the plugin's
code runs: unpack the zip's ``lib.zip`` once into
``<cache>/<build id>-<interpreter tag>/`` (compiled for the running
interpreter), hold it, and import the plugin from there; answer Nomad when
that cannot be done (SIGTERM, a cache that is not private, a full disk, a
damaged directory, a process out of memory or descriptors).

``scripts/build`` stores this file beside the zip's ``__main__.py`` (the
bootstrap) as ``nomad_secrets_launch.py``, so that fingerprint never
compiles it. Standard library only.

The unpack is atomic (a private temporary directory renamed into place), so
many plugins starting at once on a fresh node are safe: one rename wins and
the others use its result. The cache runs as root's code, so it is used only
when the running user (or root) owns it and no one else can write to it.
Each run holds its directory in use until it exits, and a run that unpacked
a new build removes other builds' directories that no run holds
(cache.py).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing's: importing typing costs fingerprint ~9 ms
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn


try:  # the source tree and the installed package
    from nomad_secrets.process import endings
except ImportError:  # the executable: scripts/build stores it beside __main__.py
    import nomad_secrets_endings as endings  # type: ignore[import-not-found,no-redef]


class CacheError(Exception):
    pass


_phase = [""]  # what this run was doing, for the SIGTERM message: "" while it starts


def unpacked(archive: str, build_id: str, cache_root: str) -> str:
    """The directory to import from, unpacking the archive's lib/ if needed,
    held in use until this process exits. ``cache_root`` "" is the default."""
    # Imported here, not at the top: fingerprint must not pay for them.
    try:  # the source tree and the installed package
        from nomad_secrets.process import cache, trust
    except ImportError:  # the executable: scripts/build stores both beside __main__.py
        import nomad_secrets_cache as cache  # type: ignore[import-not-found,no-redef]
        import nomad_secrets_trust as trust  # type: ignore[import-not-found,no-redef]

    cache_root = cache_root or cache.default_cache_dir()
    entry = os.path.join(cache_root, cache.entry_name(build_id))
    problem = trust.untrusted_ancestors(cache_root)  # before anything is written there
    if problem:
        raise CacheError(problem)
    for _ in range(3):  # a prune may take the directory between the look and the lock
        made = False
        if not os.path.isdir(entry):
            with _one_unpacker(cache_root, trust.untrusted, cache.process_age()):
                if not os.path.isdir(entry):  # another run may have unpacked it meanwhile
                    made = _unpack(archive, cache_root, entry, trust.untrusted, cache)
        problem = trust.untrusted(cache_root, "cache directory") or trust.untrusted(entry, "cache directory")
        if problem and os.path.lexists(entry):  # else: pruned since; look again
            raise CacheError(problem)
        if not problem and cache.hold(entry):
            if made:  # a new build on this node: the old ones' directories may go
                import contextlib

                with contextlib.suppress(OSError):  # the next new build tries again
                    cache.prune(cache_root, build_id, cache.FETCH_PRUNE_MIN_AGE)
            return cache.import_path(entry)
    raise CacheError(f"the cache directory {entry} was removed three times while this run started")


UNPACK_LOCK = ".unpack.lock"
# A fetch waits for another run's unpack until this age of its own (the
# default deadline, 8 s, less a margin; the config is not read yet), then
# answers while Nomad still reads the answer (at its timeout, 10 s on
# 1.11.0 to 1.11.3, the user sees only "signal: terminated").
FETCH_WAIT_UNTIL_AGE = 7.5
# Other commands (check, install) then unpack anyway: a stuck holder must
# not stop them.
UNPACK_WAIT_SECONDS = 30.0


class _one_unpacker:
    """Many runs of a new build at once (a burst of task starts on a fresh
    node, or after an upgrade) unpack it once: the others wait on a lock,
    sleeping, then find it done, instead of each unpacking and compiling
    the same code on the same cores. A fetch that has waited until
    FETCH_WAIT_UNTIL_AGE answers that (CacheError); anything else goes on
    alone after UNPACK_WAIT_SECONDS, as everything does if the lock cannot
    be had (the rename into place is atomic either way)."""

    def __init__(self, cache_root: str, untrusted: Callable[[str, str], str | None], age: float) -> None:
        self.cache_root, self.untrusted, self.age, self.fd = cache_root, untrusted, age, -1

    def __enter__(self) -> None:
        import fcntl
        import time

        old_umask = os.umask(0o077)
        try:
            os.makedirs(self.cache_root, mode=0o700, exist_ok=True)
            if self.untrusted(self.cache_root, "cache directory"):
                return  # _unpack refuses it, saying why
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            self.fd = os.open(os.path.join(self.cache_root, UNPACK_LOCK), flags, 0o600)
        except OSError:
            return
        finally:
            os.umask(old_umask)
        fetch = endings.operation() == "fetch"
        _phase[0] = "waited for another run to unpack a new build into"
        start, said = time.monotonic(), False
        end = start + (max(FETCH_WAIT_UNTIL_AGE - self.age, 0.0) if fetch else UNPACK_WAIT_SECONDS)
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError:
                if time.monotonic() > end:
                    if fetch:
                        os.close(self.fd)
                        raise CacheError(
                            f"another run has been unpacking this build into {self.cache_root} for the"
                            f" {time.monotonic() - start:.1f} s this fetch waited (many first fetches at"
                            " once on a busy node): the next fetch finds it done; `nomad-secrets"
                            " install` unpacks a new build before tasks start (docs/upgrading.md)"
                        ) from None
                    return
                if not fetch and not said and time.monotonic() - start > 1.0:  # a person waits: say so
                    said = True
                    os.write(
                        2,
                        f"waiting for another run unpacking into {self.cache_root} (at most 30 s)\n".encode(),
                    )
                time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases the lock


def _unpack(
    archive: str, cache_root: str, entry: str, untrusted: Callable[[str, str], str | None], cache: Any
) -> bool:
    """Unpack into ``entry``; True when this process's rename published it.
    ``cache``: the cache module (its marks, its manifest). Whatever ends
    it (an error, a full disk, Nomad's SIGTERM), the temporary directory
    goes; a SIGKILL's is locked by no one, and ``cache.prune`` takes it."""
    import _signal  # type: ignore[import-not-found,unused-ignore]  # built in: not signal's enums
    import errno
    import fcntl
    import io
    import shutil
    import tempfile
    import zipfile

    old_umask = os.umask(0o077)
    need = (0, 0)  # bytes and inodes this build takes unpacked, once lib.zip is read
    try:
        os.makedirs(cache_root, mode=0o700, exist_ok=True)
        problem = untrusted(cache_root, "cache directory")  # before writing into it
        if problem:
            raise CacheError(problem)
        _phase[0] = "unpacked a new build into"
        # Nomad's SIGTERM is held back until the temporary directory has a
        # name here to be removed by: raised inside mkdtemp, after its mkdir,
        # it left the directory behind (a fresh clone's CI saw one).
        mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGTERM})
        try:
            tmp = tempfile.mkdtemp(prefix=".unpack-", dir=cache_root)
        except BaseException:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)
            raise
        held = -1
        try:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)  # one held back is raised here, in this try
            held = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fcntl.flock(held, fcntl.LOCK_SH)  # ours while we live (cache.prune)
            with zipfile.ZipFile(archive) as outer:
                lib = io.BytesIO(outer.read("lib.zip"))  # a zip in the zip: see scripts/build
            with zipfile.ZipFile(lib) as inner:
                need = room_needed(inner.infolist())
                free = _free(cache_root)
                if free[0] < need[0] or free[1] < need[1]:  # at once, not after writing (for each waiter too)
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                inner.extractall(tmp)
            _compile(os.path.join(tmp, "lib"))
            cache.write_manifest(tmp)
            with open(os.path.join(tmp, cache.HELD_MARK), "w") as f:
                f.write("runs of this build hold a shared flock on this directory while they run\n")
            os.rename(tmp, entry)
            return True
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            # Lost a race: another run published it first (a prune may even
            # have taken it again since); the caller looks again.
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) or os.path.isdir(entry):
                return False
            raise
        except BaseException:  # a compile that failed, Nomad's SIGTERM
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            if held >= 0:
                os.close(held)
    except OSError as exc:
        limit = endings.limit_in(exc)
        if limit:
            raise CacheError(
                endings.ran_out(limit, f"unpacked into the cache directory {cache_root}")
            ) from None
        room = _free_space(exc, cache_root, need)
        raise CacheError(
            f"cannot unpack into the cache directory {cache_root}: {exc.strerror}{room}"
        ) from None
    finally:
        os.umask(old_umask)


def _compile(lib: str) -> None:
    """Byte-compile everything for this interpreter before the directory is
    published: the cache never changes after the rename. Unchecked-hash
    .pyc files are trusted without comparing source times (the sources sit
    beside them, written in the same moment, by us). Not compileall: it
    swallows the cause (a full disk, no memory left) and says only "failed"."""
    import py_compile

    for root, dirs, files in os.walk(lib):
        dirs.sort()
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            source = os.path.join(root, name)
            try:
                py_compile.compile(
                    source, doraise=True, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH
                )
            except py_compile.PyCompileError as exc:  # compiling failed; writing the .pyc raises OSError
                if exc.exc_type_name == "MemoryError":
                    raise MemoryError from None
                raise CacheError(
                    f"cannot compile {os.path.relpath(source, lib)} of the unpacked build"
                    f" ({exc.exc_type_name}): the executable is damaged; install the build again"
                ) from None


# The disk an unpacked build takes for each byte of its sources, at the
# least: the sources and their compiled code (2.28 to 2.33 for this build on
# tmpfs, with its 4 KiB pages). Less room than that is refused before any
# write; a guess short of the truth ends in ENOSPC, which cleans up too.
UNPACKED_PER_SOURCE_BYTE = 2.2


def room_needed(infos: list[Any]) -> tuple[int, int]:
    """Bytes and inodes the unpacked build takes: its files, their
    directories, a .pyc and a __pycache__ for the sources, the manifest,
    the mark and the directory itself."""
    names = [info.filename for info in infos if not info.filename.endswith("/")]
    sources = [name for name in names if name.endswith(".py")]
    directories = {os.path.dirname(name) for name in names} - {""}
    for name in list(directories):
        while name := os.path.dirname(name):
            directories.add(name)
    caches = {os.path.dirname(name) for name in sources}
    size = int(sum(info.file_size for info in infos) * UNPACKED_PER_SOURCE_BYTE)
    return size, len(names) + len(sources) + len(directories) + len(caches) + 3


def _free(path: str) -> tuple[float, float]:
    """Bytes and inodes this process may still use there (root: the
    filesystem's reserve too), infinite where the filesystem does not say:
    btrfs and an unlimited tmpfs report no inodes, or no blocks."""
    try:
        disk = os.statvfs(path)
    except OSError:
        return float("inf"), float("inf")  # the unpack finds out
    root = os.geteuid() == 0
    size = (disk.f_bfree if root else disk.f_bavail) * disk.f_frsize if disk.f_blocks else float("inf")
    inodes = (disk.f_ffree if root else disk.f_favail) if disk.f_files else float("inf")
    return float(size), float(inodes)


def _free_space(exc: OSError, cache_root: str, need: tuple[int, int]) -> str:
    import errno

    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return ""
    size, inodes = _free(cache_root)
    needs = f"this build needs at least {(need[0] or 8e6) / 1e6:.1f} MB"
    if size == float("inf"):
        return f" ({needs})"
    if need[1] and inodes < need[1]:
        return f" ({inodes:.0f} inodes free on its disk; this build needs {need[1]} for its files)"
    if need[0] and size >= need[0]:  # the estimate passed, the writes did not fit
        return f" ({size / 1e6:.1f} MB free on its disk; this build needs more than that)"
    return f" ({size / 1e6:.1f} MB free on its disk; {needs})"


def start(archive: str, loader: object, stopped: type[BaseException], note: str = "") -> None:
    """Unpack (or find) this build, then run the plugin from it. ``stopped``:
    what the bootstrap's SIGTERM handler raises, for a fetch; ``note``: why
    the node agent did not answer it, for the debug log."""
    out_of_memory = endings.out_of_memory_answers()
    if endings.operation() in ("fetch", "agent"):
        _refuse_a_small_address_space(endings.operation())
    try:
        _start(archive, loader, stopped, note)
    except MemoryError:  # anywhere, our answers to it included: the one answer that needs nothing
        endings.ran_out_of_memory(out_of_memory)


# A fetch needs about 40 MiB of address space (botocore, TLS, the answer).
# Near any limit, CPython itself may crash where our code cannot answer:
# with its 16 spare MemoryErrors in use, _PyErr_NoMemory recurses until
# the stack overflows (SIGSEGV, seen in cores at 26 and 37 MiB), or it
# aborts. No Nomad client starts under such a limit (Go's runtime needs
# hundreds of MiB of address space), so under this one a fetch is not tried.
MIN_ADDRESS_SPACE = 64 << 20


def _refuse_a_small_address_space(operation: str) -> None:
    """For a fetch, Nomad's answer; for the node agent (its own unit's
    limit, and its thread per request), a line on stderr and exit 2."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft == resource.RLIM_INFINITY or soft >= MIN_ADDRESS_SPACE:
        return
    if operation == "agent":
        os.write(
            2,
            f"nomad-secrets agent: its address space limit (RLIMIT_AS) is {soft >> 20} MiB, under the"
            f" {MIN_ADDRESS_SPACE >> 20} MiB it needs: raise LimitAS in the agent's systemd unit (the plugin"
            " fetches in process meanwhile)\n".encode(),
        )
        os._exit(2)
    endings.end(
        f"nomad-secrets cannot start: its address space limit (RLIMIT_AS) is {soft >> 20} MiB, under the"
        f" {MIN_ADDRESS_SPACE >> 20} MiB a fetch needs; it is the Nomad client's: raise LimitAS in its"
        " systemd unit, or ulimit -v where it starts (docs/troubleshooting.md)"
    )


def _start(archive: str, loader: object, stopped: type[BaseException], note: str) -> None:
    global endings  # the plugin's own copy once its code is imported: its protocol keeps stdout there
    environ = dict(os.environ)  # as Nomad gave it, for a run started again
    again = _cache_module().started_again(environ)  # cli.py takes the mark out of os.environ
    build_id, cache_dir = loader.get_data("build-info").decode().split("\n")[:2]  # type: ignore[attr-defined]
    try:
        lib = unpacked(archive, build_id, cache_dir)
        sys.path.insert(0, lib)
        sys.dont_write_bytecode = True  # everything is compiled; the cache stays as published
        try:
            from nomad_secrets.cli import run
            from nomad_secrets.process import endings as plugins  # imported by cli already
        except Exception as exc:  # noqa: BLE001 - the unpacked files, damaged since it was made
            _failed(lib, exc, environ, again)
        endings = plugins
    except stopped:
        cache = _cache_module()
        where = cache_dir or cache.default_cache_dir()
        endings.end(endings.stopped_unpacking(_phase[0], where, cache.process_age()))
    except CacheError as exc:
        endings.end(f"nomad-secrets cannot start: {exc}")
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - Nomad must get an answer
        endings.end(endings.not_unpacked(exc))
    try:
        run(note)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - our code failed before it could answer
        _failed(lib, exc, environ, again)
    except stopped:  # between here and cli.py's own answer to SIGTERM
        endings.end(endings.STOPPED_STARTING)  # stdout may be guarded by now


def _failed(lib: str, exc: Exception, environ: dict[str, str], again: bool) -> NoReturn:
    """Our own code failed to start: a limit of the process (the cache stays
    as it is), or a cache directory damaged since it was made (a cleanup
    job, a full disk, a bad block), which is moved aside, and this run
    started again to unpack afresh, when it is early enough and not already
    the second try."""
    limit = endings.limit_in(exc)
    if limit:
        endings.end(f"nomad-secrets {endings.ran_out(limit, 'started')}")
    cache = _cache_module()
    said = cache.healed(
        os.path.dirname(lib), lambda entry: cache.heal(entry, environ, cache.process_age(), again)
    )
    # Else nothing to heal: ours to hear of.
    endings.end(said or endings.not_started(exc, unpacked=os.path.realpath(os.path.dirname(lib))))


def _cache_module() -> Any:
    try:  # the source tree, the installed package, and the executable once unpacked
        from nomad_secrets.process import cache
    except ImportError:  # the executable before: scripts/build stores it beside __main__.py
        import nomad_secrets_cache as cache  # type: ignore[no-redef]
    return cache
