"""``nomad-secrets serve``: the process.

    nomad-secrets serve [--config PATH] [--nomad-task] [--check]

Reads the config (``/etc/nomad-secrets/config.toml`` unless ``--config``)
and the files it names, each held to the trust rules; ``--nomad-task``
checks the files but not the directories above them, for a server that
runs as a Nomad task (Nomad makes a task's directories 0777; the task's
isolation guards them). ``--check`` stops there and says what would be
served.

What is allowed but risky (plain HTTP off loopback) is a warning on
stderr, with ``--check`` too.

Then it binds ``server.listen`` (listen.py) before it says it serves, and
uvicorn serves the app (app.py) there, with TLS from
``server.tls_cert``/``tls_key``, HTTP/1.1 with a deadline on headers
(http11.py), at most ``server.max_connections_per_peer`` connections from
one peer served (429 past that for a few, listen.py) and
``server.max_connections`` in all (503 past that). SIGTERM (and SIGINT) stop it gracefully: it stops
accepting, closes idle connections, lets in-flight requests finish for up
to ``server.shutdown_seconds``, then exits 0. Errors go to stderr, the
access log to stdout, one JSON line per request.

Exit status (docs/ci.md): 0 stopped (SIGTERM, SIGINT), 2 the config, its
files or the server extra, 3 cannot listen on ``server.listen``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import signal
import sys
from types import FrameType

from nomad_secrets.core.config import SYSTEM_CONFIG
from nomad_secrets.process.errors import PluginError
from nomad_secrets.serve import settings as settings_module
from nomad_secrets.serve.settings import Keys, Settings

NEEDS = ("starlette", "uvicorn", "jwt", "cryptography")
STOPPED, BAD_CONFIG, CANNOT_LISTEN = 0, 2, 3


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nomad-secrets serve",
        description=(
            "Serve Drone's secret and admission extensions, Bitbucket's secrets provider and"
            " Woodpecker's secret extension."
        ),
    )
    parser.add_argument("--config", default=SYSTEM_CONFIG, help="the config file (default %(default)s)")
    parser.add_argument(
        "--nomad-task",
        action="store_true",
        help="the files are in this Nomad task's directories: check the files, not the directories above",
    )
    parser.add_argument("--check", action="store_true", help="check the config and its files, then exit")
    args = parser.parse_args(argv)
    missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"nomad-secrets serve needs {', '.join(missing)}: install nomad-secrets with the server"
            " extra from the release's wheel or a source checkout, e.g."
            " pip install './nomad-secrets[server]' (docs/ci.md; it is not on PyPI)",
            file=sys.stderr,
        )
        return BAD_CONFIG
    try:
        settings, keys = settings_module.load(args.config, nomad_task=args.nomad_task)
    except PluginError as exc:
        print(f"nomad-secrets serve: {exc.message}", file=sys.stderr)
        return BAD_CONFIG
    for warning in settings_module.warnings(settings):
        print(f"nomad-secrets serve: warning: {warning}", file=sys.stderr)
    if args.check:
        print(f"{args.config}: would serve {', '.join(_routes(settings))} on {_url(settings)}")
        return 0
    return run(settings, keys)


def run(settings: Settings, keys: Keys) -> int:
    import uvicorn

    from nomad_secrets.serve.app import Door, build_app
    from nomad_secrets.serve.bitbucket import Bitbucket
    from nomad_secrets.serve.drone_admission import DroneAdmission
    from nomad_secrets.serve.drone_secret import DroneSecret
    from nomad_secrets.serve.http11 import with_header_deadline
    from nomad_secrets.serve.listen import CannotListen, Peers, bind
    from nomad_secrets.serve.stores import ServerStores
    from nomad_secrets.serve.woodpecker import Woodpecker

    server = settings.server
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        peers = Peers(server.max_connections_per_peer, server.header_seconds)
        sockets = bind(server.host, server.port, peers)
    except CannotListen as exc:
        print(f"nomad-secrets serve: {exc}", file=sys.stderr)
        return CANNOT_LISTEN
    try:
        pool = ServerStores(
            settings.config, server.request_seconds, server.store
        )  # the main thread: botocore
    except PluginError as exc:
        for sock in sockets:
            sock.close()
        print(f"nomad-secrets serve: {exc.message}", file=sys.stderr)
        return BAD_CONFIG
    for problem in pool.problems():
        print(f"nomad-secrets serve: warning: {problem}", file=sys.stderr)
    doors: list[Door] = []
    if settings.drone is not None:
        doors.append(DroneSecret(settings, keys, pool))
    if settings.admission is not None:
        doors.append(DroneAdmission(settings, keys))
    if settings.bitbucket is not None:
        doors.append(Bitbucket(settings, pool))
    if settings.woodpecker is not None:
        doors.append(Woodpecker(settings, keys, pool))

    app = build_app(doors, server, pool.close, sys.stdout, peers.over_limit)
    config = uvicorn.Config(
        app,
        ssl_certfile=server.tls_cert,
        ssl_keyfile=server.tls_key,
        http=with_header_deadline(server.header_seconds, peers.heard),
        lifespan="on",
        log_config=None,
        access_log=False,  # app.py writes its own, without values
        timeout_graceful_shutdown=round(server.shutdown_seconds),
        limit_concurrency=server.max_connections,
        timeout_keep_alive=5,
        server_header=False,
        proxy_headers=False,
        loop="asyncio",
    )
    uvicorn_server = uvicorn.Server(config)

    def stop(signum: int, frame: FrameType | None) -> None:
        uvicorn_server.should_exit = True

    # uvicorn takes SIGTERM and SIGINT while it serves and, once stopped,
    # raises the signal again with the handler it found: ours, so that a
    # graceful stop ends with status 0 and a signal before it serves stops it.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)

    def hangup(signum: int, frame: FrameType | None) -> None:
        # SIGHUP's default ended the server mid-request, saying nothing; an
        # operator sends it after replacing a key file: stop as for SIGTERM.
        print(
            "nomad-secrets serve: SIGHUP: stopping as for SIGTERM (requests in flight finish); start it"
            " again to read changed files",
            file=sys.stderr,
            flush=True,
        )
        uvicorn_server.should_exit = True

    signal.signal(signal.SIGHUP, hangup)
    print(
        f"nomad-secrets serve: {', '.join(_routes(settings))} on {_url(settings)}",
        file=sys.stderr,
        flush=True,
    )
    uvicorn_server.run(sockets=sockets)
    return STOPPED if uvicorn_server.started else 1


def _routes(settings: Settings) -> list[str]:
    names = {
        "drone": "/drone/secret",
        "admission": "/drone/admission",
        "bitbucket": "/bitbucket/secrets",
        "woodpecker": "/woodpecker/secrets/<woodpecker.endpoint_token_file's token>",
    }
    return [route for key, route in names.items() if getattr(settings, key) is not None] + ["/healthz"]


def _url(settings: Settings) -> str:
    scheme = "http" if settings.server.plain_http else "https"
    return f"{scheme}://{settings.server.listen}"
