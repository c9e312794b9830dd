"""The node as it may really be, made real for the executable run as Nomad
runs it: a mount namespace without /dev/null, the Nomad client's resource
limits (RLIMIT_NOFILE, RLIMIT_AS, RLIMIT_STACK) inherited by the plugin, a
debug log whose directory is gone. Each one gets an answer that names the
limit and who can raise it, or a fetch that still succeeds; never a
traceback, a silent exit 1, or "cannot connect" for a socket the process
could not make. The stores are real: moto's server and OpenBao.

The limits and the namespace are set in the child between fork and exec
(``node``), with every function resolved in the parent: the test process
has threads (moto's server), and a child of a threaded parent must not
load anything.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import aws_config, put_secret, write_config
from support.nomad import Fetched, NomadClient, limited
from support.openbao import Vault, unique

from nomad_secrets.launch import MIN_ADDRESS_SPACE

MiB = 1 << 20
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_unshare = _libc.unshare
_mount = _libc.mount
_mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000


def mount_namespace(
    *mounts: tuple[bytes, bytes, bytes, int], then: list[bytes] | None = None
) -> Callable[[], None]:
    """A child in its own mount namespace (private: nothing reaches the
    host's), with ``mounts`` (source, target, type, flags) made in it, then
    the directories ``then`` created."""
    needs_root()

    def node() -> None:
        if _unshare(CLONE_NEWNS) != 0 or _mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            os._exit(90)
        for source, target, kind, flags in mounts:
            if _mount(source, target, kind, flags, None) != 0:
                os._exit(91)
        for directory in then or []:
            os.mkdir(directory)

    return node


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: a mount namespace of its own (scripts/test runs the suite as root)")


def answered(fetched: Fetched) -> Fetched:
    """Exit 0 and one JSON object: the harness already refused stderr and tracebacks."""
    assert fetched.run.returncode == 0 and not fetched.run.terminated, fetched
    return fetched


def debug_logged(nomad: NomadClient, config: str, log: Path) -> None:
    write_config(nomad.plugin_dir, config + f'[plugin]\ndebug_log = "{log}"\n')


# -- no /dev/null ------------------------------------------------------------------------


EMPTY_DEV = (b"none", b"/dev", b"tmpfs", 0)


@pytest.mark.parametrize("dev", ["tmpfs-over-dev", "empty-dir-over-dev", "dev-null-a-directory"])
def test_no_dev_null_still_answers(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, tmp_path: Path, dev: str
) -> None:
    """Nomad's client opened its own /dev/null for the plugin's stdin; in
    the plugin's view there is none, or a directory: the fetch needs none,
    and says so in the debug log only."""
    empty = tmp_path / "empty"
    empty.mkdir()
    if dev == "tmpfs-over-dev":
        node = mount_namespace(EMPTY_DEV)
    elif dev == "empty-dir-over-dev":
        node = mount_namespace((str(empty).encode(), b"/dev", b"", MS_BIND))
    else:
        node = mount_namespace(EMPTY_DEV, then=[b"/dev/null"])
    log = tmp_path / "debug.log"
    debug_logged(nomad, aws_config(moto_endpoint), log)
    put_secret(secretsmanager, "edge-no-dev-null", "v")
    fetched = answered(nomad.fetch("aws", "edge-no-dev-null", node=node))
    assert fetched.ok and fetched.result == {"value": "v"}, fetched
    assert "no-dev-null" in log.read_text(), log.read_text()
    assert os.path.exists("/dev/null") and not os.listdir(empty)  # the host's view is untouched


# -- file descriptors --------------------------------------------------------------------

FD_ERROR = ("ran out of file descriptors", "RLIMIT_NOFILE", "LimitNOFILE")


def _vault_refs(vault: Vault, count: int) -> tuple[str, dict[str, str]]:
    expected: dict[str, str] = {}
    lines: list[str] = []
    for i in range(count):
        name = unique("fd")
        vault.server.put_kv("secret", name, {"v": f"value-{i}"})
        lines.append(f"k{i} = vault:secret/{name}")
        expected[f"k{i}_v"] = f"value-{i}"
    return "\n".join(lines), expected


@pytest.mark.parametrize("nofile", [5, 6])
def test_too_few_file_descriptors_is_named(vault: Vault, nofile: int) -> None:
    """Below what one read needs (5: not even the copy of stdout and
    /dev/null; 6: no room for a connection), the answer names the limit
    and the Nomad client's LimitNOFILE: not exit 1, not "cannot connect"."""
    path, _ = _vault_refs(vault, 3)
    message = vault.error(path, node=limited(nofile=nofile))
    for words in FD_ERROR:
        assert words in message, message
    assert f"is {nofile}" in message, message
    assert "cannot connect" not in message


def test_too_few_file_descriptors_to_start_leave_the_cache_alone(vault: Vault, artifact: Path) -> None:
    """4: the bootstrap cannot even import the plugin's code (the import
    lists the unpacked directory). It answers, without json (that import
    fails too), and does not take the failure for a damaged cache."""
    import zipfile

    from nomad_secrets.process import cache

    path, expected = _vault_refs(vault, 2)
    first = answered(vault.fetch(path))
    assert first.result == expected, first.plugin_error  # unpacked
    build_id, cache_dir = zipfile.ZipFile(artifact).read("build-info").decode().split("\n")[:2]
    entry = Path(cache_dir or cache.default_cache_dir()) / cache.entry_name(build_id)
    made = entry.stat().st_ino
    message = vault.error(path, node=limited(nofile=4))
    for words in FD_ERROR:
        assert words in message, message
    assert "while it started" in message and "damaged" not in message
    assert entry.stat().st_ino == made


@pytest.mark.parametrize("nofile", [7, 8])
def test_more_references_than_file_descriptors_are_read_in_turn(vault: Vault, nofile: int) -> None:
    """20 references under a limit with room for one or two connections at
    once: as many readers as fit, and every value, where a thread and a
    socket for each reference ran out ("cannot connect to Vault")."""
    path, expected = _vault_refs(vault, 20)
    fetched = answered(vault.fetch(path, node=limited(nofile=nofile)))
    assert fetched.ok and fetched.result == expected, fetched.plugin_error


# -- memory and threads ------------------------------------------------------------------


@pytest.mark.parametrize(("stack_mib", "as_mib"), [(512, 400), (64, 300)])
def test_threads_that_cannot_start_leave_the_reads_to_fewer(
    vault: Vault, tmp_path: Path, stack_mib: int, as_mib: int
) -> None:
    """Each thread reserves RLIMIT_STACK of address space: under RLIMIT_AS
    none (512/400 MiB) or only some (64/300 MiB) of ten can start. The
    references are read by those that did, or in turn by the main thread."""
    log = tmp_path / "debug.log"
    vault.sections = f'[plugin]\ndebug_log = "{log}"\n'
    vault.configure()
    path, expected = _vault_refs(vault, 10)
    fetched = answered(vault.fetch(path, node=limited(stack=stack_mib * MiB, **{"as": as_mib * MiB})))
    assert fetched.ok and fetched.result == expected, fetched.plugin_error
    logged = log.read_text()
    assert "reader-not-started" in logged, logged
    if stack_mib == 512:
        assert "reading-in-turn" in logged, logged


def floor_refusal(mib: int) -> str:
    return (
        f"nomad-secrets cannot start: its address space limit (RLIMIT_AS) is {mib} MiB, under the"
        f" {MIN_ADDRESS_SPACE >> 20} MiB a fetch needs; it is the Nomad client's: raise LimitAS in its"
        " systemd unit, or ulimit -v where it starts (docs/troubleshooting.md)"
    )


# The limits that matter: the smallest the interpreter starts under, the
# old crash points (SIGSEGV or an abort at 26 and 37 MiB, "MemoryError" on
# stderr at 28 MiB), the floor and either side of it, and the top of the
# sweep that found them (16-81 MiB, every MiB, twice: 133 processes).
ADDRESS_SPACE_LIMITS = (16, 26, 28, 37, (MIN_ADDRESS_SPACE >> 20) - 1, MIN_ADDRESS_SPACE >> 20, 65, 81)


@pytest.mark.parametrize("mib", ADDRESS_SPACE_LIMITS)
def test_every_address_space_limit_gets_an_answer(nomad: NomadClient, secretsmanager: Any, mib: int) -> None:
    """From the smallest limit the interpreter starts under: below the floor
    (MIN_ADDRESS_SPACE) one answer that names the limit and the Nomad
    client's setting, from it on the value. Before the floor, some limits
    crashed the interpreter itself (SIGSEGV: CPython's _PyErr_NoMemory
    recursing once its spare MemoryErrors were used, or an abort: 7 of 30
    runs at 26 and 37 MiB), at 28 MiB one fetch said "MemoryError" on a guarded
    stderr and exited 1, and in CI one answered without the limit's value."""
    put_secret(secretsmanager, "edge-memory-sweep", "v")
    assert answered(
        nomad.fetch("aws", "edge-memory-sweep")
    ).ok  # unpacked: test_reliability has the first fetch
    for _ in range(2):
        fetched = answered(nomad.fetch("aws", "edge-memory-sweep", node=limited(**{"as": mib * MiB})))
        if mib < MIN_ADDRESS_SPACE >> 20:
            assert fetched.plugin_error == floor_refusal(mib), (mib, fetched)
        else:
            assert fetched.ok and fetched.result == {"value": "v"}, (mib, fetched)


def test_out_of_memory_while_reading_is_named(vault: Vault) -> None:
    """Above the floor, values too large for the address space (three of
    3.5 MiB, the operator's max_output_bytes raised to let them through):
    the answer says memory ran out, the limit and the settings to change,
    and nothing of what was read. Unlimited, the same fetch reads them."""
    vault.sections = "[plugin]\nmax_output_bytes = 33554432\n"
    vault.configure()
    lines, expected = [], {}
    for i in range(3):
        name = unique("large")
        value = chr(ord("a") + i) * (7 * MiB // 2)
        vault.server.put_kv("secret", name, {"v": value})
        lines.append(f"k{i} = vault:secret/{name}")
        expected[f"k{i}_v"] = value
    path = "\n".join(lines)
    fetched = answered(vault.fetch(path, node=limited(**{"as": 64 * MiB})))
    said = str(fetched.plugin_error)
    assert fetched.result == {} and said.startswith("nomad-secrets ran out of memory while "), said
    assert "(its address space limit: 64 MiB)" in said and "LimitAS" in said, said
    assert "aaaa" not in fetched.run.stdout.decode(), "a value in the answer"
    fetched = answered(vault.fetch(path))
    assert fetched.ok and fetched.result == expected


# -- the debug log -----------------------------------------------------------------------


def test_debug_log_in_a_missing_directory_is_left_off(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, tmp_path: Path
) -> None:
    """The operator's log directory is gone (a cleanup, a volume not
    mounted): the job did nothing wrong, the fetch answers."""
    log = tmp_path / "gone" / "debug.log"
    debug_logged(nomad, aws_config(moto_endpoint), log)
    put_secret(secretsmanager, "edge-log-dir", "v")
    fetched = answered(nomad.fetch("aws", "edge-log-dir"))
    assert fetched.ok and fetched.result == {"value": "v"}, fetched
    assert not log.parent.exists()
