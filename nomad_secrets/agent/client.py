"""The plugin's side of the node agent: forward a fetch, starting the agent
when none runs, or say why not (the plugin then fetches in process).

This runs in the bootstrap, before anything else of the plugin is read:
``scripts/build`` stores it beside the zip's ``__main__`` (precompiled),
and a fetch that the agent answers costs little more than the interpreter's
own start. So: ``os`` and ``sys`` (already imported by then), ``_socket``
(not ``socket``, whose enums cost milliseconds), no ``json``, no ``re``, no
``typing``, and no config parsing: the agent reads and checks the config
for each request, so this side needs none of it.

Where: one agent per plugin directory, listening at ``socket_path(dir)`` in
a root-only directory (``SOCKET_DIR``, made 0755 root if missing). Whom it
trusts: that directory by ``lstat`` (ours or root's, writable by no one
else), the agent by ``SO_PEERCRED`` (root, or our own user).

The exchange (``MAGIC``, a 4-byte length, the request; then the agent's
bytes): ``+`` as soon as it has the request, ``.`` every ``HEARTBEAT``
seconds while it works, then ``=`` with a 4-byte length and the exact
answer to print, or ``-`` / ``~`` with a reason (``~``: it is stepping
aside, start another). A request is NUL-separated (no NUL can be in argv
or the environment): kind, executable, path, build, then every
``KEY=VALUE`` of the environment as Nomad gave it.

Never worse than no agent: an agent that does not acknowledge within
``ACK_SECONDS`` or goes quiet for ``SILENCE_SECONDS`` is taken for hung,
moved out of the way (its socket unlinked: the next connection reaches a
new agent) and replaced once; anything else unexpected is the fetch's to
run in process, with the rest of its deadline.
"""

from __future__ import annotations

import _socket
import os
import sys

TYPE_CHECKING = False  # not typing's: importing it costs a forwarded fetch ~7 ms
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

SOCKET_DIR = "/run/nomad-secrets"  # scripts/build --socket-dir may name another
MAGIC = b"NSA2"
ACK = b"+"
HEARTBEAT = b"."
ANSWER = b"="
REFUSED = b"-"
STEPPING_ASIDE = b"~"
KIND_FETCH = b"fetch"
KIND_PING = b"ping"  # check's round trip: the agent answers what it is
MAX_REQUEST = 256 * 1024  # a path is at most 16 KiB, a workload token 16 KiB
# config.MAX_OUTPUT_BYTES (the largest max_output_bytes) and the JSON around
# the values: a bigger answer is not the agent's (a test ties the two).
MAX_ANSWER = (64 << 20) + (64 << 10)
# An agent that has run a while acknowledges in milliseconds, even under a
# burst (it runs at a lower nice value than the plugins); one just started
# needs its interpreter and imports first.
ACK_SECONDS = 1.0
ACK_SECONDS_STARTING = 3.0
STARTING_SECONDS = 5.0  # a socket younger than this may have an agent still starting
HEARTBEAT_SECONDS = 0.25  # the agent's; the client allows SILENCE_SECONDS of quiet
SILENCE_SECONDS = 1.5
LOCK_SECONDS = 2.0  # to wait for another plugin starting the agent
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes, the last a NUL
SOMAXCONN = 4096  # the kernel caps it (net.core.somaxconn): a burst queues, not falls back
# The agent's CPU share under a burst: CFS weighs nice -15 at ~28 plugins'.
AGENT_NICE = -15


class NoAgent(Exception):
    """Why a fetch does not go to the agent (for the plugin's debug log).
    ``hung``: an agent was there but stopped answering (check warns of it)."""

    hung = False


class Hung(NoAgent):
    hung = True


