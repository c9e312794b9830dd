"""Which build this code is, and where its agents' sockets are: what the
agent and ``check`` compare with what a fetch's bootstrap reads from the
zip (its ``build-info``). Cheap to import: ``check`` must not load the
fetch path (a damaged file there is for it to name, not to trip on)."""

from __future__ import annotations

import os

from nomad_secrets.agent import client


def build_id() -> str:
    """This code's build: the id in its unpack directory's name,
    ``<cache>/<build id>-<python tag>/lib`` (the source tree's own name
    otherwise)."""
    import nomad_secrets

    lib = os.path.dirname(os.path.dirname(os.path.abspath(nomad_secrets.__file__)))
    # realpath: the executable imports through /proc/self/fd/N (cache.import_path).
    return os.path.basename(os.path.realpath(os.path.dirname(lib))).split("-", 1)[0]


def socket_dir() -> str:
    """The build's socket directory (scripts/build --socket-dir), or the default."""
    from nomad_secrets._version import SOCKET_DIR

    return SOCKET_DIR or client.SOCKET_DIR
