"""The audit trail: one record per fetch, to the node's syslog and/or a file.

A record says who asked (provider, Nomad namespace and job), for what (the
references as the job wrote them, never a value), how it ended (outcome and
error kind) and how long it took. The operator chooses where it goes
(``[audit]``): the node's syslog socket, so that journald (``journalctl -t
nomad-secrets``) or rsyslog keeps it with everything else, and/or a
JSON-lines file held to the trust rules (trust.open_append).

Neither may delay or fail a fetch: the record is written after the answer
(observe.py), the syslog datagram is sent without blocking (a missing
socket, or a syslog daemon too busy to read, loses the record, never the
answer), the file's line is appended in one write or not at all
(nodefile.append: a full disk leaves no half line), and a file that fails
the trust rules is skipped (``check`` says why). A record lost is counted
in the metrics (``write_errors``). Standard library only.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping

from nomad_secrets.core.config import SYSLOG_FACILITIES, AuditSettings
from nomad_secrets.process import nodefile
from nomad_secrets.process.trust import Untrusted, open_append

TAG = "nomad-secrets"
# Syslog daemons keep messages up to a size (rsyslog: 8 KiB by default);
# past it the record keeps the first references and counts the rest.
MAX_SYSLOG_BYTES = 8 * 1024
_INFO, _WARNING = 6, 4
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def record(
    *,
    provider: str,
    namespace: str | None,
    job: str | None,
    references: list[str],
    stores: list[str],
    error_kind: str | None,
    seconds: float,
) -> dict[str, object]:
    """One fetch, as the audit trail keeps it: names and numbers only."""
    now = time.time()
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z",
        "event": "fetch",
        "provider": provider,
        "namespace": namespace,
        "job": job,
        "references": references,
        "stores": stores,
        "outcome": "ok" if error_kind is None else "error",
        "error_kind": error_kind,
        "duration_ms": round(seconds * 1000, 1),
        "pid": os.getpid(),
    }


def send(settings: AuditSettings, entry: Mapping[str, object]) -> list[tuple[str, str]]:
    """Write ``entry`` where the operator said; where it could not be
    (``syslog``, ``audit-file``) and why, for the metrics and the debug log
    (never raised: the fetch's answer came first)."""
    problems = []
    if settings.syslog:
        problem = to_syslog(settings.syslog_socket, settings.syslog_facility, entry)
        if problem:
            problems.append(("syslog", problem))
    if settings.file:
        problem = to_file(settings.file, entry)
        if problem:
            problems.append(("audit-file", problem))
    return problems


def to_syslog(path: str, facility: str, entry: Mapping[str, object]) -> str | None:
    """One datagram in syslog(3)'s own format, ``<PRI>TIMESTAMP TAG[PID]:
    MSG``, which journald and rsyslog parse (journald sets
    SYSLOG_IDENTIFIER from TAG). Non-blocking: a full socket buffer is
    EAGAIN at once, never a wait."""
    severity = _INFO if entry.get("outcome") == "ok" else _WARNING
    head = f"<{SYSLOG_FACILITIES[facility] * 8 + severity}>{_rfc3164_time()} {TAG}[{os.getpid()}]: "
    data = (head + _fitting(entry, MAX_SYSLOG_BYTES - len(head))).encode("utf-8", "backslashreplace")
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    except OSError as exc:
        return f"no syslog socket: {exc.strerror}"
    try:
        sock.sendto(data, path)
    except OSError as exc:  # ENOENT, ECONNREFUSED, EAGAIN (the reader is behind), ...
        return f"audit record not sent to {path}: {exc.strerror}"
    finally:
        sock.close()
    return None


def to_file(path: str, entry: Mapping[str, object]) -> str | None:
    """Append one JSON line, in one write or not at all (lines from
    concurrent fetches do not interleave on a local file system)."""
    try:
        fd = open_append(path, "audit file")
    except Untrusted as exc:
        return str(exc)
    try:
        problem = nodefile.append(fd, (json.dumps(entry, ensure_ascii=True) + "\n").encode())
    finally:
        os.close(fd)
    return f"cannot write the audit file {path}: {problem}" if problem else None


def _fitting(entry: Mapping[str, object], limit: int) -> str:
    text = json.dumps(entry, ensure_ascii=True)
    references = list(entry.get("references") or [])  # type: ignore[call-overload]
    kept = len(references)
    while len(text) > limit and kept > 0:
        kept //= 2
        cut = {**entry, "references": references[:kept], "references_omitted": len(references) - kept}
        text = json.dumps(cut, ensure_ascii=True)
    return text


def _rfc3164_time() -> str:
    """``Nov 23 12:04:05``: syslog(3)'s local time stamp."""
    now = time.localtime()
    return f"{_MONTHS[now.tm_mon - 1]} {now.tm_mday:2d} {now.tm_hour:02d}:{now.tm_min:02d}:{now.tm_sec:02d}"