def socket_name(plugin_dir: str, socket_dir: str = SOCKET_DIR) -> str:
    """The socket of the agent for ``plugin_dir``, named after it so that an
    operator sees which directory it serves (``/opt/nomad/...`` is
    ``opt-nomad-...-<hash>.sock``), with a hash of the exact path (two
    directories whose names read alike, ``a-b`` and ``a_b``, get two);
    the hash alone where the name would not fit."""
    digest = 0xCBF29CE484222325  # FNV-1a, 64 bits: only a name, the agent checks the directory
    for byte in os.fsencode(plugin_dir):
        digest = ((digest ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    name = ""
    for char in plugin_dir.strip("/"):
        name += "-" if char == "/" else (char if char.isascii() and (char.isalnum() or char in "._") else "_")
    path = f"{socket_dir}/{name or 'root'}-{digest >> 32:08x}.sock"
    if len(path.encode()) <= MAX_SOCKET_PATH:
        return path
    path = f"{socket_dir}/h-{digest:016x}.sock"
    if len(path.encode()) > MAX_SOCKET_PATH:
        raise NoAgent(f"the socket directory {socket_dir} is too long a path for a unix socket")
    return path


def untrusted_directory(path: str) -> str | None:
    """Why the socket directory (or the one above it) is not ours alone."""
    for directory in (path, os.path.dirname(path)):
        try:
            st = os.lstat(directory)
        except OSError as exc:
            return f"cannot check the agent's socket directory {directory}: {exc.strerror}"
        if st.st_mode & 0o170000 != 0o040000:
            return f"{directory} is not a directory (a symlink?)"
        if st.st_uid not in (0, os.geteuid()):
            return f"the directory {directory} is owned by uid {st.st_uid}, not root"
        if st.st_mode & 0o022 and not (directory != path and st.st_mode & 0o1000):
            return f"the directory {directory} is writable by group or others"
    return None


def request(kind: bytes, executable: str, path: str, build: str, environ: dict[bytes, bytes]) -> bytes:
    fields = [kind, os.fsencode(executable), os.fsencode(path), build.encode()]
    fields += [key + b"=" + value for key, value in environ.items()]
    payload = b"\0".join(fields)
    if len(payload) > MAX_REQUEST:
        raise NoAgent(f"the request is {len(payload)} bytes, above the agent's {MAX_REQUEST}")
    return MAGIC + len(payload).to_bytes(4, "big") + payload


def config_file(plugin_dir: str) -> str | None:
    """The config a fetch of this directory reads (config.find_config's
    order), or None: without one there is nothing the agent may serve."""
    for path in (f"{plugin_dir}/nomad-secrets.toml", "/etc/nomad-secrets/config.toml"):
        if os.path.isfile(path):
            return path
    return None


def auto_off(text: str) -> bool:
    """Whether the config says ``[agent] auto = false``, read without a TOML
    parser (this runs before any is imported): the plain forms only. The
    agent reads the config whole and stops when it says so in any form;
    ``check`` says when this reading and the parser's differ."""
    section = ""
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("["):
            section = line.strip("[] \t")
            continue
        key, equals, value = line.partition("=")
        key = key.strip().replace(" ", "")
        if equals and value.strip() == "false" and (section, key) in (("agent", "auto"), ("", "agent.auto")):
            return True
    return False


def peer(sock: _socket.socket) -> tuple[int, int]:
    """The pid and uid of the process at the other end, as the kernel
    recorded them when it connected (or listened)."""
    raw = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)  # struct ucred: pid, uid, gid
    return int.from_bytes(raw[0:4], sys.byteorder, signed=True), int.from_bytes(raw[4:8], sys.byteorder)


class Agent:
    """One plugin's way to its directory's agent."""

    def __init__(
        self,
        executable: str,
        build: str,
        socket_dir: str = SOCKET_DIR,
        starter: Callable[[int], None] | None = None,
    ) -> None:
        """``starter(fd)``: start an agent that serves the listening socket
        ``fd`` (None: never start one, as for ``check``)."""
        self.executable = executable
        self.plugin_dir = os.path.dirname(executable)
        self.build = build
        self.socket_dir = socket_dir
        self.path = socket_name(self.plugin_dir, socket_dir)
        self.starter = starter
        self.started = False  # this run started the agent
        self.young = False  # the socket it reached is new: its agent may still be starting

    def ask(self, message: bytes) -> bytes:
        """The agent's answer to ``message``; NoAgent saying why not."""
        problem = untrusted_directory(self.socket_dir)
        if problem and self.starter is not None and not os.path.lexists(self.socket_dir):
            problem = self._make_socket_dir()
        if problem:
            raise NoAgent(problem)
        replaced = False
        for _ in range(3):  # a missing agent is started, a hung or stepping-aside one replaced, once
            sock, seen = self._connect()
            if sock is None:
                if self.started:
                    break
                self._start(seen)
                continue
            try:
                return self._exchange(sock, message)
            except _Replace as replace:
                if self.starter is None or replaced:
                    raise (Hung if replace.hung else NoAgent)(str(replace)) from None
                replaced = True
                try:
                    self._start(seen)
                except NoAgent as why:  # both: a hung agent is news even when none may replace it
                    raise (Hung if replace.hung else NoAgent)(f"{replace}; {why}") from None
            finally:
                sock.close()
        raise NoAgent(f"no agent answered at {self.path}, even one started for this fetch")

    def _make_socket_dir(self) -> str | None:
        try:
            os.mkdir(self.socket_dir, 0o755)  # root's own, 0755: see untrusted_directory
        except FileExistsError:
            pass
        except OSError as exc:
            return f"cannot make the agent's socket directory {self.socket_dir}: {exc.strerror}"
        return untrusted_directory(self.socket_dir)

    def _connect(self) -> tuple[_socket.socket | None, tuple[int, int] | None]:
        """A connection to the agent and the socket file it went through
        (inode, change time); or None and the stale file (None: no file)."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            if self.starter is None:
                raise NoAgent(f"no agent is running: there is no socket at {self.path}") from None
            return None, None
        seen = (st.st_ino, st.st_ctime_ns)
        if st.st_mode & 0o170000 != 0o140000 or st.st_uid not in (0, os.geteuid()):
            raise NoAgent(f"{self.path} is not a socket of root's")
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(ACK_SECONDS)
        try:
            sock.connect(self.path)
        except (ConnectionRefusedError, FileNotFoundError):
            sock.close()
            if self.starter is None:
                raise NoAgent(f"no agent is running: nothing listens at {self.path}") from None
            return None, seen  # an agent that is gone left its socket
        except OSError as exc:
            sock.close()
            raise NoAgent(f"cannot connect to the agent at {self.path}: {exc.strerror}") from None
        _, uid = peer(sock)
        if uid not in (0, os.geteuid()):
            sock.close()
            raise NoAgent(f"the agent at {self.path} runs as uid {uid}, not root")
        self.young = _age(st) < STARTING_SECONDS
        return sock, seen

    def _exchange(self, sock: _socket.socket, message: bytes) -> bytes:
        sock.settimeout(ACK_SECONDS_STARTING if self.started or self.young else ACK_SECONDS)
        try:
            sock.sendall(message)
            code = read_exactly(sock, 1)  # ACK, or a refusal before it
            sock.settimeout(SILENCE_SECONDS)
            while True:
                if code in (ACK, HEARTBEAT):
                    code = read_exactly(sock, 1)
                    continue
                if code not in (ANSWER, REFUSED, STEPPING_ASIDE):
                    raise NoAgent(f"the agent at {self.path} broke the exchange")
                size = int.from_bytes(read_exactly(sock, 4), "big")
                if size > MAX_ANSWER:
                    raise NoAgent(f"the agent's answer of {size} bytes is above {MAX_ANSWER}")
                body = read_exactly(sock, size)
                if code == ANSWER:
                    return body
                reason = body.decode("utf-8", "replace")
                if code == STEPPING_ASIDE:
                    raise _Replace(f"the agent at {self.path} is stepping aside: {reason}")
                raise NoAgent(f"the agent refused the request: {reason}")
        except TimeoutError:
            raise _Hung(f"the agent at {self.path} stopped answering (hung?)") from None
        except (ConnectionError, Closed) as exc:  # killed, or out of memory: start another
            raise _Replace(f"the agent at {self.path} went away: {exc}") from None

    def _start(self, seen: tuple[int, int] | None) -> None:
        """Start an agent on a new socket at ``self.path``, unless another
        plugin did since the file ``seen`` was there; one starter at a time
        (a lock beside the socket), the burst meanwhile queued on the new
        socket's backlog."""
        if self.starter is None:
            raise NoAgent(f"no agent answers at {self.path}")
        config = config_file(self.plugin_dir)
        if config is None:
            raise NoAgent("no config file: an agent serves only a plugin directory with one")
        import fcntl

        if auto_off(_settled_text(config, fcntl)):
            raise NoAgent(f"{config} says [agent] auto = false")

        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        lock = os.open(self.path[: -len(".sock")] + ".lock", flags, 0o600)
        try:
            _lock(lock, fcntl)
            try:
                st = os.lstat(self.path)
                now = (st.st_ino, st.st_ctime_ns)
            except FileNotFoundError:
                now = None
            if now != seen:
                return  # another plugin started one meanwhile: use it
            listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            try:
                if now is not None:
                    os.unlink(self.path)  # a hung agent's, or a gone one's: it stops on seeing this
                old = os.umask(0o177)
                try:
                    listener.bind(self.path)
                finally:
                    os.umask(old)
                listener.listen(SOMAXCONN)
                self.starter(listener.fileno())
                self.started = True
            except OSError as exc:
                raise NoAgent(f"cannot start the agent at {self.path}: {exc.strerror or exc}") from None
            finally:
                listener.close()  # the agent has its own copy
        finally:
            os.close(lock)


def _settled_text(path: str, fcntl: Any) -> str:
    """The config's text, for ``auto_off``; NoAgent while a process has it
    open for writing (a deploy in place: truncate, write, close). Its bytes
    may be half a file then, and an agent started on them waits out the
    writer (config.WRITER_WAIT_SECONDS) before it can answer, and again when
    it is replaced, before the fetch waits once more in process: a fetch
    during a deploy took three times the wait its message names. So the
    fetch goes in process at once, where the config reader waits for the
    writer. A read lease is refused while a writer has the file open, as
    in the config reader (which this module cannot import: see the top);
    where there are no leases (not our file, NFS) the file is read as it is."""
    import _signal  # type: ignore[import-not-found,unused-ignore]  # built in: not signal's enums
    import errno

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise NoAgent(f"cannot read {path}: {exc.strerror}") from None
    try:
        # A writer opening the file while the lease is held sends SIGIO, whose
        # default ends the process; the fetch in process ignores it too.
        _signal.signal(_signal.SIGIO, _signal.SIG_IGN)
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
            leased = True
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                raise NoAgent(
                    f"{path} is open for writing (a deploy?): the fetch waits for it in process"
                ) from None
            leased = False
        try:
            return os.read(fd, 1 << 20).decode("utf-8", "replace")
        except OSError as exc:
            raise NoAgent(f"cannot read {path}: {exc.strerror}") from None
        finally:
            if leased:
                fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    finally:
        os.close(fd)


class _Replace(Exception):
    """The agent is hung or stepping aside: start another."""

    hung = False


class _Hung(_Replace):
    hung = True


class Closed(Exception):
    """The other side closed the connection."""


def read_exactly(sock: _socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise Closed("it closed the connection")
        data += chunk
    return data


def _lock(fd: int, fcntl: object) -> None:
    """The starter's lock, waited for at most LOCK_SECONDS: its holder binds
    a socket and starts a process, in milliseconds."""
    import time

    end = time.monotonic() + LOCK_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # type: ignore[attr-defined]
            return
        except BlockingIOError:
            if time.monotonic() > end:
                raise NoAgent("another plugin has been starting the agent for 2 s") from None
            time.sleep(0.005)


def _age(st: os.stat_result) -> float:
    import time

    return time.time() - st.st_ctime


def spawner(python: str, archive: str, executable: str) -> Callable[[int], None]:
    """Start the agent for ``executable``'s directory as its own session:
    the build's own file run by this interpreter, a clean environment (none
    of the job's variables), stdin/stdout/stderr on /dev/null (Nomad waits
    for its pipes to close: an agent holding them would hold the task), and
    the listening socket as fd 3. It lowers its own nice value."""

    def start(fd: int) -> None:
        null = os.O_RDWR
        actions: list[tuple[object, ...]] = [
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", null, 0),
            (os.POSIX_SPAWN_OPEN, 1, "/dev/null", null, 0),
            (os.POSIX_SPAWN_OPEN, 2, "/dev/null", null, 0),
        ]
        # Nomad passes only 0-2; a person's shell or a supervisor may pass
        # more, and an agent holding a pipe open holds its reader for good.
        for name in os.listdir("/proc/self/fd"):
            other = int(name)
            if other > 2 and other not in (fd, 3) and _inheritable(other):
                actions.append((os.POSIX_SPAWN_CLOSE, other))
        if fd == 3:
            os.set_inheritable(fd, True)
        else:
            if _inheritable(3):
                actions.append((os.POSIX_SPAWN_CLOSE, 3))
            actions.append((os.POSIX_SPAWN_DUP2, fd, 3))
        os.posix_spawn(
            python,
            [python, "-I", "-S", archive, "agent", "--started-by-fetch", executable],
            {},
            file_actions=actions,
            setsid=True,
        )

    return start


def _inheritable(fd: int) -> bool:
    try:
        return os.get_inheritable(fd)
    except OSError:  # closed meanwhile (the listing's own descriptor)
        return False
