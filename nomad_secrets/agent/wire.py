"""The agent's framing, shared by both sides (standard library only).

Request: ``MAGIC``, a 4-byte big-endian length, a JSON object
``{"executable", "path", "environ", "seconds"}``. The agent answers ``ACK``
as soon as it has the request (proof of life, within ``ACK_SECONDS``), then
a 4-byte length and the answer: the exact bytes the plugin prints for Nomad.
"""

from __future__ import annotations

import socket
import struct

MAGIC = b"NSA1"
ACK = b"+"
# Connect, send and be acknowledged: generous, because a plugin that gives
# up runs a whole fetch in process, which is what a node under a burst of
# task starts can least afford; an agent that is gone refuses at once.
ACK_SECONDS = 2.0
MAX_REQUEST = 256 * 1024  # a path is at most 16 KiB, a workload token 16 KiB
ANSWER_SLACK = 64 * 1024  # above max_output_bytes: the error object and the JSON around the values
_LENGTH = struct.Struct(">I")
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class WireError(Exception):
    """The other side broke the framing, went away, or was too slow."""


def frame(payload: bytes, magic: bytes = b"") -> bytes:
    return magic + _LENGTH.pack(len(payload)) + payload


def read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 16))
        if not chunk:
            raise WireError("the other side closed the connection")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket, limit: int, magic: bytes = b"") -> bytes:
    if magic and read_exactly(sock, len(magic)) != magic:
        raise WireError("not the agent's framing")
    (size,) = _LENGTH.unpack(read_exactly(sock, _LENGTH.size))
    if size > limit:
        raise WireError(f"a frame of {size} bytes, above the limit of {limit}")
    return read_exactly(sock, size)


def build_name() -> str:
    """This code's build: where its package is imported from, which is
    ``<cache>/<build id>-<python tag>/lib`` for the executable (the source
    tree, otherwise)."""
    import os

    import nomad_secrets

    # realpath: the executable imports through /proc/self/fd/N (cache.import_path).
    return os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(nomad_secrets.__file__))))


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a unix socket, as the
    kernel recorded it at connect (or listen) time."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    return int(_PEERCRED.unpack(raw)[1])
