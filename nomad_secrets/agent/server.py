"""``nomad-secrets agent``: answer one plugin directory's fetches with warm
store clients.

Started three ways: by the first fetch that finds none (``--started-by-fetch
EXECUTABLE``, the listening socket on fd 3, docs/agent.md), by systemd's
socket (LISTEN_FDS), or by hand (``--plugin-dir DIR``: it binds the
socket itself). Either way it serves the directory it was started for,
with the config a fetch there reads, and nothing else: a request naming
another directory's executable, or a directory without a config file, is
refused, and the plugin fetches in process.

Who may ask (SO_PEERCRED, checked when the connection is accepted, before
any thread or byte is spent on it): root and the agent's own user, who can
run the plugin themselves anyway; and the users in ``agent.users`` (the
Nomad client's user, for an agent running as root) only for the job that
a Nomad workload identity token, verified against the cluster's JWKS
(``agent.nomad_jwks_file``), proves. Refusals are counted and said in the
journal at most every ``REFUSAL_LOG_SECONDS``.

Each request is answered by the plugin's own code (``answer.fetch_answer``:
the same trust checks, policy, identity checks and messages), within the
deadline counted from the plugin process's start (read from /proc: the
kernel's word, not the request's). While it works the agent sends a
heartbeat byte every ``HEARTBEAT_SECONDS``, so that a plugin can tell a
slow store from a hung agent. One log line per request: provider,
namespace, job, outcome and time, never a value; to stderr (journald)
or, for a self-started agent, to syslog.

It stops on SIGTERM, when the executable it was started as is another build
now, when its socket is no longer the one at its path (a plugin found it
hung and started another), when its config is gone or no longer trusted, or
says ``auto = false`` (self-started), and after ``agent.idle_exit_seconds``
without a request (self-started).
"""

from __future__ import annotations

import _thread
import contextlib
import json
import os
import pwd
import signal
import socket
import stat
import sys
import threading
import time
from typing import Any

from nomad_secrets.agent import client
from nomad_secrets.agent.build import build_id, socket_dir
from nomad_secrets.agent.reads import FetchReads, SharedReads
from nomad_secrets.core import config as config_module
from nomad_secrets.core.config import Config, provider_name
from nomad_secrets.nomad.answer import error_answer, fetch_answer
from nomad_secrets.process import endings
from nomad_secrets.process.deadline import Deadline
from nomad_secrets.process.errors import ConfigError, NodeBusy, PluginError
from nomad_secrets.process.limits import Exhausted, OutOfMemory
from nomad_secrets.process.limits import exhausted as limit_of
from nomad_secrets.stores.pool import StorePool

USAGE = """usage: nomad-secrets agent --plugin-dir DIR

Serve the fetches of the plugin directory DIR (Nomad's
<common_plugin_dir>/secrets) with warm store clients, on the socket its
fetches look for (`check` shows it), or on the one systemd hands over
(docs/agent.md). Fetches start an agent by themselves unless the config
says [agent] auto = false: run it yourself only to keep it under systemd."""
REQUEST_SECONDS = 2.0  # to read a request once connected
SEND_SECONDS = 5.0  # to send the answer: the plugin is waiting for it
# A fetch here ends this much before its deadline, so that a timeout's
# answer still reaches the plugin in time to print it.
ANSWER_SECONDS = 0.25
# A request that reaches the agent with less of its deadline left was held
# up before it could ask any store: the node was busy.
BUSY_SECONDS = 0.5
REFUSAL_LOG_SECONDS = 10.0
CHECK_SECONDS = 2.0  # how often it looks at its config and its executable
# A config found being deployed (open for writing, empty, or missing while
# its directory changes) at every look for this long is not a deploy but a
# config no longer usable: a fetch refuses it after 2 s already.
DEPLOY_PATIENCE_SECONDS = 3 * CHECK_SECONDS

# After a stop is asked for, the requests in flight get this long to
# finish (each within its own deadline) before the process ends anyway
# (the example unit's TimeoutStopSec is 15): out of memory, a thread can
# die before it runs, and a wait for it would never end.
STOP_SECONDS = 12.0
# Each thread's stack: 8 MiB by default (RLIMIT_STACK), reserved from the
# address space; request threads need far less.
THREAD_STACK = 1 << 20
M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
MALLOC_ARENAS = 2
# Requests answered at once; the others wait for a slot, heartbeats going
# (one job's flood of many-reference fetches cannot take every thread).
MAX_REQUESTS = 32
# Connections at once of one caller in agent.users (not root, not the
# agent's user): a drip of half-sent requests holds no more of the agent.
MAX_PER_USER = 16


