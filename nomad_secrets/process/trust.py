"""Which files and directories root may trust: the one place for the rules.

The plugin runs as root and reads code (its unpack cache), configuration,
credentials, and writes logs. A path another user can change, or swap
through a directory above it, is code or configuration that user chooses.
So a trusted path is:

- not a symlink (a link can be re-pointed by whoever owns its directory);
- owned by the running user or root;
- writable by no one else (no group or other write bit);
- below directories that are each owned by root or us and writable by no
  one else, unless sticky (like /tmp, where others cannot rename our files),
  reached through no symlink another user owns.

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

OWNER_FIX = "chown it to root"
_MAX_LINKS = 40  # as the kernel's path walk


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


def untrusted_ancestors(path: str, owner_fix: str = OWNER_FIX) -> str | None:
    """Why a directory above ``path``, or a symlink on the way to it, lets
    another user swap what it holds, or None. ``owner_fix``: what to do
    about a directory another user owns."""
    return _walk(path, owner_fix)[0]


def untrusted_directory(path: str, what: str, owner_fix: str = OWNER_FIX) -> str | None:
    """Why the directory holding ``path`` may not hold a file root writes
    there and reads back, or None.

    The rules of ``untrusted_ancestors``, and one more for the directory
    itself: no sticky world-writable one (like /tmp). The sticky bit stops
    others from renaming root's files, not from creating a name first: a
    user there plants the file (or its lock, or its temporary) before root
    does, and root then reads the user's bytes back, or writes nowhere.
    """
    problem, directory = _walk(path, owner_fix)
    if problem:
        return problem
    try:
        st = os.lstat(directory)  # the walk's end: no symlink left in it
    except OSError as exc:
        return f"cannot check the directory {directory}: {exc.strerror}"
    if st.st_mode & 0o022:  # sticky, or the walk would have refused it
        return (
            f"the directory {directory} of the {what} is writable by others (sticky, like /tmp), so"
            f" another user can create the {what}'s name there first; give the {what} a directory"
            " of its own, owned by root and writable by no one else"
        )
    return None


def _walk(path: str, owner_fix: str) -> tuple[str | None, str]:
    """The directories above ``path`` walked from / as the kernel walks
    them, each entry looked at without following it (lstat): why one lets
    another user swap what it holds (or None), and the directory the walk
    ends in, with no symlink left in it.

    A symlink is followed only when root or we own it: in a sticky
    directory (like /tmp) anyone may create one, and root follows it there
    unless fs.protected_symlinks is 1. Every directory the walk enters,
    including those a link leads to, passes the owner and mode rules; a
    sticky world-writable one may be passed through (others cannot rename
    what root made there).
    """
    if not os.path.isabs(path):
        path = os.path.join(os.getcwd(), path)
    names = [n for n in os.path.dirname(path.rstrip("/") or "/").split("/") if n]
    current, links = "/", 0
    problem = _entered(current, owner_fix)
    while names and problem is None:
        name = names.pop(0)
        if name in (".", ".."):
            current = os.path.dirname(current) if name == ".." else current
            continue
        entry = os.path.join(current, name)
        try:
            st = os.lstat(entry)
        except OSError as exc:
            return f"cannot check the directory {entry}: {exc.strerror}", entry
        if not stat.S_ISLNK(st.st_mode):
            problem, current = _entered(entry, owner_fix, st), entry
            continue
        links += 1
        if st.st_uid not in (os.geteuid(), 0):
            problem = (
                f"{entry} is a symlink owned by uid {st.st_uid}, who can point it at any directory;"
                " name the directory it should lead to by its real path (or have root own the link)"
            )
        elif links > _MAX_LINKS:
            problem = f"cannot check the directory {entry}: {os.strerror(errno.ELOOP)}"
        else:
            try:
                target = os.readlink(entry)  # root's (or ours): no one else re-points it
            except OSError as exc:
                return f"cannot check the directory {entry}: {exc.strerror}", entry
            current = "/" if target.startswith("/") else current
            names[:0] = [n for n in target.split("/") if n]
    return problem, current


def _entered(directory: str, owner_fix: str, st: os.stat_result | None = None) -> str | None:
    try:
        st = st or os.lstat(directory)
    except OSError as exc:
        return f"cannot check the directory {directory}: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"cannot check the directory {directory}: {os.strerror(errno.ENOTDIR)}"
    if st.st_uid not in (os.geteuid(), 0):
        return f"the directory {directory} is owned by uid {st.st_uid}; {owner_fix}"
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        return f"the directory {directory} is writable by group or others; chmod go-w {directory}"
    return None


def check(path: str, what: str) -> None:
    """Raise Untrusted unless ``path`` and every directory above it pass."""
    problem = untrusted(path, what) or untrusted_ancestors(path)
    if problem:
        raise Untrusted(problem)


def open_append(path: str, what: str, owner_fix: str = OWNER_FIX) -> int:
    """An fd appending to the log file ``path``, created 0600 if missing.

    Opened without following a symlink and without blocking (a FIFO or a
    device planted there must not hang the fetch), then checked on the open
    file itself, so that nothing can be swapped between check and use: a
    regular file, owned by us or root, writable by no one else, in a
    directory that passes ``untrusted_directory``. The caller owns the fd.
    """
    problem = untrusted_directory(path, what, owner_fix)
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


def untrusted_log(path: str, what: str, owner_fix: str = OWNER_FIX) -> str | None:
    """Why ``open_append`` would refuse ``path``, without creating it (for
    ``check``)."""
    problem = untrusted_directory(path, what, owner_fix)
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
