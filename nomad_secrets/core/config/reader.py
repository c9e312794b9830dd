"""Finding and reading the operator's config file, race-hardened.

The file is looked up beside the executable Nomad ran, then at
``SYSTEM_CONFIG``; it and the directories above it, and the secret files
it names, must pass the trust rules (process/trust.py) before a byte is
parsed. A deploy that removes and writes the file, or rewrites it in place,
is waited out (``find_config``, ``_settled_read``), never read half-way.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import replace

from nomad_secrets.core.config.model import (
    CONFIG_FILE_NAME,
    SECTIONS,
    SYSTEM_CONFIG,
    Config,
    Provider,
    Settings,
)
from nomad_secrets.core.config.parser import parse
from nomad_secrets.core.schemes import section_of
from nomad_secrets.process.errors import ConfigError
from nomad_secrets.process.trust import Untrusted, untrusted
from nomad_secrets.process.trust import check as check_trust


class BeingDeployed(ConfigError):
    """The config is being deployed at this moment (open for writing, or
    missing while its directory changes): raised at once by a look that
    does not wait (``wait=False``), whose caller looks again later."""


def find_config(executable: str, *, wait: bool = True) -> str | None:
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
            # changing, or changed a moment ago, wait here.
            state = _being_redeployed(os.path.dirname(candidate), first_seen)
            if state:
                break
        else:
            return None
        if not wait:
            raise BeingDeployed(f"no config file at {candidate} while {os.path.dirname(candidate)} changes")
        # Changed a moment ago, and quiet since: waited for until it has been
        # quiet ABSENT_QUIET_SECONDS; changing while we look: refused.
        if state == CHANGING and time.monotonic() > give_up:
            raise ConfigError(
                f"no config file at {candidate}, and entries of {os.path.dirname(candidate)} kept being"
                f" created or removed for {ABSENT_WAIT_SECONDS:g} s: deploy the config by renaming a new"
                " file into place (docs/configuration.md), and keep other programs' files out of that"
                " directory"
            )
        time.sleep(ABSENT_POLL_SECONDS)


# A config directory with no config in it whose entries changed less than
# ABSENT_QUIET_SECONDS ago (RECENT), or change while a fetch looks
# (CHANGING): being redeployed. RECENT is looked at again until the
# directory has been quiet that long (a deploy that removes the file and
# writes the new one a moment later: a reviewer's `rm; sleep 0.3; cp` was
# read as no config with 0.25 s); CHANGING for up to ABSENT_WAIT_SECONDS.
ABSENT_QUIET_SECONDS, ABSENT_WAIT_SECONDS, ABSENT_POLL_SECONDS = 2.0, 1.0, 0.02
CHANGING, RECENT = "changing", "recent"


def _being_redeployed(directory: str, first_seen: dict[str, int]) -> str:
    """CHANGING, RECENT or ""."""
    import time

    try:
        st = os.stat(directory)
    except OSError:
        return ""
    if first_seen.setdefault(directory, st.st_mtime_ns) != st.st_mtime_ns:
        return CHANGING  # changed while we look
    age = time.time() - st.st_mtime
    # a time in the future (a clock stepped back) is no sign
    return RECENT if 0 <= age < ABSENT_QUIET_SECONDS else ""


def provider_name(executable: str) -> str:
    """The provider name is the file name Nomad ran (a symlink counts)."""
    name = os.path.basename(executable)
    return "nomad-secrets" if name == "__main__.py" else name


def load(
    executable: str, *, cache: dict[tuple[str, bytes], Config] | None = None, wait: bool = True
) -> Config:
    """The config for ``executable``, once every file it trusts is checked:
    the plugin directory (a file dropped there would be our config) and the
    config file, here; the secret files it names are checked here too, but
    a problem with one is kept in ``unusable_files`` and raised only by a
    fetch that uses that file (``check_files``): one provider's missing
    token file must not stop every other provider on the node. ``cache`` (a
    long-lived process's) keeps parsed configs by path and content: the
    checks and the read happen every time. ``wait=False``: a config being
    deployed raises BeingDeployed at once instead of being waited for."""
    plugin_dir = os.path.dirname(os.path.abspath(executable))
    require_trusted(plugin_dir, "plugin directory")
    path = find_config(executable, wait=wait)
    if path is None:
        return Config()
    # check, run by the name Nomad ran, reads this same file (one run elsewhere reads none)
    check = f"{os.path.abspath(executable)} check"
    try:
        return load_file(path, cache=cache, strict=False, wait=wait, check=check)
    except ConfigError:
        if os.path.lexists(path):
            raise
    # Gone between the look and the read (a deploy that removes, then
    # writes): look once more, waiting for it as find_config does.
    path = find_config(executable, wait=wait)
    return Config() if path is None else load_file(path, cache=cache, strict=False, wait=wait, check=check)


def check_files(config: Config, provider: Provider, stores: Iterable[str]) -> None:
    """Raise the trust problem of a secret file that ``provider`` reads
    ``stores`` with, if any."""
    for section in sorted({section_of(store) for store in stores}):
        settings = getattr(provider, section)
        for key in settings.secret_files:
            problem = config.unusable_files.get(getattr(settings, key) or "")
            if problem:
                raise ConfigError(problem)


def load_file(
    path: str,
    *,
    cache: dict[tuple[str, bytes], Config] | None = None,
    ancestors: bool = True,
    strict: bool = True,
    wait: bool = True,
    check: str = "",
) -> Config:
    """The config in ``path``, once it and the secret files it names are
    trusted. ``ancestors=False`` checks the files but not the directories
    above them: for ``serve --nomad-task``, whose files are in a Nomad task's
    directories (0777 by Nomad's design, the task's isolation guards them).
    ``check``: the command a message about a file that cannot be parsed
    names as the next step (parser.parse)."""
    require_trusted(path, "config file", ancestors=ancestors)
    text = _settled_read(path, wait)
    if not text.strip():
        # Emptied in place and left so (a writer that died, `: > file`):
        # it must not read as "no config", every job reading everything.
        raise ConfigError(
            f"the config file {path} is empty: write the new config to a temporary file and rename it"
            " into place (or remove the file for built-in defaults)"
        )
    config = cache.get((path, text)) if cache is not None else None
    if config is None:
        config = parse(text, path, check)
        if cache is not None:
            if len(cache) >= 8:  # rewritten files leave old entries behind
                cache.clear()
            cache[(path, text)] = config
    unusable: dict[str, str] = {}
    for where, settings in _secret_file_places(config):
        for key in settings.secret_files:
            secret_file = getattr(settings, key)
            if secret_file and secret_file not in unusable:
                try:
                    require_trusted(secret_file, f"file of {where}.{key}", ancestors=ancestors)
                except ConfigError as exc:
                    if strict:
                        raise
                    unusable[secret_file] = exc.message
    return replace(config, unusable_files=unusable) if unusable else config


def _secret_file_places(config: Config) -> Iterator[tuple[str, Settings]]:
    """Every store section whose keys may name secret files: the top-level
    one (used by the built-in names and by providers that leave a key out),
    then each provider's of that section."""
    for section, settings_class in SECTIONS.items():
        if settings_class.secret_files:
            yield section, getattr(config, section)
            for p in config.providers.values():
                if section_of(p.store) == section:
                    yield f"providers.{p.name}", p.settings


WRITER_WAIT_SECONDS = 2.0  # a config still open for writing after this: refused
WRITER_POLL_SECONDS = 0.02


def _settled_read(path: str, wait: bool = True) -> bytes:
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
        if not wait:
            raise BeingDeployed(f"the config file {path} is open for writing, or empty")
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


def require_trusted(path: str, what: str, *, ancestors: bool = True) -> None:
    try:
        if ancestors:
            check_trust(path, what)
        else:
            problem = untrusted(path, what)
            if problem:
                raise Untrusted(problem)
    except Untrusted as exc:
        raise ConfigError(f"refusing to run: {exc}") from None