class Agent:
    def __init__(self, config: Config, executable: str, plugin_dir: str, self_started: bool) -> None:
        """``executable``: the file whose swap to another build stops it (the
        plugin's that started it, or the one the operator ran)."""
        self.config = config
        self.plugin_dir = plugin_dir
        self.self_started = self_started
        self.pool = StorePool()
        self.shared = SharedReads()  # single flight and the cache (agent/reads.py)
        self.shared.config_seen(config)
        self.root_like = {0, os.geteuid()}
        self.users = {_uid(user) for user in config.agent.users} - self.root_like
        self.slots = threading.BoundedSemaphore(MAX_REQUESTS)
        self.build = build_id()
        # What it was started as: install swaps this name to a new build; a
        # cp over the file keeps the name and changes the file.
        self.executable, self.started_as = executable, _file_identity(executable)
        # Why it steps aside: it answers no more (the plugin then fetches in
        # process) and stops. Set by plain assignment: the SIGTERM handler
        # sets stop_asked too, and must take no lock.
        self.stepped_aside = ""
        self.stop_asked = False
        self.last_request = time.monotonic()
        self.served = 0
        self._parsed: dict[tuple[str, bytes], Config] = {}
        self._request = threading.local()  # .short: this request ran out of descriptors

    def upgraded(self) -> bool:
        """True once the executable it was started as is another file now."""
        return _file_identity(self.executable) != self.started_as

    def refusal(self, executable: str, build: str) -> tuple[bytes, str] | None:
        """Why this agent does not take a request, and whether it steps aside."""
        if build != self.build:
            if self.upgraded():
                self.step_aside("the executable is another build now")
                return client.STEPPING_ASIDE, f"this agent is build {self.build}, and stops"
            return client.REFUSED, f"this agent is build {self.build}, the plugin {build}"
        if not os.path.isabs(executable) or os.path.dirname(executable) != self.plugin_dir:
            return client.REFUSED, f"this agent serves the plugin directory {self.plugin_dir} only"
        if self.stepped_aside:
            return client.STEPPING_ASIDE, self.stepped_aside
        return None

    def answer(self, executable: str, path: str, environ: dict[str, str], start: float) -> bytes | None:
        """The answer to send, or None: not this agent's to give (the plugin
        then fetches in process)."""
        self._request.short = False
        payload = self._answer(executable, path, environ, start)
        return None if self.stepped_aside or self._request.short else payload

    def load(self, executable: str, *, wait: bool = True) -> Config:
        config = config_module.load(executable, cache=self._parsed, wait=wait)
        if config.path is None:
            raise _NotServed("no config file: an agent serves only a plugin directory with one")
        self.shared.config_seen(config)  # a changed config empties the cache at once
        return config

    def _answer(self, executable: str, path: str, environ: dict[str, str], start: float) -> bytes:
        try:
            config = self.load(executable)
        except _NotServed:
            raise
        except BaseException as exc:  # noqa: BLE001 - the plugin must get an answer
            return error_answer(exc, start, self._damaged, self._exhausted)
        deadline = Deadline(config.plugin.deadline_seconds, start=start)
        deadline.at -= ANSWER_SECONDS
        if deadline.remaining() < BUSY_SECONDS or not self.slots.acquire(timeout=deadline.remaining()):
            return error_answer(NodeBusy.late(path, time.monotonic() - start, deadline.seconds), start)
        try:
            return fetch_answer(
                path,
                environ,
                provider_name(executable),
                config,
                deadline,
                pool=self.pool,
                reads=FetchReads(self.shared),
                heal=self._damaged,
                exhausted=self._exhausted,
            )
        finally:
            self.slots.release()

    def _damaged(self, entry: str) -> bool:
        """error_answer's heal, for the agent: moves nothing (a fetch in
        process does, once this agent is out of the way)."""
        self.step_aside("its unpacked code is damaged; the next fetch heals it")
        return False

    def _exhausted(self, limit: Exhausted) -> None:
        """error_answer's word that a limit of this process ran out: the
        agent's own, not the plugin's, which fetches in process instead."""
        if isinstance(limit, OutOfMemory):  # it stops: the plugin can still fetch
            self.step_aside(endings.AGENT_OUT_OF_MEMORY)
        else:
            # A shortage of descriptors passes with the requests that hold
            # them: this one is not answered (the plugin fetches it in
            # process), and the agent serves on; stopping would let one
            # job's burst stop it at will.
            self._request.short = True
            log("not-answered", reason=endings.AGENT_OUT_OF_DESCRIPTORS)

    def step_aside(self, reason: str) -> None:
        if not self.stepped_aside:
            self.stepped_aside = reason
            log("stopping", reason=reason)
        self.stop_asked = True

    def info(self) -> dict[str, object]:
        """``check``'s round trip: what this agent is and would use."""
        from nomad_secrets._version import __version__

        return {
            "version": __version__,
            "build": self.build,
            "pid": os.getpid(),
            "uid": os.geteuid(),
            "plugin_dir": self.plugin_dir,
            "config": self.config.path,
            "started_by": "fetch" if self.self_started else "operator",
            "served": self.served,
            "idle_exit_seconds": self.config.agent.idle_exit_seconds if self.self_started else 0,
            "aws_credentials": "static keys from the config"
            if self.config.aws.access_key_id
            else "the node's default chain, as the agent's user",
            "vault_auth": self.config.vault.auth_method,
        }


