"""The executable: reproducible, pruned, isolated; its unpack cache: trusted
only when private (tests/test_reliability.py: many first fetches at once)."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, build_artifact, interpreter, run_build
from support.node import Node
from support.nomad import nomad_env, run_plugin

from nomad_secrets._version import GO_VERSION

pytestmark = pytest.mark.process  # every test here runs a process (the unit tier: conftest.py)


def test_same_source_and_lock_give_the_same_bytes(artifact: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    run = run_build(again, artifact.parent / "cache")
    assert run.returncode == 0, run.stdout + run.stderr
    assert again.read_bytes() == artifact.read_bytes()


@pytest.mark.parametrize("extra", [(), ("--version", "0.9.0")], ids=["source version", "stamped version"])
def test_a_build_written_again_for_a_cache_is_scripts_builds_own(
    artifact: Path, tmp_path: Path, extra: tuple[str, ...]
) -> None:
    """The tests' fresh nodes take a build written again for their own cache
    directory (support/builds.py): byte for byte what scripts/build makes."""
    first = build_artifact(tmp_path / "first", tmp_path / "first-cache", *extra)
    written = build_artifact(tmp_path / "written", tmp_path / "other-cache", *extra)
    real = tmp_path / "real"
    run = run_build(real, tmp_path / "other-cache", *extra)
    assert run.returncode == 0, run.stdout + run.stderr
    assert written.read_bytes() == real.read_bytes() != first.read_bytes()
    assert os.stat(written).st_mode & 0o777 == os.stat(real).st_mode & 0o777 == 0o755


def test_shebang_runs_the_interpreter_isolated(artifact: Path) -> None:
    first_line = artifact.read_bytes().split(b"\n", 1)[0]
    assert first_line == f"#!{interpreter()} -IS".encode()
    assert os.access(artifact, os.X_OK)


def test_contents_are_pure_python_with_botocore_data_pruned(artifact: Path) -> None:
    with zipfile.ZipFile(artifact) as zf:
        start = ["__main__", "nomad_secrets_admission", "nomad_secrets_agent_client", "nomad_secrets_cache"]
        start += ["nomad_secrets_endings", "nomad_secrets_launch", "nomad_secrets_trust"]
        # Each start module as its source, and compiled for the shebang's
        # interpreter (the .pyc zipimport takes first, when its magic fits).
        assert sorted(zf.namelist()) == sorted(
            [f"{m}.py" for m in start]
            + [f"{m}.pyc" for m in start]
            + ["build-info", "fingerprint.json", "lib.zip"]
        )
        for module in start:
            code = zf.read(f"{module}.pyc")
            assert (
                code[:4] == importlib.util.MAGIC_NUMBER and code[4:8] == b"\x01\x00\x00\x00"
            )  # unchecked hash
            assert code[8:16] == importlib.util.source_hash(zf.read(f"{module}.py"))
        assert zf.read("fingerprint.json") == b'{"type": "secrets", "version": "%s"}\n' % GO_VERSION.encode()
        with zipfile.ZipFile(io.BytesIO(zf.read("lib.zip"))) as lib:
            names = lib.namelist()
            model = json.loads(lib.read("lib/botocore/data/ssm/2014-11-06/service-2.json"))
    assert set(model["operations"]) == {"GetParameter", "GetParametersByPath"}
    assert "documentation" not in json.dumps(model["operations"])
    services = {n.split("/")[3] for n in names if n.startswith("lib/botocore/data/") and n.count("/") > 4}
    assert services == {"secretsmanager", "ssm", "sts"}
    assert not [n for n in names if n.endswith((".so", ".pyd", ".pyc"))]
    for package in ("botocore", "urllib3", "tomli", "nomad_secrets"):
        assert any(n.startswith(f"lib/{package}/") for n in names), package
    # Test oracles, and what only the build needs (packaging maps the version):
    # never in the executable. Nor the CI doors, which run from the package.
    gone = (
        "lib/bin/",
        "lib/boto3/",
        "lib/hvac/",
        "lib/requests/",
        "lib/packaging/",
        "lib/nomad_secrets/serve/",
    )
    assert not any(n.startswith(gone) for n in names)
    assert artifact.stat().st_size < 5_000_000


def test_build_reports_its_size(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "build"),
            "--python",
            interpreter(),
            "--output",
            str(tmp_path / "x"),
            "--version",
            "1.2.0rc1",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    size = (tmp_path / "x").stat().st_size
    assert f"{size:,} bytes" in out and "version 1.2.0-rc.1" in out
    # the stamped version reaches fingerprint in its go-version form
    fingerprint = subprocess.run([str(tmp_path / "x"), "fingerprint"], env={}, capture_output=True)
    assert fingerprint.stdout == b'{"type": "secrets", "version": "1.2.0-rc.1"}\n'
    version = subprocess.run([str(tmp_path / "x"), "version"], env={}, capture_output=True, text=True)
    assert version.stdout.startswith("nomad-secrets 1.2.0rc1 (fingerprint version 1.2.0-rc.1)")


def test_module_and_console_script_run_the_same_code() -> None:
    env = {"CPI_OPERATION": "fingerprint"}
    module = subprocess.run(
        [sys.executable, "-m", "nomad_secrets", "fingerprint"], env=env, capture_output=True, cwd=ROOT
    )
    script = Path(sys.executable).parent / "nomad-secrets"
    console = subprocess.run([str(script), "fingerprint"], env=env, capture_output=True)
    assert module.stdout == console.stdout == b'{"type": "secrets", "version": "%s"}\n' % GO_VERSION.encode()
    assert module.stderr == console.stderr == b""


def test_cache_writable_by_others_is_refused(node: Node) -> None:
    cache = node.cache
    cache.mkdir()
    cache.chmod(0o777)
    fetched = node.nomad.fetch("aws", "x")
    assert fetched.run.returncode == 0 and not fetched.ok
    error = fetched.plugin_error or ""
    assert f"the cache directory {cache} is writable by group or others" in error
    assert f"chmod go-w {cache}" in error
    assert os.listdir(cache) == []  # nothing unpacked into it


def test_cache_under_a_directory_writable_by_others_is_refused(node: Node) -> None:
    top = node.cache.parent
    top.chmod(0o777)  # the cache's parent: anyone could swap the cache for their own
    try:
        fetched = node.nomad.fetch("aws", "x")
    finally:
        top.chmod(0o700)
    assert fetched.run.returncode == 0 and not fetched.ok
    assert f"the directory {top} is writable by group or others" in (fetched.plugin_error or "")
    assert not node.cache.exists()  # refused before anything was written


def test_cache_entry_replaced_by_a_symlink_is_refused(node: Node, tmp_path: Path) -> None:
    node.nomad.fetch("aws", "x")  # unpacks
    entry = node.entry()
    shutil.move(entry, tmp_path / "elsewhere")
    entry.symlink_to(tmp_path / "elsewhere")
    fetched = node.nomad.fetch("aws", "x")
    assert not fetched.ok and "is a symlink" in (fetched.plugin_error or "")


def test_python_variables_from_the_job_cannot_load_code(tmp_path: Path, plugin_dir: Path) -> None:
    """-I ignores PYTHON*; the allowlist then refuses them by name."""
    marker = tmp_path / "marker"
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    (evil / "json.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    env = nomad_env(
        "fetch",
        {"PYTHONPATH": str(evil), "PYTHONSTARTUP": str(evil / "json.py"), "PYTHONHOME": str(evil)},
        "j",
        "default",
    )
    run = run_plugin(plugin_dir / "secrets" / "aws", ["fetch", "x"], env)
    assert run.returncode == 0 and run.stderr == b""
    assert "PYTHONHOME" in json.loads(run.stdout)["error"]
    assert not marker.exists()


def _offline_build(output: Path, wheel_cache: Path, pip_config: Path) -> subprocess.CompletedProcess[str]:
    """scripts/build with pip pointed at nothing but ``pip_config``."""
    env = {**os.environ, "PIP_CONFIG_FILE": str(pip_config)}
    for key in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        env.pop(key, None)
    return run_build(output, output.parent / "cache", "--wheel-cache", str(wheel_cache), env=env)


def _warm_wheel_cache() -> Path:
    """The wheel cache the session's build filled (scripts/build's default)."""
    lock_key = hashlib.sha256((ROOT / "locks" / "runtime.txt").read_bytes()).hexdigest()[:16]
    env_cache = os.environ.get("NOMAD_SECRETS_WHEEL_CACHE")
    base = (
        Path(env_cache)
        if env_cache
        else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nomad-secrets" / "wheels"
    )
    return base / lock_key


def test_a_second_build_runs_offline_from_the_wheel_cache(artifact: Path, tmp_path: Path) -> None:
    """No index at all (pip would fail): the cached wheels give the same bytes."""
    if os.environ.get("NOMAD_SECRETS_TEST_ARTIFACT"):
        run_build(tmp_path / "warm", tmp_path / "warm-cache")  # fills the default wheel cache
    offline = tmp_path / "pip-offline.conf"
    offline.write_text("[global]\nno-index = true\nindex-url = http://127.0.0.1:9/\n")
    wheels = tmp_path / "wheels"
    shutil.copytree(_warm_wheel_cache(), wheels / _warm_wheel_cache().name)
    run = _offline_build(tmp_path / "offline" / "nomad-secrets", wheels, offline)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "downloading" not in run.stderr and run.stderr == ""
    built = tmp_path / "offline" / "nomad-secrets"
    same = build_artifact(tmp_path / "reference", tmp_path / "offline" / "cache")
    assert built.read_bytes() == same.read_bytes()


def test_a_changed_wheel_in_the_cache_is_not_used(tmp_path: Path) -> None:
    offline = tmp_path / "pip-offline.conf"
    offline.write_text("[global]\nno-index = true\n")
    wheels = tmp_path / "wheels" / _warm_wheel_cache().name
    shutil.copytree(_warm_wheel_cache(), wheels)
    tampered = sorted(wheels.glob("six-*.whl"))[0]
    tampered.write_bytes(tampered.read_bytes() + b"\0")
    run = _offline_build(tmp_path / "out" / "nomad-secrets", wheels.parent, offline)
    # The lock's hash is missing from the cache, so the build asks the index again (none here).
    assert run.returncode != 0 and "downloading the locked wheels" in run.stderr
    assert "pip download failed" in run.stderr
    assert not (tmp_path / "out" / "nomad-secrets").exists()


def test_a_first_download_filters_pip_noise(tmp_path: Path) -> None:
    """This machine's pip config names index locations that do not exist;
    pip warns about each one. The build keeps its own lines only."""
    conf = tmp_path / "pip.conf"
    conf.write_text(
        "[global]\nno-index = false\nindex-url = file:///nonexistent/simple\n"
        f"find-links = {_warm_wheel_cache()}\n"
    )
    run = _offline_build(tmp_path / "out" / "nomad-secrets", tmp_path / "wheels", conf)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "downloading the locked wheels" in run.stderr
    assert "is ignored" not in run.stderr, run.stderr
