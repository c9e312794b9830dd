"""The node agent as an operator (or systemd) starts it: ``<plugin> agent``,
its log lines as they come, and a socket path short enough for a unix
socket. Shared by the agent's tests (tests/test_agent.py, AWS, and
tests/test_agent_vault.py, the real OpenBao server)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class AgentProcess:
    """``<plugin> agent``, started as an operator (or systemd) would."""

    def __init__(self, executable: Path, *args: str, node: Callable[[], None] | None = None) -> None:
        """``node``: run in the child before the exec (tests/support/nomad.py limited)."""
        self.proc = subprocess.Popen(
            [str(executable), "agent", *args],
            env={},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=node,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.decode(errors="replace").rstrip("\n"))

    def wait_for(self, needle: str, seconds: float = 10.0) -> str:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for line in self.lines:
                if needle in line:
                    return line
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"the agent never logged {needle!r}: {self.lines}")

    def answered(self) -> list[str]:
        """Its one line per answered request, in order."""
        return [line for line in self.lines if line.startswith("answered")]

    def wait_answered(self, count: int, seconds: float = 10.0) -> list[str]:
        """Its ``count`` answered lines, once it has logged them: the agent
        logs after sending, so a fetch may return before its line is read."""
        end = time.monotonic() + seconds
        while len(self.answered()) < count and time.monotonic() < end:
            time.sleep(0.01)
        answered = self.answered()
        assert len(answered) == count, self.lines
        return answered

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=15)
        self._reader.join(timeout=5)
        return code


def agent_pid(sock: Path) -> int | None:
    """The pid of the agent listening at ``sock`` (SO_PEERCRED: the agent
    listens again when it starts, so the kernel names it, not the plugin
    that bound the socket), or None when none listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(str(sock))
        except OSError:
            return None
        pid: int = struct.unpack("3i", probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        return pid


def wait_gone(pid: int, seconds: float = 15) -> bool:
    """Whether ``pid`` ended within ``seconds`` (a zombie counts: its parent,
    the plugin that started it, has long exited or does not wait)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def stop_agent(sock: Path) -> None:
    """SIGTERM to the agent listening at ``sock``, if any, and wait for it."""
    pid = agent_pid(sock)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    wait_gone(pid)


def listening_on(process: AgentProcess) -> Path:
    """The socket the agent said it listens on."""
    line = process.wait_for("listening on=")
    return Path(line.split("on='", 1)[1].split("'", 1)[0])


@contextmanager
def moved_aside(process: AgentProcess) -> Iterator[None]:
    """The agent's socket directory writable by its group for a while: a
    fetch then trusts no socket in it, and runs in process."""
    directory = listening_on(process).parent
    mode = directory.stat().st_mode & 0o7777
    directory.chmod(mode | 0o020)
    try:
        yield
    finally:
        directory.chmod(mode)