def _file_identity(executable: str) -> tuple[str, int, int, int]:
    """The file the name leads to: its real path, inode, size and mtime."""
    real = os.path.realpath(executable)
    try:
        st = os.stat(real)
    except OSError:
        return (real, 0, 0, 0)
    return (real, st.st_ino, st.st_size, st.st_mtime_ns)


class _NotServed(Exception):
    """A request this agent must not answer at all."""


def _uid(user: str) -> int:
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise ConfigError(f"agent.users names {user!r}, which is not a user on this node") from None


def process_start(pid: int) -> float | None:
    """When ``pid`` started, on this process's monotonic clock: the kernel's
    record (/proc/PID/stat), so a request cannot claim more time."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, since boot
    except (OSError, ValueError, IndexError):
        return None
    age = max(time.clock_gettime(time.CLOCK_BOOTTIME) - started, 0.0)
    return time.monotonic() - age


def parse_request(payload: bytes) -> tuple[bytes, str, str, str, dict[str, str]]:
    """kind, executable, path, build, environment; ValueError if malformed."""
    fields = payload.split(b"\0")
    if len(fields) < 4:
        raise ValueError("too few fields")
    kind, executable, path, build = fields[:4]
    environ: dict[str, str] = {}
    for item in fields[4:]:
        key, equals, value = item.partition(b"=")
        if not equals:  # an empty key is the job's, and the allowlist refuses it by name
            raise ValueError("an environment entry without '='")
        environ[os.fsdecode(key)] = os.fsdecode(value)  # as os.environ decodes, surrogates and all
    return kind, os.fsdecode(executable), os.fsdecode(path), build.decode("ascii"), environ


def _read_by(sock: socket.socket, size: int, end: float) -> bytes:
    """``size`` bytes, all of them by the monotonic time ``end``."""
    data = b""
    while len(data) < size:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request was not sent in time")
        sock.settimeout(left)
        try:
            chunk = sock.recv(min(size - len(data), 1 << 16))
        except TimeoutError:
            raise TimeoutError("the request was not sent in time") from None
        if not chunk:
            raise client.Closed("the other side closed the connection")
        data += chunk
    return data


class Connection:
    """One plugin's connection: its answer and the heartbeats share it."""

    def __init__(self, sock: socket.socket, pid: int, uid: int) -> None:
        self.sock, self.pid, self.uid = sock, pid, uid
        self.lock = threading.Lock()
        self.working = False

    def send(self, code: bytes, body: bytes | None = None) -> None:
        data = code if body is None else code + len(body).to_bytes(4, "big") + body
        with self.lock:
            self.working = False
            self.sock.settimeout(SEND_SECONDS)
            self.sock.sendall(data)

    def heartbeat(self) -> None:
        if self.working and self.lock.acquire(blocking=False):
            try:
                if self.working:
                    self.sock.send(client.HEARTBEAT, socket.MSG_DONTWAIT)
            except OSError:
                pass
            finally:
                self.lock.release()


