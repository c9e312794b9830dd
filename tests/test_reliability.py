"""An operator's bad day with the unpack cache (issue #15): the first fetch
of a new build stopped by Nomad's SIGTERM, a cache damaged after it was
made, a disk too small to compile into, abandoned temporary directories,
and `install`/`check` when the cache cannot be unpacked. Each through the
built executable as Nomad runs it, with the build's own ``--cache-dir``."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from conftest import aws_config, build_artifact, put_secret
from support.node import SECRET, Node
from support.nomad import limited, nomad_env, run_plugin

from nomad_secrets.launch import MIN_ADDRESS_SPACE, UNPACK_LOCK, room_needed
from nomad_secrets.process import cache as cache_module

MiB = 1 << 20


def answer(run: Any) -> dict[str, Any]:
    assert run.returncode == 0 and run.stderr == b"", run
    parsed: dict[str, Any] = json.loads(run.stdout)
    return parsed


# --- the first fetch of a new build ----------------------------------------------------------------


def test_sigterm_while_waiting_for_the_unpacker_gets_an_answer(node: Node) -> None:
    """Another run holds the unpack lock (a burst right after an upgrade):
    Nomad's SIGTERM finds this one waiting and it answers at once, naming
    the cache and what to do. On today's main it died with empty stdout."""
    node.cache.mkdir(mode=0o700, exist_ok=True)
    lock = os.open(node.cache / UNPACK_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        run = run_plugin(
            node.nomad.executable("aws"),
            ["fetch", SECRET],
            nomad_env("fetch", {}, "web", "default"),
            1.0,
        )
    finally:
        os.close(lock)
    assert run.terminated and run.returncode == 0, run  # answered before the SIGKILL
    error = answer(run)["error"]
    assert error.startswith(
        "stopped by Nomad (SIGTERM) while nomad-secrets waited for another run to unpack a new build into"
    )
    assert str(node.cache) in error and "install" in error
    assert node.leftovers() == []


@pytest.mark.long
def test_a_fetch_waits_for_the_unpacker_until_nomad_can_still_read_its_answer(node: Node) -> None:
    """The unpacking run never finishes (stuck on a dead disk): a fetch
    waiting for it answers before Nomad's 10 s, which the user then sees,
    instead of unpacking again on a busy node or being killed."""
    node.cache.mkdir(mode=0o700, exist_ok=True)
    lock = os.open(node.cache / UNPACK_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        fetched = node.fetch()
    finally:
        os.close(lock)
    assert not fetched.run.terminated
    assert str(fetched.plugin_error).startswith(
        f"nomad-secrets cannot start: another run has been unpacking this build into {node.cache} for the"
    )
    assert node.leftovers() == [] and node.entries() == []


@pytest.mark.parametrize("after", [0.0, 0.05, 0.1, 0.2, 0.3, 0.45])
def test_sigterm_while_unpacking_leaves_nothing_behind(node: Node, after: float) -> None:
    """SIGTERM at some moment of a first fetch, once our code runs (the
    cache's lock file is there; before, the interpreter is still starting
    and no code of ours can answer): the answer is the secret or the SIGTERM
    message, never empty; no temporary directory is left, and the next
    fetch works."""
    proc = subprocess.Popen(
        [str(node.nomad.executable("aws")), "fetch", SECRET],
        env=nomad_env("fetch", {}, "web", "default"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    while not (node.cache / UNPACK_LOCK).exists() and proc.poll() is None:
        time.sleep(0.001)
    time.sleep(after)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0 and stderr == b"", (proc.returncode, stderr)
    said = json.loads(stdout)
    assert said == {"result": {"value": "v"}} or said["error"].startswith("stopped by Nomad (SIGTERM)"), said
    assert node.leftovers() == []
    assert node.fetch().result == {"value": "v"}


def test_install_unpacks_for_the_interpreter_of_the_shebang(node: Node) -> None:
    """After `install`, the build is unpacked where Nomad's runs will look
    (the shebang's interpreter, the build's cache): the first fetch unpacks
    nothing."""
    shutil.rmtree(node.cache, ignore_errors=True)
    installed = subprocess.run(
        [str(node.exe), "install", "--common-plugin-dir", str(node.plugins), "--force"],
        capture_output=True,
        text=True,
        env={},
        timeout=120,
    )
    assert installed.returncode == 0, installed
    assert "unpacked " in installed.stdout
    entry = node.entry()
    made = entry.stat().st_ino, entry.stat().st_mtime_ns
    assert node.fetch().result == {"value": "v"}
    assert (node.entry().stat().st_ino, node.entry().stat().st_mtime_ns) == made


def test_abandoned_unpack_directories_are_removed(node: Node) -> None:
    """A `.unpack-*` of a killed run (no lock on it) goes at the next prune;
    one a live unpacker holds stays, however old."""
    assert node.fetch().ok
    dead = node.cache / ".unpack-killed"
    live = node.cache / ".unpack-working"
    for folder in (dead, live):
        (folder / "lib").mkdir(parents=True, mode=0o700)
        (folder / "lib" / "x.py").write_text("x = 1\n")
        os.chmod(folder, 0o700)
        old = time.time() - 2 * cache_module.STALE_UNPACK_AGE
        os.utime(folder, (old, old))
    held = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(held, fcntl.LOCK_SH)
    try:
        removed, kept = cache_module.prune(str(node.cache), "none")
    finally:
        os.close(held)
    assert ".unpack-killed" in removed and not dead.exists()
    assert live.exists() and any(k.startswith(".unpack-working: in use") for k in kept)


@pytest.mark.serial
def test_a_burst_of_first_fetches_unpacks_once(node: Node) -> None:
    """Many first fetches of a build at once share one unpack: on a node
    without a cache, they make it (root's only) and its lock among
    themselves; with the cache there, the others wait on the unpack lock
    (sleeping, not compiling the same code on the same cores) while one
    unpacks. Seen from outside: while the test holds the lock, nobody
    unpacks; once it lets go, one directory appears and every fetch gets
    the secret."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        runs = list(pool.map(lambda _: node.fetch(), range(8)))
    assert [r.result for r in runs] == [{"value": "v"}] * 8
    entries = sorted(os.listdir(node.cache))
    assert entries[0] == UNPACK_LOCK and (os.stat(node.cache / UNPACK_LOCK).st_mode & 0o777) == 0o600
    assert len(entries) == 2 and not entries[1].startswith(".unpack-"), entries
    assert (os.stat(node.cache).st_mode & 0o077) == 0

    shutil.rmtree(node.entry())  # the cache and its lock stay: the build is to be unpacked again
    lock = os.open(node.cache / UNPACK_LOCK, os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)
    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(node.fetch) for _ in range(20)]
        time.sleep(1.0)  # well under the 7.5 s a fetch waits for the lock
        waiting = [name for name in os.listdir(node.cache) if name != UNPACK_LOCK]
        running = sum(not f.done() for f in futures)
        os.close(lock)
        fetched = [f.result() for f in futures]
    assert waiting == [] and running == 20
    assert [f.result for f in fetched] == [{"value": "v"}] * 20, {f.error for f in fetched if not f.ok}
    assert list(node.unpacked()) == ["dist"]
    assert node.leftovers() == []


# --- a damaged cache -----------------------------------------------------------------------------


def _cut(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return len(data) // 2, len(data)


def _pyc(entry: Path, module: str) -> Path:
    """``lib/botocore/endpoint`` -> its .pyc for the interpreter of the entry."""
    folder, name = module.rsplit("/", 1)
    tag = entry.name.split("-", 1)[1]  # <build id>-<cache tag>
    return entry / folder / "__pycache__" / f"{name}.{tag}.pyc"


def _remove(entry: Path, path: str) -> None:
    """``path`` taken from the unpack directory: a directory, or a module
    with its compiled code (as `find -delete` of a cleanup job would)."""
    target = entry / path
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()
        for pyc in target.parent.glob(f"__pycache__/{target.stem}.*.pyc"):
            pyc.unlink()


def _garble(entry: Path, pattern: str) -> None:
    (found,) = entry.glob(pattern)
    found.write_bytes(b"{")


DAMAGE: dict[str, Callable[[Path], object]] = {
    "our module's .pyc cut short": lambda e: _cut(_pyc(e, "lib/nomad_secrets/cli")),
    # imported once stdout is guarded: the run started again must answer on Nomad's
    "a .pyc the fetch imports first cut short": lambda e: _cut(_pyc(e, "lib/nomad_secrets/process/deadline")),
    "botocore's .pyc cut short": lambda e: _cut(_pyc(e, "lib/botocore/endpoint")),
    "a botocore data file garbled": lambda e: _garble(e, "lib/botocore/data/sdk-default-configuration.json"),
    "an empty build directory": lambda e: shutil.rmtree(e / "lib"),
    "a module removed": lambda e: _remove(e, "lib/nomad_secrets/nomad/fetch.py"),
    "a store's data removed": lambda e: _remove(e, "lib/botocore/data/secretsmanager"),
    "a store's model garbled": lambda e: _garble(e, "lib/botocore/data/secretsmanager/*/service-2.json*"),
}
# What check names of a damage (a pattern), where check's own run does not
# import the damaged file; where it does, that run heals it before it looks.
MISSING = r"\d+ of \d+ files are missing \(such as "
CHECK_NAMES = {
    "a module removed": MISSING + "lib/nomad_secrets/nomad/",
    "a store's data removed": MISSING + "lib/botocore/data/secretsmanager/",
    "a store's model garbled": r"lib/botocore/data/secretsmanager/[^ ]+/service-2\.json[^ ]* has 1 bytes",
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_cache_heals_within_the_fetch_and_check_names_it(node: Node, damage: str) -> None:
    """Damage after the unpack (a cleanup job, a full disk, a bad block): the
    fetch moves the directory aside, unpacks afresh and answers. On today's
    main: a traceback and exit 1, or "internal error", on every fetch.
    check, which reads the same cache, names the damage and fails."""
    assert node.fetch().ok
    DAMAGE[damage](node.entry())
    assert cache_module.damage(str(node.entry())) is not None
    fetched = node.fetch()
    assert fetched.run.returncode == 0 and fetched.run.stderr == b""
    assert fetched.result == {"value": "v"}, fetched
    entry = node.entry()
    assert cache_module.damage(str(entry)) is None
    assert node.leftovers() == []
    if damage not in CHECK_NAMES:
        return
    DAMAGE[damage](entry)
    check = run_plugin(node.nomad.executable("aws"), ["check"], {})
    assert check.returncode == 1, check
    said = f"the unpack directory {re.escape(str(entry))} is damaged: {CHECK_NAMES[damage]}"
    assert re.search(said, check.stdout.decode()), check.stdout.decode()


@pytest.mark.long
def test_damage_found_late_is_named(node: Node) -> None:
    """A run too late to unpack again (started 4.5 s before, as on a node
    starting many tasks at once) answers with what it found and where, and
    moves the directory aside for the next fetch."""
    assert node.fetch().ok
    entry = node.entry()
    pyc = _pyc(entry, "lib/botocore/endpoint")
    now, was = _cut(pyc)
    fetched = node.fetch(node=lambda: time.sleep(cache_module.HEAL_BEFORE_SECONDS + 0.5))
    assert fetched.plugin_error == (
        f"nomad-secrets cannot run: its unpacked files in {entry} were damaged"
        f" ({pyc.relative_to(entry)} has {now} bytes, not {was});"
        " they have been moved aside, and the next fetch unpacks them again"
    )
    assert not entry.exists()
    assert node.fetch().result == {"value": "v"}


def test_a_job_cannot_say_the_run_was_started_again(node: Node) -> None:
    """The mark of a second try is the run's own pid: a job's env block
    naming it is refused like any other unknown option, and a damaged
    directory is still healed."""
    assert node.fetch().ok
    fetched = node.fetch(env_block={cache_module.AGAIN: "1"})
    assert cache_module.AGAIN in str(fetched.plugin_error) and fetched.result == {}
    DAMAGE["botocore's .pyc cut short"](node.entry())
    assert node.fetch().result == {"value": "v"}


@pytest.mark.serial
def test_a_heal_does_not_break_the_fetches_running_beside_it(node: Node) -> None:
    """One run finds a module damaged and moves the directory aside while
    others of the same build are running: they import through the directory
    they hold (/proc/self/fd/N), so every one of them answers right."""
    from concurrent.futures import ThreadPoolExecutor

    assert node.fetch().ok
    entry = node.entry()
    with ThreadPoolExecutor(12) as pool:
        running = [pool.submit(node.fetch) for _ in range(10)]
        time.sleep(0.05)
        DAMAGE["botocore's .pyc cut short"](entry)
        healing = [pool.submit(node.fetch) for _ in range(2)]
        answers = [f.result() for f in running + healing]
    assert [a.result for a in answers] == [{"value": "v"}] * 12, [a.plugin_error for a in answers]
    assert cache_module.damage(str(node.entry())) is None


# --- a disk too small, a cache that cannot be used -------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs that holds the unpacked sources but not their compiled code."""
    if os.geteuid() != 0:
        pytest.skip("needs root (mounts a tmpfs)")
    mount = tmp_path / "small"
    mount.mkdir()
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.serial
@pytest.mark.parametrize("short_of", ["bytes", "inodes"])
def test_a_disk_too_small_for_the_build_is_named_at_once(
    tmp_path: Path, small_disk: Path, moto_endpoint: str, decoder: Any, secretsmanager: Any, short_of: str
) -> None:
    """A cache disk with room for the sources but not their compiled code,
    or with too few inodes: each first fetch says so before it writes
    anything, ten at once included, and leaves nothing. Before: the 6 MB
    temporary directory stayed (af21d35); then each fetch waited its turn
    to fail the unpack again, and one of a burst said another run had been
    unpacking for 7.3 s (the operator review of issue #15)."""
    put_secret(secretsmanager, SECRET, "v")
    probe = build_artifact(tmp_path / "probe" / "nomad-secrets", tmp_path / "probe-cache")
    with zipfile.ZipFile(probe) as outer, zipfile.ZipFile(BytesIO(outer.read("lib.zip"))) as inner:
        sources = sum(info.file_size for info in inner.infolist())
        inodes = room_needed(inner.infolist())[1]
    # the tmpfs root, the cache directory and its lock take 3 inodes
    options = f"size={sources + 512 * 1024}" if short_of == "bytes" else f"size=64m,nr_inodes={inodes + 2}"
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"{options},mode=0700", "tmpfs", str(small_disk)], check=True
    )
    node = Node(tmp_path / "n", aws_config(moto_endpoint), decoder, cache=small_disk / "cache")
    room = (
        r"\(\d+\.\d MB free on its disk; this build needs at least \d+\.\d MB\)"
        if short_of == "bytes"
        else rf"\({inodes - 1} inodes free on its disk; this build needs {inodes} for its files\)"
    )
    unpacking = re.escape(
        f"nomad-secrets cannot start: cannot unpack into the cache directory {small_disk}/cache"
    )
    pattern = f"{unpacking}: No space left on device {room}"
    fetches: list[Any] = []
    burst = [threading.Thread(target=lambda: fetches.append(node.fetch())) for _ in range(10)]
    for thread in burst:
        thread.start()
    for thread in burst:
        thread.join(30)
    for fetched in [node.fetch(), *fetches]:
        assert re.fullmatch(pattern, str(fetched.plugin_error)), fetched.plugin_error
        assert not fetched.run.terminated, fetched.run  # answered, not stopped by Nomad
    assert len(fetches) == 10 and node.leftovers() == [] and node.entries() == []
    assert shutil.disk_usage(small_disk).used < 64 * 1024  # nothing left to fill the disk


def test_a_disk_that_reports_no_limits_is_unpacked_into(
    tmp_path: Path, small_disk: Path, moto_endpoint: str, decoder: Any, secretsmanager: Any
) -> None:
    """A tmpfs without limits (size=0, nr_inodes=0) reports no blocks and no
    inodes, as btrfs reports no inodes: not "0 free" (the operator review
    of issue #15: every first fetch was refused)."""
    put_secret(secretsmanager, SECRET, "v")
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=0,nr_inodes=0,mode=0700", "tmpfs", str(small_disk)], check=True
    )
    assert os.statvfs(small_disk).f_files == 0 and os.statvfs(small_disk).f_blocks == 0
    node = Node(tmp_path / "n", aws_config(moto_endpoint), decoder, cache=small_disk / "cache")
    fetched = node.fetch()
    assert fetched.ok and fetched.result == {"value": "v"}, fetched.plugin_error
    assert node.entry().is_dir() and node.leftovers() == []


def test_a_first_fetch_under_a_small_address_space(node: Node) -> None:
    """The first fetch of a new build under an address space limit (the
    Nomad client's LimitAS): below the floor it is answered before anything
    is written; at the floor it unpacks, compiles and reads. Before, under
    a small limit the compile step said "cannot compile ...: N MB free on
    its disk", naming a disk that was not full."""
    shutil.rmtree(node.cache, ignore_errors=True)  # this is the first fetch of the build
    for mib in range(16, MIN_ADDRESS_SPACE >> 20, 4):
        fetched = node.fetch(node=limited(**{"as": mib * MiB}))
        said = str(fetched.plugin_error)
        assert said.startswith(
            f"nomad-secrets cannot start: its address space limit (RLIMIT_AS) is {mib} MiB"
        ), said
        assert not node.cache.exists()
    fetched = node.fetch(node=limited(**{"as": MIN_ADDRESS_SPACE}))
    assert fetched.ok and fetched.result == {"value": "v"}, fetched
    assert node.entry().is_dir() and node.leftovers() == []


def test_install_short_of_memory_says_so_in_one_line(node: Node, tmp_path: Path) -> None:
    """`install` of a new build under `ulimit -v` 24 MiB: one line on stderr
    that names the limit, exit 1 (the operator review of issue #15: a
    traceback, since a MemoryError was only answered for fetch)."""
    shutil.rmtree(node.cache, ignore_errors=True)
    argv = [str(node.exe), "install", "--common-plugin-dir", str(tmp_path / "installed"), "--as", "aws"]
    run = subprocess.run(
        argv, env={}, capture_output=True, text=True, timeout=60, preexec_fn=limited(**{"as": 24 * MiB})
    )
    assert run.returncode == 1, run
    assert run.stderr == (
        "nomad-secrets ran out of memory (its address space limit: 24 MiB): the limits (RLIMIT_AS) of the"
        " process that started it apply; for a fetch, the Nomad client's: LimitAS or MemoryMax in its"
        " systemd unit (docs/troubleshooting.md)\n"
    ), run.stderr
    assert node.leftovers() == []


def test_check_and_install_fail_when_the_cache_cannot_be_unpacked(node: Node) -> None:
    """A cache directory others may write to is refused (trust rules): fetch
    answers with an error object; check and install, for people and their
    tools, exit 1 (today's main exited 0). install says why on stderr;
    check in its own form, the last line or the JSON object its monitoring
    parses (the operator review: one line on stderr, and no JSON)."""
    node.cache.mkdir(exist_ok=True)
    os.chmod(node.cache, 0o777)
    why = str(node.fetch().plugin_error)
    assert "cache directory" in why
    install = ["install", "--common-plugin-dir", str(node.plugins), "--force"]
    proc = subprocess.run([str(node.exe), *install], capture_output=True, text=True, env={}, timeout=60)
    assert proc.returncode == 1 and proc.stdout == "" and proc.stderr == why + "\n", proc
    proc = subprocess.run([str(node.exe), "check"], capture_output=True, text=True, env={}, timeout=60)
    assert (proc.returncode, proc.stderr) == (1, ""), proc
    assert proc.stdout.splitlines() == [
        "start:",
        f"  PROBLEM  {why}",
        "result: NOT OK: 1 problem, 0 warnings (a fetch that meets a PROBLEM above fails until it is fixed)",
    ]
    for asked in (["--format", "json"], ["--format=json"]):
        proc = subprocess.run(
            [str(node.exe), "check", *asked], capture_output=True, text=True, env={}, timeout=60
        )
        assert (proc.returncode, proc.stderr) == (1, ""), proc
        report = json.loads(proc.stdout)
        assert (report["result"], report["problems"], report["warnings"]) == ("NOT OK", 1, 0), report
        assert report["items"] == [{"section": "start", "level": "problem", "message": why}], report


def test_install_rewrites_a_build_file_that_cp_wrote_over(node: Node, tmp_path: Path) -> None:
    """`cp new nomad-secrets` follows the symlink into the versioned file of
    the old build; install of that build then said "installed" and left the
    other build's bytes in it (a reviewer's rollback that silently failed)."""
    other = build_artifact(tmp_path / "other" / "nomad-secrets", node.cache, "--version", "0.9.0")
    top = tmp_path / "installed"

    def install() -> None:
        proc = subprocess.run(
            [str(node.exe), "install", "--common-plugin-dir", str(top), "--force"],
            capture_output=True,
            text=True,
            env={},
            timeout=120,
        )
        assert proc.returncode == 0, proc

    install()
    versioned = Path(os.path.realpath(top / "nomad-secrets"))
    shutil.copyfile(other, top / "nomad-secrets")  # what cp does: through the symlink
    assert versioned.read_bytes() == other.read_bytes()
    install()
    assert Path(os.path.realpath(top / "nomad-secrets")).read_bytes() == node.exe.read_bytes()
