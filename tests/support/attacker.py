"""The unprivileged attacker of the node-file tests: another uid (65534,
nobody) running commands through setpriv, and a directory like /tmp
(1777) that both root and the attacker can reach."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ATTACKER = 65534
NEEDS_ROOT = "needs root: the plugin runs as root, the attacker as another uid (scripts/test runs as root)"


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip(NEEDS_ROOT)


def as_attacker(script: str) -> None:
    """Run the shell ``script`` as the attacker, with no groups."""
    need_root()
    subprocess.run(
        ["setpriv", f"--reuid={ATTACKER}", f"--regid={ATTACKER}", "--clear-groups", "sh", "-c", script],
        check=True,
    )


@contextmanager
def public_dir() -> Iterator[Path]:
    """A directory like /tmp (1777), below a directory of root's that
    others may enter (pytest's own are 0700): removed after."""
    top = Path(tempfile.mkdtemp(prefix="ns-public-", dir="/tmp"))
    top.chmod(0o755)
    public = top / "shared"
    public.mkdir()
    public.chmod(0o1777)
    try:
        yield public
    finally:
        shutil.rmtree(top)
