"""The plugin's side of the node agent: forward a fetch, or say why not.

Standard library only, so that a forwarded fetch never imports botocore.
Every failure returns a reason instead of an answer, and the plugin then
fetches in process: a missing socket, one that fails the trust rules, an
agent not running as root (or as us), no acknowledgement within
``ACK_SECONDS``, no answer within the time it was given (the caller keeps
the rest of its deadline for the fetch in process), a broken or malformed
answer.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass

from nomad_secrets.agent import wire
from nomad_secrets.trust import untrusted_socket


@dataclass(frozen=True)
class Forwarded:
    answer: bytes | None  # what to print for Nomad, or None: fetch in process
    reason: str = ""  # why there is no answer, for the operator's debug log


def forward(
    socket_path: str, executable: str, path: str, environ: dict[str, str], seconds: float, limit: int
) -> Forwarded:
    """Ask the agent at ``socket_path`` to fetch ``path``; wait at most
    ``seconds`` for its answer, which may be at most ``limit`` bytes."""
    request = json.dumps(
        {
            "executable": executable,
            "path": path,
            "environ": environ,
            "seconds": seconds,
            "build": wire.build_name(),  # an agent of another build says no: fetch in process
        }
    ).encode("utf-8", "surrogateescape")
    try:
        connected = connect(socket_path)
        if isinstance(connected, str):
            return Forwarded(None, connected)
        with connected as sock:
            sock.sendall(wire.frame(request, wire.MAGIC))
            if wire.read_exactly(sock, len(wire.ACK)) != wire.ACK:
                return Forwarded(None, "the agent refused the request")
            sock.settimeout(max(seconds, 0.01))
            try:
                answer = wire.read_frame(sock, limit + wire.ANSWER_SLACK)
            except TimeoutError:
                return Forwarded(None, f"the agent did not answer within {seconds:.1f} s")
    except (OSError, wire.WireError) as exc:
        return Forwarded(None, f"the agent at {socket_path}: {exc}")
    problem = _not_an_answer(answer)
    if problem:
        return Forwarded(None, f"the agent's answer {problem}")
    return Forwarded(answer)


def connect(socket_path: str) -> socket.socket | str:
    """A connection to the agent, or why there is none: the socket fails
    the trust rules, nobody listens, or the agent is not root's (or ours).
    ``check`` asks the same."""
    problem = untrusted_socket(socket_path, "agent socket")
    if problem:
        return problem
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(wire.ACK_SECONDS)
        sock.connect(socket_path)
        uid = wire.peer_uid(sock)
    except OSError as exc:
        sock.close()
        return f"no agent answers at {socket_path} ({exc.strerror or exc})"
    if uid not in (0, os.geteuid()):
        sock.close()
        return f"the agent at {socket_path} runs as uid {uid}, not root"
    return sock


def _not_an_answer(answer: bytes) -> str | None:
    """Nomad's contract, checked again: one JSON object, every result value
    a string, an error a string if present."""
    try:
        decoded = json.loads(answer)
    except ValueError:
        return "is not JSON"
    if not isinstance(decoded, dict) or not isinstance(decoded.get("result"), dict):
        return "is not a fetch answer"
    if not all(isinstance(v, str) for v in decoded["result"].values()):
        return "has a value that is not a string"
    if "error" in decoded and not isinstance(decoded["error"], str):
        return "has an error that is not a string"
    return None
