"""The listening sockets: bound before the server says it serves, and
sharing the connections out per peer.

``bind`` binds ``server.listen`` (every address the host name gives, as
asyncio's ``create_server`` would) before anything is announced, so that a
port in use, a port below 1024 without the right, or an address this host
does not have is one clear line and exit status 3 (main.py), not a
"serving on" line followed by a failure.

Each socket's ``accept`` counts the connections open from each peer (an
address; an IPv6 address's /64, which one host may hold whole), from
accept to close, whatever they do (TLS handshake or not, request or not).
Up to ``server.max_connections_per_peer`` are served. Past it,
``OVER_LIMIT_CONNECTIONS`` more at a time are let in only to be answered
429 with ``Retry-After`` on their first request and closed (app.py asks
``Peers.over_limit``): CI runners behind one NAT address share the limit,
and a runner told "too many" can say so, where a reset connection says
nothing (issue 25). Such a connection must have sent its request's
headers (after its TLS handshake) within ``OVER_LIMIT_SECONDS``, else it
is shut. Past those, a new connection is closed at once, before it costs
a TLS handshake or a slot of ``server.max_connections``. So a peer holds
at most its share and a few idle connections, and a share is at most a
quarter of ``server.max_connections`` (settings.py): two peers cannot hold
every slot, as they could when as many again waited up to
``header_seconds`` for their 429 (hostile review of issue 25).
uvicorn serves on these sockets with asyncio's own event loop, which calls
``accept`` on the socket it is given (tests/test_server_peers.py proves it
against the running server, so a change of that fails there).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import time
from typing import Any

logger = logging.getLogger("nomad_secrets.serve")

REFUSALS_PER_ACCEPT = 64  # then back to the event loop, which calls again
SAY_EVERY_SECONDS = 60.0  # one log line for the refusals of a minute
SWEEP_AT = 1024  # peers (or marked connections) before the closed ones are forgotten
OVER_LIMIT_CONNECTIONS = 4  # per peer past its share, at a time: each is answered 429, then closed
OVER_LIMIT_SECONDS = 1.0  # for those to send their request's headers: a runner sends at once

Address = tuple[str, int]


class CannotListen(Exception):
    """The address cannot be listened on; the message says why and what to do."""


class _Notice:
    """A warning said at most once a minute, with the count since the last."""

    def __init__(self, first: str, again: str) -> None:
        self.first, self.again = first, again
        self._count = 0
        self._said_at = float("-inf")

    def note(self, peer: str, limit: int) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._said_at < SAY_EVERY_SECONDS:
            return
        text = self.first if self._said_at == float("-inf") else self.again
        logger.warning(text.format(peer=peer, limit=limit, count=self._count))
        self._said_at, self._count = now, 0


class Peers:
    """The connections open from each peer, for every listening socket of
    the server. Only the event loop's thread uses it."""

    def __init__(self, limit: int, header_seconds: float) -> None:
        self.limit = limit
        self.over_seconds = min(OVER_LIMIT_SECONDS, header_seconds)
        self._open: dict[str, list[socket.socket]] = {}  # served, by peer_group
        self._over: dict[str, list[socket.socket]] = {}  # past the limit: 429, then closed
        self._marked: dict[Address, socket.socket] = {}  # the latter, by the address uvicorn sees
        self._heard: set[Address] = set()  # marked ones whose request's headers have arrived
        self._sweep_at = SWEEP_AT
        self._answered = _Notice(
            "answering 429 to new connections from {peer}, which has {limit} open"
            " (server.max_connections_per_peer); such answers are counted and said at most once a minute",
            "answered 429 to {count} connection(s) past server.max_connections_per_peer ({limit}) since"
            " the last such line, the latest from {peer}",
        )
        self._refused = _Notice(
            "closed a connection from {peer} at once: it has server.max_connections_per_peer ({limit})"
            f" open, and {OVER_LIMIT_CONNECTIONS} more being told 429; more are counted and said at"
            " most once a minute",
            "closed {count} connection(s) at once past server.max_connections_per_peer ({limit})"
            f" and {OVER_LIMIT_CONNECTIONS} more since the last such line, the latest from {{peer}}",
        )

    def admit(self, conn: socket.socket, address: Address) -> bool:
        """Whether to keep ``conn`` (served, or marked for a 429); False:
        close it now. Called by the event loop (asyncio's accept)."""
        peer = peer_group(address[0])
        held = _live(self._open.get(peer, ()))
        self._open[peer] = held
        if len(held) < self.limit:
            held.append(conn)
            self._marked.pop(address, None)  # the address of a closed marked one, reused
            self._sweep()
            return True
        over = _live(self._over.get(peer, ()))
        self._over[peer] = over
        if len(over) < OVER_LIMIT_CONNECTIONS:
            over.append(conn)
            self._marked[address] = conn
            self._heard.discard(address)
            asyncio.get_running_loop().call_later(self.over_seconds, self._shut_if_silent, conn, address)
            self._answered.note(peer, self.limit)
            self._sweep()
            return True
        self._refused.note(peer, self.limit)
        return False

    def over_limit(self, address: Address | None) -> bool:
        """Whether the connection from ``address`` came past its peer's limit."""
        conn = self._marked.get(address) if address is not None else None
        return conn is not None and conn.fileno() != -1

    def heard(self, address: Address | None) -> None:
        """The headers of a request on the connection from ``address`` have
        arrived (http11.py, in the event loop's thread, so before any timer
        due at the same turn)."""
        if address is not None and address in self._marked:
            self._heard.add(address)

    def _shut_if_silent(self, conn: socket.socket, address: Address) -> None:
        """A connection past the limit that has not sent its request in time
        (its TLS handshake included) is shut; asyncio then closes it, as it
        would on a client that hung up."""
        heard = address in self._heard
        self._heard.discard(address)
        if heard or conn.fileno() == -1 or self._marked.get(address) is not conn:
            return
        with contextlib.suppress(OSError):  # gone meanwhile
            conn.shutdown(socket.SHUT_RDWR)

    def _sweep(self) -> None:
        if len(self._open) + len(self._over) + len(self._marked) <= self._sweep_at:
            return
        self._open = {p: o for p, o in self._open.items() if _live(o)}
        self._over = {p: o for p, o in self._over.items() if _live(o)}
        self._marked = {a: c for a, c in self._marked.items() if c.fileno() != -1}
        self._heard &= set(self._marked)
        self._sweep_at = max(SWEEP_AT, 2 * (len(self._open) + len(self._over) + len(self._marked)))


