"""The one writer of the files the plugin keeps on the node, and reads back.

The metrics textfile and the counts carried beside it, the audit file, the
debug log and ``install``'s files are written by root into directories the
operator names. Through here:

- the directory passes the trust rules, and is not sticky and
  world-writable (trust.untrusted_directory): there another user creates
  the file's name before root does;
- nothing is opened through a symlink (``O_NOFOLLOW``) or blocks on a FIFO
  (``O_NONBLOCK``); a file read back is checked on the open descriptor
  before a byte is read: a regular file, root's (or ours), no larger than
  the caller's bound;
- a file is replaced whole: written to a temporary file of its own beside
  it (``O_CREAT | O_EXCL | O_NOFOLLOW``) and renamed over it. A short write
  or ``ENOSPC`` removes the temporary file and leaves the old file as it
  was; the caller counts it (metrics: ``write_errors``);
- a line is appended in one ``write``, or not at all: the part of a short
  append (the disk filled mid-line) is cut back off;
- a file of a fixed layout (the write-error counts) may be written over in
  place, byte for byte the same length: that needs no new block, so it
  works on a full disk, where nothing can be replaced.

Every function returns the reason it could not, for the caller's message
or log, or raises ``trust.Untrusted``; none writes outside the directory
it was given. Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from nomad_secrets.process.trust import Untrusted, untrusted_directory

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def read_back(path: str, what: str, limit: int) -> bytes:
    """The file at ``path`` as written before (``b""`` when there is none).

    Raises Untrusted when it is not a regular file owned by root or us, or
    holds more than ``limit`` bytes: another's bytes are never taken for
    our own, and a planted giant costs nothing to refuse.
    """
    try:
        fd = os.open(path, _READ)
    except FileNotFoundError:
        return b""
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Untrusted(f"the {what} {path} is a symlink; remove it") from None
        raise Untrusted(f"cannot read the {what} {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Untrusted(f"the {what} {path} is not a regular file; remove it")
        if st.st_uid not in (os.geteuid(), 0):
            raise Untrusted(f"the {what} {path} is owned by uid {st.st_uid}, not root; remove it")
        if st.st_size > limit:
            raise Untrusted(f"the {what} {path} holds {st.st_size} bytes, more than it ever should ({limit})")
        chunks, size = [], 0
        while size <= limit and (chunk := os.read(fd, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:  # it grew after the check
            raise Untrusted(f"the {what} {path} holds more than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def replace(path: str, data: bytes, mode: int, what: str, *, durable: bool = False) -> str | None:
    """Put ``data`` at ``path`` whole, with ``mode``: the reason it could
    not (the old file, if any, left as it was), or None. ``durable``: on
    the disk before the rename (an executable; counts need not be)."""
    try:
        tmp = _temporary(path, data, mode, what, durable)
        try:
            os.rename(tmp, path)
        except OSError:
            remove(tmp)
            raise
    except Untrusted as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot write the {what} {path}: {exc.strerror}; it was left as it was"
    return None


def create(path: str, data: bytes, mode: int, what: str) -> str | None:
    """Put ``data`` at ``path`` whole, only if nothing is there: the reason
    it could not, or None. A reader sees no file or the whole file (the
    temporary file is linked into place, which fails if a name is there)."""
    try:
        tmp = _temporary(path, data, mode, what, durable=True)
        try:
            os.link(tmp, path)
        finally:
            remove(tmp)
    except Untrusted as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot write the {what} {path}: {exc.strerror}"
    return None


def _temporary(path: str, data: bytes, mode: int, what: str, durable: bool) -> str:
    """A file of its own beside ``path`` holding ``data`` whole, with
    ``mode``; its path. Raises Untrusted for the directory, or OSError
    (nothing left behind)."""
    problem = untrusted_directory(path, what)
    if problem:
        raise Untrusted(problem)
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, _CREATE, 0o600)
    try:
        try:
            os.fchmod(fd, mode)  # whatever the umask
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        remove(tmp)
        raise
    return tmp


def overwrite(path: str, data: bytes, what: str) -> str | None:
    """Write ``data`` over the file at ``path``, in place, when it holds as
    many bytes (root's or ours, a regular file): the reason it could not,
    or None. The blocks are the file's already, so a full disk does not
    stop it (on a copy-on-write file system, btrfs or ZFS, it may). A
    reader at the same moment may see old and new bytes mixed, where they
    differ."""
    problem = untrusted_directory(path, what)
    if problem:
        return problem
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return f"cannot write the {what} {path}: {exc.strerror}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid not in (os.geteuid(), 0) or st.st_size != len(data):
            return f"the {what} {path} is not as it was written; it was left as it was"
        done = 0
        while done < len(data):
            written = os.pwrite(fd, data[done:], done)
            if written == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done += written
    except OSError as exc:
        return f"cannot write the {what} {path}: {exc.strerror}"
    finally:
        os.close(fd)
    return None


def append(fd: int, data: bytes) -> str | None:
    """``data`` at the end of the file open on ``fd`` (``O_APPEND``) in one
    write, or nothing: the reason, or None. Concurrent appends of whole
    lines do not interleave on a local file system; a short one (the disk
    filled mid-line) is cut back off, so no half line is left for the next
    to run into."""
    try:
        written = os.write(fd, data)
    except OSError as exc:
        return exc.strerror or str(exc)
    if written == len(data):
        return None
    try:
        end = os.lseek(fd, 0, os.SEEK_CUR)  # after our bytes, with O_APPEND
        if os.fstat(fd).st_size == end:  # nothing appended after them since
            os.ftruncate(fd, end - written)
            return f"only {written} of {len(data)} bytes could be written (is the disk full?); none were kept"
    except OSError:
        pass
    return f"only {written} of {len(data)} bytes could be written (is the disk full?)"


def write_all(fd: int, data: bytes) -> None:
    """Every byte of ``data``, or OSError: a write that takes none is a full disk."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def remove(path: str) -> None:
    """Unlink ``path`` if it is there (a temporary file, a count absorbed)."""
    with contextlib.suppress(OSError):
        os.unlink(path)
