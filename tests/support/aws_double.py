"""An endpoint that is not AWS, on 127.0.0.1. A TEST DOUBLE.

Everything AWS answers is tested against moto's server, which always answers
like AWS. This stands where aws.endpoint_url points and answers what AWS
never does, and only that (a wrong endpoint, a proxy's page, a hostile or
broken server):

- ``body`` with ``status``: a success of the wrong shape, a binary page, a 5xx;
- ``body=None``: the connection closed without a word (HTTP spoken to a TLS
  port, a proxy dropping the request);
- ``stream=N``: ``body`` then N bytes of JSON whitespace, framed by
  ``framing``: "length" (a Content-Length, ``length`` if given: it may lie),
  "chunked", or "close" (neither: the end is the close).

It counts the connections it accepted (``connections``: one per attempt)
and the bytes it sent (``sent``), so a test sees where the reader stopped.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType

PIECE = 1024 * 1024


class NotAws:
    def __init__(
        self,
        body: bytes | None,
        status: int = 200,
        *,
        stream: int = 0,
        framing: str = "length",
        length: int | None = None,
    ) -> None:
        self.body, self.status, self.stream, self.framing = body, status, stream, framing
        self.length = len(body or b"") + stream if length is None else length
        self.sent = self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                if self.body is None:
                    return
                framing = {
                    "length": f"Content-Length: {self.length}\r\n",
                    "chunked": "Transfer-Encoding: chunked\r\n",
                    "close": "",
                }[self.framing]
                head = f"HTTP/1.1 {self.status} X\r\nContent-Type: application/x-amz-json-1.1\r\n{framing}"
                self._send(conn, f"{head}Connection: close\r\n\r\n".encode())
                self._piece(conn, self.body)
                left = self.stream
                while left > 0:
                    self._piece(conn, b" " * min(PIECE, left))
                    left -= PIECE
                if self.framing == "chunked":
                    self._send(conn, b"0\r\n\r\n")
            except OSError:
                pass  # the reader stopped reading: what an oversized answer is for

    def _piece(self, conn: socket.socket, data: bytes) -> None:
        if self.framing == "chunked" and data:
            data = b"%x\r\n" % len(data) + data + b"\r\n"
        self._send(conn, data)

    def _send(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        self.sent += len(data)

    def __enter__(self) -> NotAws:
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.sock.close()
