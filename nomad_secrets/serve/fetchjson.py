"""A bounded GET of a JSON document, for the services the doors ask
(GitHub's API, an OIDC issuer): no retries, no redirects, no proxy, TLS
verified, the answer cut at a size, and the whole exchange (connect, TLS,
headers, body) within one time bound.

The bound is the point: a socket's timeout is per read, so a server that
drips a byte every few seconds would never be cut off by it (issue 25: a
key server did that for a minute). Here a timer shuts the socket down when
the time is up, which ends whatever read is waiting on it. One connection
per GET: these calls are rare (a login, a key refresh), so keeping
connections warm saves nothing worth a pool.

Any transport failure is ``NoAnswer``, naming the URL and the error's
type only (never a header: they carry tokens)."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from nomad_secrets._version import __version__
from nomad_secrets.process.deadline import Deadline

CONNECT_TIMEOUT = 3.0


class NoAnswer(Exception):
    """No answer (or no complete one) from the URL. Not a store's
    ``errors.Unreachable``: the doors turn it into their own failure
    (``github.GitHubUnavailable``, ``oidc.IssuerUnavailable``)."""


class Fetcher:
    """GETs with TLS verified always; ``ca_cert`` adds trust (a GitHub
    Enterprise's CA). Safe to share between threads: it keeps nothing open."""

    def __init__(self, ca_cert: str | None = None) -> None:
        self._tls = ssl.create_default_context(cafile=ca_cert)

    def get(self, url: str, headers: dict[str, str], deadline: Deadline, max_bytes: int) -> tuple[int, Any]:
        """The status and the JSON body (None when it is not JSON or too
        large), all within what is left of ``deadline``."""
        seconds = deadline.call_timeout()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise NoAnswer(f"{url!r} is not an http(s) URL")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        timeout = min(CONNECT_TIMEOUT, seconds)
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=self._tls)
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        cutoff = _Cutoff(conn, seconds)
        try:
            conn.connect()
            cutoff.check()
            assert conn.sock is not None
            conn.sock.settimeout(seconds)  # each read; the cutoff bounds them all
            conn.request("GET", target, headers={"User-Agent": f"nomad-secrets/{__version__}", **headers})
            answer = conn.getresponse()
            body = answer.read(max_bytes + 1)
            cutoff.check()
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if cutoff.passed():
                raise NoAnswer(f"no complete answer from {url} within {deadline.seconds:g} s") from None
            raise NoAnswer(f"no answer from {url} ({type(exc).__name__})") from None
        finally:
            cutoff.cancel()
            conn.close()
        try:
            document = json.loads(body) if len(body) <= max_bytes else None
        except (ValueError, RecursionError):
            document = None
        return answer.status, document


class _Cutoff:
    """Shuts ``conn``'s socket down after ``seconds``: a read blocked on it
    returns at once (shutdown, not close: the descriptor stays valid for
    the thread that is using it)."""

    def __init__(self, conn: http.client.HTTPConnection, seconds: float) -> None:
        self.conn = conn
        self.ends = time.monotonic() + seconds
        self.fired = threading.Event()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired.set()
        sock = self.conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                # The plain socket's shutdown, also under TLS: SSLSocket's own
                # would drop its SSL object under the reading thread.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def check(self) -> None:
        """Raise when the time ran out before this point (the connect may
        have ended on its own timeout just as the timer fired)."""
        if self.fired.is_set():
            raise TimeoutError

    def passed(self) -> bool:
        """Whether the time ran out: the timer fired, or is about to. A read
        blocked for the whole time times out at the same instant as the
        timer, and either may be first: both are the one cut-off."""
        return self.fired.is_set() or time.monotonic() >= self.ends

    def cancel(self) -> None:
        self._timer.cancel()
