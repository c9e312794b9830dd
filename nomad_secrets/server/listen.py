"""The listening sockets: bound before the server says it serves, and
sharing the connections out per peer.

``bind`` binds ``server.listen`` (every address the host name gives, as
asyncio's ``create_server`` would) before anything is announced, so that a
port in use, a port below 1024 without the right, or an address this host
does not have is one clear line and exit status 3 (main.py), not a
"serving on" line followed by a failure.

Each socket's ``accept`` counts the connections open from each peer
address, from accept to close, whatever they do (TLS handshake or not,
request or not): past ``server.max_connections_per_peer`` it closes the new
one at once, before it costs a TLS handshake or a slot of
``server.max_connections``. So one address cannot hold every slot with
idle connections and keep the CI runners at 503. uvicorn serves on these
sockets with asyncio's own event loop, which calls ``accept`` on the socket
it is given (tests/test_server_peers.py proves it against the running
server, so a change of that fails there).
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from typing import Any

logger = logging.getLogger("nomad_secrets.server")

REFUSALS_PER_ACCEPT = 64  # then back to the event loop, which calls again
SAY_EVERY_SECONDS = 60.0  # one log line for the refusals of a minute


class CannotListen(Exception):
    """The address cannot be listened on; the message says why and what to do."""


class Peers:
    """The connections open from each peer address, for every listening
    socket of the server. Only the event loop's thread uses it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, list[socket.socket]] = {}
        self._sweep_at = 1024
        self._refused = 0
        self._said_at = float("-inf")

    def admit(self, conn: socket.socket, peer: str) -> bool:
        # asyncio closes each accepted socket when its connection ends: a
        # closed one has fileno -1 and no longer counts.
        held = [c for c in self._open.get(peer, ()) if c.fileno() != -1]
        if len(held) >= self.limit:
            self._open[peer] = held
            self._refuse(peer)
            return False
        held.append(conn)
        self._open[peer] = held
        if len(self._open) > self._sweep_at:  # peers long gone
            self._open = {p: o for p, o in self._open.items() if any(c.fileno() != -1 for c in o)}
            self._sweep_at = max(1024, 2 * len(self._open))
        return True

    def _refuse(self, peer: str) -> None:
        """Say it, at most once a minute: each refusal costs the peer a
        connection, and must not cost a log line."""
        self._refused += 1
        now = time.monotonic()
        if now - self._said_at < SAY_EVERY_SECONDS:
            return
        if self._said_at == float("-inf"):
            logger.warning(
                "refused a connection from %s, which has %d open (server.max_connections_per_peer);"
                " more refusals are counted and said at most once a minute",
                peer,
                self.limit,
            )
        else:
            logger.warning(
                "refused %d connection(s) past server.max_connections_per_peer (%d) since the last"
                " such line, the latest from %s",
                self._refused,
                self.limit,
                peer,
            )
        self._said_at, self._refused = now, 0


class PeerLimitedSocket(socket.socket):
    """A listening socket whose ``accept`` keeps each peer to its share."""

    peers: Peers

    def accept(self) -> tuple[socket.socket, Any]:
        for _ in range(REFUSALS_PER_ACCEPT):
            conn, address = super().accept()
            if self.peers.admit(conn, str(address[0])):
                return conn, address
            conn.close()
        # asyncio reads this as "nothing more for now" and calls again on
        # its next turn, so that a flood of refusals cannot hold the loop.
        raise ConnectionAbortedError


def bind(host: str, port: int, max_per_peer: int) -> list[socket.socket]:
    """Sockets bound to every address of ``host`` on ``port`` (not yet
    listening: asyncio calls ``listen``)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        why = f"{host} does not resolve ({exc.strerror})"
        raise CannotListen(f"cannot listen on {_where(host, port)}: {why}") from None
    peers = Peers(max_per_peer)
    sockets: list[PeerLimitedSocket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = PeerLimitedSocket(family, kind, proto)
            sockets.append(sock)
            sock.peers = peers
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio binds [::]: IPv6 only
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                why = _why(exc, host, port)
                raise CannotListen(f"cannot listen on {_where(host, port)}: {why}") from None
    except BaseException:
        for opened in sockets:
            opened.close()
        raise
    return list(sockets)


def _why(exc: OSError, host: str, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"the address is in use (another process listens on port {port}: ss -ltnp 'sport = :{port}'"
            " names it); stop it, or set another port in server.listen"
        )
    if exc.errno == errno.EACCES:
        return "permission denied: a port below 1024 needs root or CAP_NET_BIND_SERVICE"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this host; use one of its addresses, or 0.0.0.0"
    return exc.strerror or type(exc).__name__


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
