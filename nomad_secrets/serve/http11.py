"""uvicorn's HTTP/1.1 protocol (h11) with a deadline on request headers.

uvicorn bounds a request's header size (h11: 16 KiB) and the idle time
between requests (keep-alive), but not how long a client may take to send
its headers: a client that trickles one byte at a time would hold its
connection for ever. Here the headers of each request must be complete
within ``header_seconds`` of its first byte (or of the connection's
opening); else the connection is closed. The body's time is the app's
(app.py reads it within the request's deadline).

When a request's headers are complete it tells ``heard`` (listen.py's
``Peers.heard``: a connection past its peer's share must get that far
within a second).

It leans on three attributes of uvicorn's H11Protocol (``cycle`` and its
``response_complete``, and ``client``); tests/test_server_lifecycle.py and
tests/test_server_peers.py prove the deadlines against the running
server, so an upgrade that breaks them fails there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from uvicorn.protocols.http.h11_impl import H11Protocol


def _nobody(address: tuple[str, int] | None) -> None:
    pass


class HeaderDeadlineProtocol(H11Protocol):
    header_seconds = 10.0
    heard: Callable[[tuple[str, int] | None], None] = staticmethod(_nobody)
    _timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._between_requests():
            if self._timer is None:
                self._arm()  # the first bytes of the next request
        elif self._timer is not None:
            self._timer.cancel()  # its headers are complete
            self._timer = None
            self.heard(self.client)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._timer = self.loop.call_later(self.header_seconds, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self._between_requests() and not self.transport.is_closing():
            self.transport.close()


def with_header_deadline(
    seconds: float, heard: Callable[[tuple[str, int] | None], None]
) -> type[HeaderDeadlineProtocol]:
    attributes = {"header_seconds": seconds, "heard": staticmethod(heard)}
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), attributes)
