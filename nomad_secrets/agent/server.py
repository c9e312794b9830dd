"""``nomad-secrets agent``: answer the plugin's fetches with warm clients.

Run by systemd (examples/systemd/: a socket unit hands the listening socket
over, LISTEN_FDS) or on its own (it binds ``agent.socket``, 0600). Each
connection gets a thread. A connection is served only when SO_PEERCRED
says the process at the other end runs as root or as one of
``agent.users``: the socket's mode is a second fence, not the first.

Each request is answered by the plugin's own code (``answer.fetch_answer``:
the config the plugin would read for its executable, with the same trust
checks, the same policy and identity checks and the same messages), with
the deadline the plugin has left. One log line per request goes to stderr
(journald): provider, namespace, job, outcome and time, never a value.
SIGTERM stops accepting and lets the requests in flight finish.
"""

from __future__ import annotations

import _thread
import contextlib
import json
import math
import os
import pwd
import signal
import socket
import socketserver
import sys
import threading
import time
from typing import Any

from nomad_secrets import config as config_module
from nomad_secrets.agent import wire
from nomad_secrets.answer import error_answer, fetch_answer
from nomad_secrets.config import Config, provider_name
from nomad_secrets.deadline import Deadline
from nomad_secrets.errors import ConfigError, PluginError
from nomad_secrets.limits import Exhausted
from nomad_secrets.pool import StorePool

USAGE = """usage: nomad-secrets agent [--config FILE]

Serve the plugin's fetches with warm store clients on agent.socket, or on
the socket systemd hands over (docs/agent.md). FILE: the config to read
[agent] from (default: the one this executable's fetches read)."""
REQUEST_SECONDS = 2.0  # to read a request once connected
SEND_SECONDS = 5.0  # to send the answer: the plugin is waiting for it
# A fetch here ends this much before the plugin stops waiting, so that a
# timeout's answer still reaches it (else it fetches in process, again).
ANSWER_SECONDS = 0.25


# Why it stops when a limit of its own runs out: the plugin can still fetch.
OUT_OF_MEMORY = (
    "it ran out of memory under its own address space limit (LimitAS in the agent's unit); the plugin"
    " fetches in process, and systemd's socket starts the agent again at the next fetch"
)
# A shortage of descriptors passes with the requests that hold them: the
# one request is not answered (the plugin fetches it in process), and the
# agent serves on; stopping would let one job's burst stop it at will.
OUT_OF_DESCRIPTORS = (
    "it ran out of file descriptors under its own limit (LimitNOFILE in the agent's unit) for this request;"
    " the plugin fetches it in process"
)


# After a stop is asked for, the requests in flight get this long to
# finish (each within its own deadline) before the process ends anyway
# (the example unit's TimeoutStopSec is 15): out of memory, a thread can
# die before it runs, and a wait for it would never end (the operator
# review of issue #15).
STOP_SECONDS = 12.0
# Each thread's stack: 8 MiB by default (RLIMIT_STACK), reserved from the
# address space; 33 request threads and their readers need far less.
THREAD_STACK = 1 << 20


M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
MALLOC_ARENAS = 2


# Requests served at once; the others wait for a slot (within the plugin's
# wait for an acknowledgement), so that one job's flood of many-reference
# fetches cannot run the agent out of threads for every other job.
MAX_REQUESTS = 32


class Agent:
    def __init__(self, config: Config, executable: str) -> None:
        self.config = config
        self.pool = StorePool()
        self.uids = {0, os.geteuid(), *(_uid(user) for user in config.agent.users)}
        self.slots = threading.BoundedSemaphore(MAX_REQUESTS)
        self.build = wire.build_name()
        # What it was started as: install swaps this name to a new build.
        self.executable, self.started_as = executable, os.path.realpath(executable)
        # Why it steps aside: it answers no more (the plugin then fetches in
        # process) and stops. Its own unpacked code damaged (the fetch in
        # process heals the cache), or its own memory gone (systemd starts
        # it again). Set by plain assignment: the SIGTERM handler sets
        # stop_asked too, and must take no lock (it may interrupt a thread
        # that holds one: an agent out of memory hung in its handler).
        self.stepped_aside = ""
        self.stop_asked = False
        self._parsed: dict[tuple[str, bytes], Config] = {}
        self._request = threading.local()  # .short: this request ran out of descriptors

    def upgraded(self) -> bool:
        """True once the executable it was started as is another build now."""
        return os.path.realpath(self.executable) != self.started_as

    def answer(self, request: dict[str, Any]) -> bytes | None:
        """The answer to send, or None: not this agent's to give (the plugin
        then fetches in process)."""
        self._request.short = False
        payload = self._answer(request)
        return None if self.stepped_aside or self._request.short else payload

    def _answer(self, request: dict[str, Any]) -> bytes:
        start = time.monotonic()
        executable, path = request["executable"], request["path"]
        try:
            config = config_module.load(executable, cache=self._parsed)
        except BaseException as exc:  # noqa: BLE001 - the plugin must get an answer
            return error_answer(exc, start, self._damaged, self._exhausted)
        seconds = min(float(request["seconds"]), config.plugin.deadline_seconds)
        # The plugin's deadline, as its messages name it (plugin.deadline_seconds),
        # ending before the share the plugin gave the agent ends.
        deadline = Deadline(config.plugin.deadline_seconds, start=start)
        deadline.at = start + max(seconds - ANSWER_SECONDS, 0.0)
        return fetch_answer(
            path,
            request["environ"],
            provider_name(executable),
            config,
            deadline,
            pool=self.pool,
            heal=self._damaged,
            exhausted=self._exhausted,
        )

    def _damaged(self, entry: str) -> bool:
        """error_answer's heal, for the agent: moves nothing (a fetch in
        process does, once this agent is out of the way)."""
        self.step_aside("its unpacked code is damaged; the next fetch heals it")
        return False

    def _exhausted(self, limit: Exhausted) -> None:
        """error_answer's word that a limit of this process ran out: the
        agent's own (its unit's LimitAS, LimitNOFILE), not the plugin's,
        which fetches in process instead."""
        if " of memory " in limit.message:
            self.step_aside(OUT_OF_MEMORY)
        else:
            self._request.short = True
            log("not-answered", reason=OUT_OF_DESCRIPTORS)

    def step_aside(self, reason: str) -> None:
        if not self.stepped_aside:
            self.stepped_aside = reason
            log("stopping", reason=reason)
        self.stop_asked = True


