"""Which files and directories root may trust: the one place for the rules.

The plugin runs as root and reads code (its unpack cache), configuration,
credentials, and writes logs. A path another user can change, or swap
through a directory above it, is code or configuration that user chooses.
So a trusted path is:

- not a symlink (a link can be re-pointed by whoever owns its directory);
- owned by the running user or root;
- writable by no one else (no group or other write bit);
- below directories that are each owned by root or us and writable by no
  one else, unless sticky (like /tmp, where others cannot rename our files).

Standard library only, and cheap to import: the executable's bootstrap uses
it before anything is unpacked (``scripts/build`` stores a copy of this file
beside ``__main__.py`` in the zip), and config, check and the logs use it
after. Every function returns the reason as text (or raises ``Untrusted``
with it), for a message that says what to fix.
"""

from __future__ import annotations

import errno
import os
import stat


class Untrusted(Exception):
    """A path failed the rules; the message says which rule and what to do."""


def untrusted(path: str, what: str) -> str | None:
    """Why ``path`` itself must not be trusted, or None when it may."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"cannot check the {what} {path}: {exc.strerror}"
    if stat.S_ISLNK(st.st_mode):
        return f"the {what} {path} is a symlink; make it a real {what}"
    return _owner_and_mode(st, path, what)


def untrusted_ancestors(path: str) -> str | None:
    """Why a directory above ``path`` lets another user swap what it holds,
    or None."""
    parent = os.path.dirname(os.path.abspath(path))
    while True:
        try:
            st = os.stat(parent)
        except OSError as exc:
            return f"cannot check the directory {parent}: {exc.strerror}"
        if st.st_uid not in (os.geteuid(), 0):
            return f"the directory {parent} is owned by uid {st.st_uid}; chown it to root"
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return f"the directory {parent} is writable by group or others; chmod go-w {parent}"
        if parent == os.path.dirname(parent):
            return None
        parent = os.path.dirname(parent)


def untrusted_directory(path: str, what: str) -> str | None:
    """Why the directory holding ``path`` may not hold a file root writes
    there and reads back, or None.

    The rules of ``untrusted_ancestors``, and one more for the directory
    itself: no sticky world-writable one (like /tmp). The sticky bit stops
    others from renaming root's files, not from creating a name first: a
    user there plants the file (or its lock, or its temporary) before root
    does, and root then reads the user's bytes back, or writes nowhere.
    """
    problem = untrusted_ancestors(path)
    if problem:
        return problem
    directory = os.path.dirname(os.path.abspath(path))
    try:
        st = os.stat(directory)
    except OSError as exc:
        return f"cannot check the directory {directory}: {exc.strerror}"
    if st.st_mode & 0o022:  # sticky, or untrusted_ancestors would have refused it
        return (
            f"the directory {directory} of the {what} is writable by others (sticky, like /tmp), so"
            f" another user can create the {what}'s name there first; give the {what} a directory"
            " of its own, owned by root and writable by no one else"
        )
    return None


def check(path: str, what: str) -> None:
    """Raise Untrusted unless ``path`` and every directory above it pass."""
    problem = untrusted(path, what) or untrusted_ancestors(path)
    if problem:
        raise Untrusted(problem)


def open_append(path: str, what: str) -> int:
    """An fd appending to the log file ``path``, created 0600 if missing.

    Opened without following a symlink and without blocking (a FIFO or a
    device planted there must not hang the fetch), then checked on the open
    file itself, so that nothing can be swapped between check and use: a
    regular file, owned by us or root, writable by no one else, in a
    directory that passes ``untrusted_directory``. The caller owns the fd.
    """
    problem = untrusted_directory(path, what)
    if problem:
        raise Untrusted(problem)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Untrusted(f"the {what} {path} is a symlink; make it a real file") from None
        if exc.errno == errno.ENXIO:  # a FIFO with no reader, a socket
            raise Untrusted(f"the {what} {path} is not a regular file; remove it") from None
        raise Untrusted(f"cannot open the {what} {path}: {exc.strerror}") from None
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = f"the {what} {path} is not a regular file; remove it"
    else:
        problem = _owner_and_mode(st, path, what)
    if problem:
        os.close(fd)
        raise Untrusted(problem)
    return fd


def untrusted_socket(path: str, what: str) -> str | None:
    """Why the unix socket at ``path`` is not ours to talk to: not a socket,
    a symlink, owned by someone else, or below untrusted directories. Its
    write bits only say who may connect, which the server decides itself
    (SO_PEERCRED), so they may be open."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"cannot check the {what} {path}: {exc.strerror}"
    if not stat.S_ISSOCK(st.st_mode):
        return f"the {what} {path} is not a socket"
    if st.st_uid not in (os.geteuid(), 0):
        return f"the {what} {path} is owned by uid {st.st_uid}, not root"
    return untrusted_ancestors(path)


def untrusted_log(path: str, what: str) -> str | None:
    """Why ``open_append`` would refuse ``path``, without creating it (for
    ``check``)."""
    problem = untrusted_directory(path, what)
    if problem or not os.path.lexists(path):
        return problem
    problem = untrusted(path, what)
    if problem is None and not stat.S_ISREG(os.lstat(path).st_mode):
        problem = f"the {what} {path} is not a regular file; remove it"
    return problem


def _owner_and_mode(st: os.stat_result, path: str, what: str) -> str | None:
    if st.st_uid not in (os.geteuid(), 0):
        return f"the {what} {path} is owned by uid {st.st_uid}; chown it to root"
    if st.st_mode & 0o022:
        return f"the {what} {path} is writable by group or others; chmod go-w {path}"
    return None
