"""Old unpack directories: `install`, and a fetch that unpacks a new build,
remove other builds' directories that no running process uses; never one a
fetch is importing from, never through a symlink, never one that fails the
trust rules. Two builds share one cache, as on a node that upgrades."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import aws_config
from support.netutil import HangingServer
from support.node import SECRET, Node
from support.nomad import NomadClient, with_policy

from nomad_secrets.process import cache as cache_module

MARK = cache_module.HELD_MARK


pytestmark = pytest.mark.node_builds(old="0.2.0", new="0.3.0")  # one cache, as on a node that upgrades


def age(path: Path, hours: float) -> None:
    then = time.time() - hours * 3600
    os.utime(path, (then, then))


def test_a_fetch_that_unpacks_a_new_build_removes_the_old_one(node: Node) -> None:
    assert node.fetch("old").ok
    old = node.unpacked()["old"]
    assert (old / MARK).is_file()
    age(old, 2)  # last unpacked two hours ago
    assert node.fetch("new").ok  # unpacks the new build, prunes the old
    assert list(node.unpacked()) == ["new"]
    # A fetch that finds its directory in place lists nothing and removes nothing
    assert node.fetch("old").ok  # the old build again: unpacked anew
    assert sorted(node.unpacked()) == ["new", "old"]  # the new build's is younger than an hour: kept


def test_install_removes_what_no_fetch_holds(node: Node) -> None:
    assert node.fetch("old").ok
    installed = node.install("new")
    assert installed.returncode == 0, installed.stdout
    assert f"removed 1 unpack directories of other builds from {node.cache}" in installed.stdout
    assert list(node.unpacked()) == ["new"]  # install ran from it: unpacked and ready for fetches


def test_a_running_fetch_keeps_its_directory(node: Node) -> None:
    """A fetch of the old build, stuck on a store that never answers, is
    still importing from its directory: install of the new build keeps it."""
    result: list[Any] = []
    with HangingServer() as hanging:
        stuck_dir = node.builds["old"].plugins
        (stuck_dir / "secrets" / "nomad-secrets.toml").write_text(
            with_policy(aws_config(hanging.url) + "[plugin]\ndeadline_seconds = 60\n")
        )
        stuck = NomadClient(stuck_dir, node.decoder, timeout=30)
        thread = threading.Thread(target=lambda: result.append(stuck.fetch("aws", SECRET)))
        thread.start()
        for _ in range(200):  # until the fetch is at the store: unpacked, imported, held
            if hanging.connections:
                break
            time.sleep(0.05)
        assert hanging.connections
        old = node.unpacked()["old"]
        installed = node.install("new")
        assert installed.returncode == 0, installed.stdout
        assert f"kept {old}: in use by a running fetch" in installed.stdout
        assert (old / "lib" / "nomad_secrets" / "cli.py").is_file()
    thread.join()  # the store is gone now: the stuck fetch fails and exits
    assert result and not result[0].ok
    again = node.install("new")
    assert "removed 1 unpack directories" in again.stdout and list(node.unpacked()) == ["new"]


def test_symlinks_untrusted_and_older_directories_are_left_alone(node: Node, tmp_path: Path) -> None:
    assert node.fetch("new").ok
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / MARK).write_text("")
    (elsewhere / "precious").write_text("keep me")
    link = node.cache / ("a" * 24 + "-cpython-311")
    link.symlink_to(elsewhere)
    writable = node.cache / ("b" * 24 + "-cpython-311")
    writable.mkdir()
    (writable / MARK).write_text("")
    writable.chmod(0o777)
    legacy = node.cache / ("c" * 24 + "-cpython-311")  # a 0.1 build: no mark, holds no lock
    legacy.mkdir(mode=0o700)
    stale = node.cache / ".unpack-crashed"
    stale.mkdir(mode=0o700)
    age(stale, 2)
    installed = node.install("new")
    assert installed.returncode == 0, installed.stdout
    assert f"kept {link}: the cache directory {link} is a symlink" in installed.stdout
    assert (
        f"kept {writable}: the cache directory {writable} is writable by group or others" in installed.stdout
    )
    assert f"kept {legacy}: a build before 0.2, which does not mark when it is in use" in installed.stdout
    assert link.is_symlink() and (elsewhere / "precious").read_text() == "keep me"
    assert writable.is_dir() and legacy.is_dir() and not stale.exists()


def test_a_warm_fetch_does_not_list_the_cache(node: Node) -> None:
    """The cost when nothing needs pruning: no directory listing at all."""
    strace = "/usr/bin/strace"
    if not os.access(strace, os.X_OK):
        pytest.skip("needs strace (apt-get install strace)")
    nomad = node.builds["new"].nomad
    assert nomad.fetch("aws", SECRET).ok  # unpacked
    env = {"CPI_OPERATION": "fetch", "NOMAD_JOB_ID": "j", "NOMAD_NAMESPACE": "default"}
    trace = node.cache.parent / "trace"
    run = subprocess.run(
        [
            strace,
            "-f",
            "-e",
            "trace=openat,getdents64",
            "-o",
            str(trace),
            str(nomad.executable("aws")),
            "fetch",
            SECRET,
        ],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert b'"value": "v"' in run.stdout
    lines = trace.read_text().splitlines()
    opened_cache = [line for line in lines if f'"{node.cache}"' in line]
    assert opened_cache == [], opened_cache  # the cache root itself is never opened (so never listed)
    assert any(f'"{node.cache}/' in line and "O_DIRECTORY" in line for line in lines)  # its entry is held
