"""The HTTP application: Starlette routes to the doors, with the limits.

A request on a connection that came past its peer's share
(``server.max_connections_per_peer``, listen.py) is answered 429 with
``Retry-After`` and its connection closed, whatever it asks. Each request
to a door: the body is read up to ``server.max_body_bytes``
(413 past it) within the request's deadline (``server.request_seconds``,
408 past it); the door runs in a worker thread (its store reads block),
at most ``server.max_concurrent_reads`` at once; its answer is written
back, and one access log line is written. ``/healthz`` answers 200 while
the server accepts requests.

The access log: one JSON object per line on stdout, with the time, the
method and path, the status, the outcome, the milliseconds, the peer, and
who asked for what (repo, event, branch, reference and field; login;
workspace, repository, step): never a value, a token or a signature.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import IO, Protocol

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from nomad_secrets.process.deadline import Deadline
from nomad_secrets.serve.exchange import Incoming, LogValue, Outgoing, internal_error, text
from nomad_secrets.serve.listen import OVER_LIMIT_SECONDS
from nomad_secrets.serve.settings import ServerSettings
from nomad_secrets.serve.woodpecker import PREFIX as WOODPECKER_PREFIX

logger = logging.getLogger("nomad_secrets.serve")

RETRY_AFTER_SECONDS = 2  # a runner pool's burst is short; Retry-After only advises


class Door(Protocol):
    route: str
    methods: tuple[str, ...]

    def handle(self, request: Incoming) -> Outgoing: ...


class AccessLog:
    def __init__(self, stream: IO[str] | None) -> None:
        self.stream = stream

    def write(self, request: Request, answer: Outgoing, started: float) -> None:
        if self.stream is None:
            return
        entry: dict[str, LogValue] = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "method": request.method,
            "path": shown_path(request),
            "status": answer.status,
            "outcome": answer.outcome,
            "ms": round((time.monotonic() - started) * 1000, 1),
            "peer": request.client.host if request.client else None,
            **answer.log,
        }
        # ASCII JSON: any string a request carried (half a surrogate pair
        # too) is written escaped; a stream that fails costs the line, never
        # the answer, which the request's stores may already have read for.
        try:
            self.stream.write(json.dumps(entry) + "\n")
            self.stream.flush()
        except (OSError, ValueError) as exc:
            logger.error("cannot write the access log (%s); the request was answered", type(exc).__name__)


def build_app(
    doors: Sequence[Door],
    server: ServerSettings,
    on_shutdown: Callable[[], None],
    log_stream: IO[str] | None,
    over_limit: Callable[[tuple[str, int] | None], bool],
) -> ASGIApp:
    access_log = AccessLog(log_stream if server.access_log else None)
    # The doors block (store reads): they run in these threads, at most
    # max_concurrent_reads at once; other requests wait for one.
    workers = ThreadPoolExecutor(server.max_concurrent_reads, thread_name_prefix="door")

    def respond(request: Request, answer: Outgoing, started: float) -> Response:
        access_log.write(request, answer, started)
        return Response(
            answer.body, status_code=answer.status, headers=answer.headers, media_type=answer.content_type
        )

    def endpoint(door: Door) -> Callable[[Request], object]:
        async def serve(request: Request) -> Response:
            started = time.monotonic()
            cap = getattr(door, "max_seconds", None)  # a CI server that gives up sooner
            seconds = min(server.request_seconds, cap) if cap else server.request_seconds
            deadline = Deadline(seconds, start=started)
            body = await read_body(request, server.max_body_bytes, deadline)
            if isinstance(body, Outgoing):
                return respond(request, body, started)
            incoming = Incoming(
                method=request.method,
                target=_target(request),
                headers=tuple(
                    (k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]
                ),
                body=body,
                deadline=deadline,
                peer=request.client.host if request.client else "",
            )
            answer = await asyncio.get_running_loop().run_in_executor(workers, _handle, door, incoming)
            return respond(request, answer, started)

        return serve

    async def healthz(request: Request) -> Response:
        return respond(request, text(200, "ok", "ok"), time.monotonic())

    async def no_route(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        outcome = {404: "no-such-path", 405: "wrong-method"}.get(status, "error")
        answer = text(status, {404: "Not Found", 405: "Method Not Allowed"}.get(status, "Error"), outcome)
        if status == 405:
            answer.headers["Allow"] = ", ".join(_allowed(doors, shown_path(request)))
        return respond(request, answer, time.monotonic())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            workers.shutdown(wait=True)
            on_shutdown()

    routes = [Route("/healthz", healthz, methods=["GET"])]
    routes += [Route(door.route, endpoint(door), methods=list(door.methods)) for door in doors]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: no_route, 405: no_route})

    async def peer_share(scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] != "http" or not over_limit(tuple(client) if client else None):
            await app(scope, receive, send)
            return
        started = time.monotonic()
        request = Request(scope, receive)
        # Read the body first: a connection closed with a request unread
        # is reset, and the client would never see the answer. A runner
        # sends it at once; such a connection must not linger.
        seconds = min(server.request_seconds, OVER_LIMIT_SECONDS)
        await read_body(request, server.max_body_bytes, Deadline(seconds, start=started))
        answer = text(
            429,
            f"too many connections from {request.client.host if request.client else 'this address'}"
            f" (server.max_connections_per_peer = {server.max_connections_per_peer}); try again",
            "over-peer-limit",
        )
        answer.headers.update({"Retry-After": str(RETRY_AFTER_SECONDS), "Connection": "close"})
        await respond(request, answer, started)(scope, receive, send)

    return peer_share


async def read_body(request: Request, limit: int, deadline: Deadline) -> bytes | Outgoing:
    """The body, or the answer that refuses it (too large, too slow)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        return text(413, f"the body is larger than this server's limit of {limit} bytes", "too-large")
    chunks: list[bytes] = []
    size = 0
    try:
        with anyio.fail_after(max(deadline.remaining(), 0.001)):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    return text(
                        413, f"the body is larger than this server's limit of {limit} bytes", "too-large"
                    )
                chunks.append(chunk)
    except TimeoutError:
        return text(408, "the body did not arrive within the request's deadline", "too-slow")
    except ClientDisconnect:
        return text(400, "the client went away", "client-gone")
    return b"".join(chunks)


def _handle(door: Door, request: Incoming) -> Outgoing:
    """The door's answer; an exception it did not expect is a 500, logged
    by type and place, never by its text (which could quote a value)."""
    try:
        return door.handle(request)
    except Exception as exc:  # noqa: BLE001 - the client gets an answer, the log the frames
        frames = "; ".join(
            f"{f.filename}:{f.lineno} {f.name}" for f in traceback.extract_tb(exc.__traceback__)
        )
        logger.error("internal error %s in %s at %s", type(exc).__name__, door.route, frames)
        return internal_error(exc)


def _target(request: Request) -> str:
    path = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string") or b""
    return (path + (b"?" + query if query else b"")).decode("latin-1")


def shown_path(request: Request) -> str:
    """The path for the log: the route's pattern where it has parameters
    (the Woodpecker door's endpoint token), never their values."""
    route = request.scope.get("route")
    pattern = getattr(route, "path", None)
    if request.path_params and isinstance(pattern, str):
        return pattern
    if request.url.path.startswith(WOODPECKER_PREFIX):  # answered before routing (429): no route yet
        return WOODPECKER_PREFIX + "{token}"
    return request.url.path


def _allowed(doors: Sequence[Door], path: str) -> list[str]:
    if path == "/healthz":
        return ["GET", "HEAD"]
    return [method for door in doors if door.route == path for method in door.methods]
