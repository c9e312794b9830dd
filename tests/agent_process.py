"""The node agent as an operator (or systemd) starts it: ``<plugin> agent``,
its log lines as they come, and a socket path short enough for a unix
socket. Shared by the agent's tests (tests/test_agent.py, AWS, and
tests/test_agent_vault.py, the real OpenBao server)."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class AgentProcess:
    """``<plugin> agent``, started as an operator (or systemd) would."""

    def __init__(self, executable: Path, *args: str, node: Callable[[], None] | None = None) -> None:
        """``node``: run in the child before the exec (tests/nomad.py limited)."""
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

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=15)
        self._reader.join(timeout=5)
        return code


@contextmanager
def socket_path() -> Iterator[Path]:
    """A fresh path for the agent's socket: a unix socket path must stay
    short (108 bytes), and pytest's tmp_path may not be."""
    top = Path("/tmp") / f"ns-agent-{uuid.uuid4().hex[:8]}"
    top.mkdir(mode=0o755)
    try:
        yield top / "agent.sock"
    finally:
        for child in top.iterdir():
            child.unlink()
        top.rmdir()