class Server:
    def __init__(self, agent: Agent, sock: socket.socket, path: str | None, owned: bool = True) -> None:
        """``owned``: the socket file is this agent's to remove when it stops
        (not systemd's, which keeps listening on it)."""
        self.agent = agent
        self.sock = sock
        self.owned = owned
        self.path = path  # the socket's path, when known: another there means this agent was replaced
        self.bound = _identity(path) if path else None
        self.connections: set[Connection] = set()
        self.in_flight = 0
        self.settled = threading.Condition()
        self.refused = 0
        self.refusals_logged = 0.0
        self.per_user: dict[int, int] = {}  # connections in flight of each agent.users caller
        self.checked = time.monotonic()
        self.deploy_seen: float | None = None  # since when each look found the config being deployed
        self.idle_held = False  # logged once: idling out waits for kept values (stale_if_error)

    def serve(self) -> None:
        self.sock.settimeout(0.5)
        threading.Thread(target=self._heartbeats, daemon=True, name="heartbeats").start()
        while not self.agent.stop_asked:
            self._service()
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                log("accept-failed", error=exc.strerror or type(exc).__name__)
                time.sleep(0.05)  # EMFILE: the requests in flight free descriptors
                continue
            try:
                pid, uid = client.peer(conn)
            except OSError:
                conn.close()
                continue
            if uid not in self.agent.root_like and (
                uid not in self.agent.users or self.per_user.get(uid, 0) >= MAX_PER_USER
            ):
                conn.close()  # no thread, no byte: a flood costs a close each
                self._refused(
                    uid, "not root, nor in agent.users" if uid not in self.agent.users else "too many at once"
                )
                continue
            self._start(Connection(conn, pid, uid))

    def _refused(self, uid: int, reason: str) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self.refusals_logged >= REFUSAL_LOG_SECONDS:
            log("refused", connections=self.refused, last_uid=uid, reason=reason)
            self.refused, self.refusals_logged = 0, now

    def _start(self, connection: Connection) -> None:
        with self.settled:
            self.in_flight += 1
            if connection.uid not in self.agent.root_like:
                self.per_user[connection.uid] = self.per_user.get(connection.uid, 0) + 1
        try:
            _thread.start_new_thread(self._serve, (connection,))
        except RuntimeError:  # no thread could start (address space): the plugin fetches in process
            self._done(connection.uid)
            log("busy", reason="no thread could start for the request")
            connection.sock.close()

    def _serve(self, connection: Connection) -> None:
        try:
            self._handle(connection)
        except MemoryError:  # no answer: the plugin fetches in process
            with contextlib.suppress(MemoryError):
                self.agent.step_aside(endings.AGENT_OUT_OF_MEMORY)
        except OSError:
            pass  # the plugin went away (Nomad's SIGTERM): nothing to answer
        except BaseException as exc:  # noqa: BLE001 - one line, never a traceback
            with contextlib.suppress(BaseException):
                log("request-failed", error=type(exc).__name__)
        finally:
            with contextlib.suppress(OSError):
                connection.sock.close()
            self._done(connection.uid)

    def _done(self, uid: int) -> None:
        with self.settled:
            self.in_flight -= 1
            if uid in self.per_user:
                self.per_user[uid] -= 1
            self.settled.notify_all()

    def _handle(self, connection: Connection) -> None:
        agent, sock = self.agent, connection.sock
        end = time.monotonic() + REQUEST_SECONDS  # for the whole request: a drip holds no thread longer
        try:
            if _read_by(sock, len(client.MAGIC), end) != client.MAGIC:
                raise ValueError("not the agent's framing")
            size = int.from_bytes(_read_by(sock, 4, end), "big")
            if size > client.MAX_REQUEST:
                raise ValueError(f"a request of {size} bytes")
            kind, executable, path, build, environ = parse_request(_read_by(sock, size, end))
        except (OSError, ValueError, client.Closed) as exc:
            log("bad-request", uid=connection.uid, error=str(exc) or type(exc).__name__)
            with contextlib.suppress(OSError):  # refused, not gone: the plugin does not replace the agent
                connection.send(client.REFUSED, b"a malformed request")
            return
        if kind == client.KIND_PING and connection.uid in agent.root_like:
            connection.send(client.ACK)
            connection.send(client.ANSWER, json.dumps(agent.info()).encode())
            return
        refusal = agent.refusal(executable, build)
        if refusal is None and connection.uid not in agent.root_like:
            refusal = self._identity_refusal(environ)
        if refusal is not None:
            log("refused", uid=connection.uid, reason=refusal[1])
            connection.send(refusal[0], refusal[1].encode())
            return
        agent.last_request = time.monotonic()  # only what it serves keeps it from idling out
        start = process_start(connection.pid) or time.monotonic()
        connection.send(client.ACK)
        connection.working = True
        with self.settled:
            self.connections.add(connection)
        try:
            payload = agent.answer(executable, path, environ, start)
        except _NotServed as exc:
            log("refused", uid=connection.uid, reason=str(exc))
            connection.send(client.REFUSED, str(exc).encode())
            return
        finally:
            with self.settled:
                self.connections.discard(connection)
        if payload is None:
            connection.send(client.STEPPING_ASIDE if agent.stepped_aside else client.REFUSED, b"not answered")
            return
        connection.send(client.ANSWER, payload)
        agent.served += 1
        error = json.loads(payload).get("error") if payload.startswith(b'{"result": {}, "error"') else None
        log(
            "answered",
            provider=provider_name(executable),
            namespace=environ.get("NOMAD_NAMESPACE"),
            job=environ.get("NOMAD_JOB_ID"),
            outcome="error" if error is not None else "ok",
            **({"error": error} if error is not None else {}),
            ms=round((time.monotonic() - start) * 1000),  # from the plugin's start, as Nomad counts
            clients=len(agent.pool),
        )

    def _identity_refusal(self, environ: dict[str, str]) -> tuple[bytes, str] | None:
        """A caller in agent.users is answered only for the job its verified
        workload identity token proves (callers.py)."""
        from nomad_secrets.agent import callers

        try:
            namespace, job = callers.verified_job(self.agent.config, environ)
        except callers.NotVerified as exc:
            return client.REFUSED, str(exc)
        environ["NOMAD_NAMESPACE"], environ["NOMAD_JOB_ID"] = namespace, job
        return None

    def _heartbeats(self) -> None:
        while True:
            time.sleep(client.HEARTBEAT_SECONDS)
            with self.settled:
                connections = list(self.connections)
            for connection in connections:
                connection.heartbeat()

    def _service(self) -> None:
        """Between accepts (at least every half second): the reasons to stop."""
        agent = self.agent
        now = time.monotonic()
        if self.path and _identity(self.path) not in (self.bound, None):
            agent.step_aside(f"its socket {self.path} is another's now (a plugin found it hung, replaced it)")
        if now - self.checked < CHECK_SECONDS:
            return
        self.checked = now
        _notify("WATCHDOG=1")
        if agent.upgraded():
            agent.step_aside("the executable is another build now")
        try:
            # A look, not a wait: waiting out a deploy here held up every
            # accept for up to 2 s (fetches took the agent for hung), and one
            # that held the file longer stopped the agent.
            config = agent.load(os.path.join(agent.plugin_dir, "nomad-secrets"), wait=False)
        except config_module.BeingDeployed as exc:
            self.deploy_seen = self.deploy_seen or now
            if now - self.deploy_seen >= DEPLOY_PATIENCE_SECONDS:
                agent.step_aside(
                    f"its config can no longer be used: {exc.message} at every look for"
                    f" {DEPLOY_PATIENCE_SECONDS:g} s"
                )
            return  # else the next look, CHECK_SECONDS on, finds it deployed
        except (PluginError, _NotServed, OSError) as exc:
            if limit_of(exc, "reading its config"):  # out of descriptors for now: not a reason to stop
                return
            agent.step_aside(f"its config can no longer be used: {getattr(exc, 'message', exc)}")
            return
        self.deploy_seen = None
        if agent.self_started and not config.agent.auto:
            agent.step_aside("the config says [agent] auto = false")
        idle = config.agent.idle_exit_seconds if agent.self_started else 0
        with self.settled:
            busy = self.in_flight
        if idle and not busy and now - agent.last_request > idle:
            # Kept values live in this process alone: it does not idle out
            # while one may still stand in for a store that is down.
            kept = agent.shared.memo.kept_until() - now
            if kept <= 0:
                agent.step_aside(f"no request for {idle:g} s (agent.idle_exit_seconds)")
            elif not self.idle_held:
                self.idle_held = True
                log("idle-held", reason="values kept for stale_if_error_seconds", seconds=round(kept))

    def close(self) -> None:
        """Stop listening (and free the path, if still ours), then let the
        requests in flight finish, for at most STOP_SECONDS."""
        if self.owned and self.path and _identity(self.path) == self.bound:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self.sock.close()
        with self.settled:
            if not self.settled.wait_for(lambda: self.in_flight <= 0, timeout=STOP_SECONDS):
                log("stopped-waiting", requests=self.in_flight, seconds=STOP_SECONDS)


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_ctime_ns)