def _uid(user: str) -> int:
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise ConfigError(f"agent.users names {user!r}, which is not a user on this node") from None


def valid_request(request: object) -> bool:
    if not isinstance(request, dict):
        return False
    environ = request.get("environ")
    return (
        isinstance(request.get("executable"), str)
        and os.path.isabs(request["executable"])
        and isinstance(request.get("path"), str)
        and isinstance(request.get("seconds"), (int, float))
        and not isinstance(request.get("seconds"), bool)
        and math.isfinite(request["seconds"])  # json.loads takes NaN and Infinity
        and isinstance(environ, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in environ.items())
    )


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        try:
            self._handle()
        except MemoryError:  # no answer: the plugin fetches in process
            with contextlib.suppress(MemoryError):
                self.server.agent.step_aside(OUT_OF_MEMORY)

    def _handle(self) -> None:
        sock: socket.socket = self.request
        agent = self.server.agent
        uid = wire.peer_uid(sock)
        if uid not in agent.uids:
            log("refused", uid=uid, reason="not root or agent.users")
            return
        sock.settimeout(REQUEST_SECONDS)
        try:
            request = json.loads(
                wire.read_frame(sock, wire.MAX_REQUEST, wire.MAGIC).decode("utf-8", "surrogateescape")
            )
        except (OSError, ValueError, wire.WireError) as exc:
            log("bad-request", uid=uid, error=type(exc).__name__)
            return
        if not valid_request(request):
            log("bad-request", uid=uid, error="shape")
            return
        if request.get("build") != agent.build:
            # Another build's plugin: it fetches in process (no acknowledgement).
            # If this agent's own executable was upgraded, it stops, and
            # systemd's socket starts the installed build on the next fetch.
            if agent.upgraded():
                agent.step_aside("the executable is another build now")
            else:
                log("refused", build=request.get("build"), mine=agent.build)
            return
        if not agent.slots.acquire(timeout=wire.ACK_SECONDS / 2):
            log("busy", slots=MAX_REQUESTS)
            return
        try:
            self._answer(sock, agent, request)
        finally:
            agent.slots.release()

    def _answer(self, sock: socket.socket, agent: Agent, request: dict[str, Any]) -> None:
        started = time.monotonic()
        with contextlib.suppress(OSError):
            sock.sendall(wire.ACK)
            payload = agent.answer(request)
            if payload is None:  # no answer: the plugin fetches in process
                return
            sock.settimeout(SEND_SECONDS)
            sock.sendall(wire.frame(payload))
            environ = request["environ"]
            error = (
                json.loads(payload).get("error") if payload.startswith(b'{"result": {}, "error"') else None
            )
            log(
                "answered",
                provider=provider_name(request["executable"]),
                namespace=environ.get("NOMAD_NAMESPACE"),
                job=environ.get("NOMAD_JOB_ID"),
                outcome="error" if error is not None else "ok",
                **({"error": error} if error is not None else {}),
                ms=round((time.monotonic() - started) * 1000),
                clients=len(agent.pool),
            )


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    def __init__(self, agent: Agent, sock: socket.socket) -> None:
        super().__init__("", _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.agent = agent
        self._in_flight = 0
        self._settled = threading.Condition()

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread per connection, as ThreadingMixIn's, started without
        waiting for it to run (threading.Thread.start waits, for ever if the
        thread dies first); one that cannot start (no address space left)
        is the plugin's to fetch in process."""
        with self._settled:
            self._in_flight += 1
        try:
            _thread.start_new_thread(self._serve, (request, client_address))
        except RuntimeError:
            self._done()
            log("busy", reason="no thread could start for the request")
            self.shutdown_request(request)

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            self._done()

    def _done(self) -> None:
        with self._settled:
            self._in_flight -= 1
            self._settled.notify_all()

    def server_close(self) -> None:
        """Stop listening, then let the requests in flight finish, for at
        most STOP_SECONDS."""
        socketserver.UnixStreamServer.server_close(self)
        with self._settled:
            if not self._settled.wait_for(lambda: self._in_flight <= 0, timeout=STOP_SECONDS):
                log("stopped-waiting", requests=self._in_flight, seconds=STOP_SECONDS)

    def service_actions(self) -> None:
        """serve_forever calls this at least every poll interval: a stop
        asked for (SIGTERM, a step aside) ends it here, in its own thread."""
        if self.agent.stop_asked:
            raise _Stop

    def handle_error(self, request: object, client_address: object) -> None:
        """One line, not a traceback: a thread that cannot start (address
        space), a request that failed outside its handler."""
        with contextlib.suppress(MemoryError):
            log("request-failed", error=type(sys.exc_info()[1]).__name__)


class _Stop(Exception):
    pass


def listening_socket(
    path: str | None, open_to_others: bool, environ: dict[str, str]
) -> tuple[socket.socket, str]:
    """systemd's socket (LISTEN_FDS), or ``path`` bound here; and which."""
    if environ.get("LISTEN_PID") == str(os.getpid()) and environ.get("LISTEN_FDS") == "1":
        return socket.socket(fileno=3), "fd 3 (systemd)"
    if not path:
        raise ConfigError(
            "agent.socket is not set: set it in the [agent] section, or start the agent from systemd"
        )
    with contextlib.suppress(FileNotFoundError):
        import stat

        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
            raise ConfigError(f"{path} exists and is not this user's socket; remove it")
        if _answering(path):
            raise ConfigError(f"an agent already listens on {path}: stop it first (systemctl stop ...)")
        os.unlink(path)  # a stale socket of an agent that is gone
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o111 if open_to_others else 0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(128)
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
    thread stalled making one while it held the GIL, so that not even
    SIGTERM's handler ran (gdb, in review). Its threads mostly wait on the
    stores: MALLOC_ARENAS serve them. Not glibc: nothing to do."""
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(M_ARENA_MAX, MALLOC_ARENAS)
    except (OSError, AttributeError):
        pass


def _raise_descriptor_limit() -> None:
    """The soft RLIMIT_NOFILE up to the hard one, as Go does for Nomad
    itself: systemd's default soft limit, 1024, is what 32 requests of 64
    references each would run past (a job's burst did, in review)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _thread_failed(failure: Any) -> None:
    """threading.excepthook and sys.unraisablehook: one line, never a
    traceback. Out of memory even this call can fail; the interpreter then
    writes its own last-resort line ("Exception ignored in ...")."""
    with contextlib.suppress(BaseException):  # nothing left to say it with
        log("thread-failed", error=failure.exc_type.__name__)


def log(event: str, **fields: object) -> None:
    parts = [event, *(f"{k}={v!r}" for k, v in fields.items())]
    with contextlib.suppress(OSError):
        os.write(2, (" ".join(parts) + "\n").encode("utf-8", "backslashreplace"))


def main(executable: str, argv: list[str], environ: dict[str, str]) -> int:
    """``agent [--config FILE]``: serve until SIGTERM or SIGINT."""
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if not argv or (len(argv) == 2 and argv[0] == "--config"):
        try:
            config = config_module.load_file(argv[1]) if argv else config_module.load(executable)
            agent = Agent(config, executable)
            sock, where = listening_socket(config.agent.socket, bool(config.agent.users), environ)
        except PluginError as exc:
            print(f"nomad-secrets agent: {exc.message}", file=sys.stderr)
            return 2
    else:
        print(USAGE, file=sys.stderr)
        return 2
    _raise_descriptor_limit()
    from nomad_secrets import debuglog

    debuglog.warnings_to_stderr = True  # an audit record not written is said in the journal
    server = _Server(agent, sock)

    def stop(signum: int, frame: object) -> None:
        agent.stop_asked = True  # no lock, no thread: see Agent.stepped_aside

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.stack_size(THREAD_STACK)
    _few_malloc_arenas()
    # A thread that fails outside our handlers (out of memory, at its start
    # or end) is one line in the journal, not a traceback.
    threading.excepthook = _thread_failed
    sys.unraisablehook = _thread_failed
    # Config reads in the request threads take a read lease (config.py),
    # whose break is a SIGIO: its default would end the agent.
    signal.signal(signal.SIGIO, signal.SIG_IGN)
    log("listening", on=where, config=config.path)
    try:
        with contextlib.suppress(_Stop):
            server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()  # joins the requests in flight
        try:
            agent.pool.close()  # revokes the Vault logins' tokens
        except Exception as exc:  # noqa: BLE001 - best effort: their TTL ends them
            log("close-failed", error=type(exc).__name__)
        log("stopped")
    return 0