def peer_group(address: str) -> str:
    """Who counts as one peer: an IPv4 address, or an IPv6 address's /64
    (one host may hold a whole /64)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _live(conns: Any) -> list[socket.socket]:
    # asyncio closes each accepted socket when its connection ends: a
    # closed one has fileno -1 and no longer counts.
    return [c for c in conns if c.fileno() != -1]


class PeerLimitedSocket(socket.socket):
    """A listening socket whose ``accept`` keeps each peer to its share."""

    peers: Peers

    def accept(self) -> tuple[socket.socket, Any]:
        for _ in range(REFUSALS_PER_ACCEPT):
            conn, address = super().accept()
            if self.peers.admit(conn, (str(address[0]), int(address[1]))):
                return conn, address
            conn.close()
        # asyncio reads this as "nothing more for now" and calls again on
        # its next turn, so that a flood of refusals cannot hold the loop.
        raise ConnectionAbortedError


def bind(host: str, port: int, peers: Peers) -> list[socket.socket]:
    """Sockets bound to every address of ``host`` on ``port`` (not yet
    listening: asyncio calls ``listen``), sharing ``peers``."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        why = f"{host} does not resolve ({exc.strerror})"
        raise CannotListen(f"cannot listen on {_where(host, port)}: {why}") from None
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