def _from_systemd(environ: dict[str, str]) -> bool:
    return environ.get("LISTEN_PID") == str(os.getpid()) and environ.get("LISTEN_FDS") == "1"


def listening_socket(
    plugin_dir: str, environ: dict[str, str], open_to_others: bool
) -> tuple[socket.socket, str]:
    """systemd's socket (LISTEN_FDS), or the plugin directory's bound here;
    and its path. systemd's must be at the path fetches look for."""
    path = client.socket_name(plugin_dir, socket_dir())
    if _from_systemd(environ):
        sock = socket.socket(fileno=3)
        bound = sock.getsockname()
        if bound != path:
            raise ConfigError(
                f"systemd's socket is {bound!r}, but this plugin directory's fetches look for the agent at"
                f" {path}: set ListenStream={path} in the socket unit"
            )
        return sock, path
    directory = os.path.dirname(path)
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o755)
    problem = client.untrusted_directory(directory)
    if problem:
        raise ConfigError(problem)
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
            raise ConfigError(f"{path} exists and is not this user's socket; remove it")
        if _answering(path):
            raise ConfigError(f"an agent already listens on {path}: stop it first")
        os.unlink(path)  # a stale socket of an agent that is gone
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o111 if open_to_others else 0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(client.SOMAXCONN)
    return sock, path


def _answering(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def _few_malloc_arenas() -> None:
    """glibc gives threads malloc arenas of their own, up to 8 per core,
    each reserving 64 MiB of address space: under the unit's LimitAS a
    thread stalled making one while it held the GIL (gdb, in review)."""
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(M_ARENA_MAX, MALLOC_ARENAS)
    except (OSError, AttributeError):
        pass


def _raise_descriptor_limit() -> None:
    """The soft RLIMIT_NOFILE up to the hard one, as Go does for Nomad."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _thread_failed(failure: Any) -> None:
    """threading.excepthook and sys.unraisablehook: one line, never a traceback."""
    with contextlib.suppress(BaseException):  # nothing left to say it with
        log("thread-failed", error=failure.exc_type.__name__)


_notify_socket: list[str] = []  # systemd's NOTIFY_SOCKET, when it gave one


def _notify(state: str) -> None:
    """sd_notify(3): READY=1 once listening, WATCHDOG=1 while it serves
    (WatchdogSec in the unit restarts an agent that stops saying it)."""
    if not _notify_socket:
        return
    address = _notify_socket[0]
    if address.startswith("@"):
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(state.encode(), address)


# A self-started agent has no journal of its own: its lines go to the
# node's syslog socket (the config's audit.syslog_socket, /dev/log).
_syslog: list[str] = []


def log(event: str, **fields: object) -> None:
    """One line: to stderr (the journal, under systemd or by hand); for a
    self-started agent, to syslog and to the plugin's debug log if the
    config names one (its stderr is /dev/null)."""
    parts = [event, *(f"{k}={v!r}" for k, v in fields.items())]
    line = " ".join(parts)
    if _syslog:
        _to_syslog(_syslog[0], line, INFO if event in QUIET_EVENTS else WARNING)
        from nomad_secrets.process import debuglog

        debuglog.log(f"agent-{event}", **fields)
        return
    with contextlib.suppress(OSError):
        os.write(2, (line + "\n").encode("utf-8", "backslashreplace"))


# syslog(3) priorities, daemon facility: an answer or a start is news;
# a refusal, a stop or a failure is for the operator to look at.
INFO, WARNING = 3 * 8 + 6, 3 * 8 + 4
QUIET_EVENTS = ("answered", "listening")


def _to_syslog(path: str, line: str, priority: int) -> None:
    """syslog(3)'s format, without blocking: a busy or absent syslog loses
    the line, never delays an answer."""
    data = f"<{priority}>nomad-secrets-agent[{os.getpid()}]: {line}".encode("utf-8", "backslashreplace")
    data = data[:8000]
    with (
        contextlib.suppress(OSError),
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC) as sock,
    ):
        sock.sendto(data, path)


def _options(executable: str, argv: list[str]) -> tuple[str, bool] | None:
    """The plugin directory, and whether a fetch started this agent."""
    if len(argv) == 2 and argv[0] == "--started-by-fetch" and os.path.isabs(argv[1]):
        return os.path.dirname(argv[1]), True
    if len(argv) == 2 and argv[0] == "--plugin-dir":
        return os.path.abspath(argv[1]).rstrip("/") or "/", False
    if len(argv) == 2 and argv[0] == "--config":  # before 0.2: the config beside the plugins
        return os.path.dirname(os.path.abspath(argv[1])), False
    if not argv:  # run as a provider in the plugin directory, or as <common_plugin_dir>/nomad-secrets
        here = os.path.dirname(os.path.abspath(executable))
        beside = os.path.join(here, config_module.CONFIG_FILE_NAME)
        return (here if os.path.exists(beside) else os.path.join(here, "secrets")), False
    return None


def main(executable: str, argv: list[str], environ: dict[str, str]) -> int:
    """``agent [--plugin-dir DIR]``: serve until a reason to stop."""
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    options = _options(executable, argv)
    if options is None:
        print(USAGE, file=sys.stderr)
        return 2
    plugin_dir, self_started = options
    if self_started:
        _syslog.append("/dev/log")
        os.chdir("/")  # the first fetch's directory is not the agent's to hold
        with contextlib.suppress(OSError):  # served first under a burst of plugins starting
            os.setpriority(os.PRIO_PROCESS, 0, client.AGENT_NICE)
        executable = argv[1]
    if environ.get("NOTIFY_SOCKET"):
        _notify_socket.append(environ["NOTIFY_SOCKET"])
    try:
        config = config_module.load(os.path.join(plugin_dir, "nomad-secrets"))  # the directory's config
        if config.path is None:
            raise ConfigError(
                f"no config file for {plugin_dir}: an agent serves only a plugin directory with one"
                " (without one, fetches run in process with the built-in defaults)"
            )
        if self_started and not config.agent.auto:
            log("not-started", reason=f"{config.path} says [agent] auto = false")
            return 0
        agent = Agent(config, executable, plugin_dir, self_started)
        if self_started:
            _syslog[0] = config.audit.syslog_socket
            if config.plugin.debug_log:  # fd 2 is /dev/null: the debug log gets it instead
                from nomad_secrets.process import debuglog

                debuglog.enable(config.plugin.debug_log)
        if self_started:
            sock = socket.socket(fileno=3)
            path: str | None = sock.getsockname()
        else:
            sock, path = listening_socket(plugin_dir, environ, bool(agent.users))
        # listen() again: the kernel then gives this process's pid to a
        # plugin's SO_PEERCRED, not the pid of the plugin (or systemd) that
        # bound the socket.
        sock.listen(client.SOMAXCONN)
    except PluginError as exc:
        if self_started:
            log("not-started", reason=exc.message)
        print(f"nomad-secrets agent: {exc.message}", file=sys.stderr)
        return 2
    _raise_descriptor_limit()
    from nomad_secrets.process import debuglog

    # An audit record or a count not written is said in the journal, or, for
    # a self-started agent (stderr is /dev/null), in its syslog lines.
    debuglog.warnings_to_stderr = True
    if self_started:
        debuglog.warnings_to = log
    server = Server(agent, sock, path, owned=not _from_systemd(environ))

    def stop(signum: int, frame: object) -> None:
        agent.stop_asked = True  # no lock, no thread: see Agent.stepped_aside

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.stack_size(THREAD_STACK)
    _few_malloc_arenas()
    threading.excepthook = _thread_failed
    sys.unraisablehook = _thread_failed
    # Config reads in the request threads take a read lease (config.py),
    # whose break is a SIGIO: its default would end the agent.
    signal.signal(signal.SIGIO, signal.SIG_IGN)
    log("listening", on=path, plugin_dir=plugin_dir, config=config.path, build=agent.build)
    _notify("READY=1")
    try:
        server.serve()
    finally:
        server.close()
        try:
            agent.pool.close()  # revokes the Vault logins' tokens
        except Exception as exc:  # noqa: BLE001 - best effort: their TTL ends them
            log("close-failed", error=type(exc).__name__)
        log("stopped", reason=agent.stepped_aside or "asked to stop")
    return 0
