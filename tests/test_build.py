"""The executable: reproducible, pruned, isolated; its unpack cache: trusted
only when private, safe when many plugins start at once on a fresh node."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from conftest import ROOT, aws_config, build_artifact, interpreter
from nomad import NomadClient, install_plugin, nomad_env, run_plugin

from nomad_secrets._version import GO_VERSION


def test_same_source_and_lock_give_the_same_bytes(artifact: Path, tmp_path: Path) -> None:
    again = build_artifact(tmp_path / "again", artifact.parent / "cache")
    assert again.read_bytes() == artifact.read_bytes()


def test_shebang_runs_the_interpreter_isolated(artifact: Path) -> None:
    first_line = artifact.read_bytes().split(b"\n", 1)[0]
    assert first_line == f"#!{interpreter()} -IS".encode()
    assert os.access(artifact, os.X_OK)


def test_contents_are_pure_python_with_botocore_data_pruned(artifact: Path) -> None:
    with zipfile.ZipFile(artifact) as zf:
        assert sorted(zf.namelist()) == [
            "__main__.py",
            "build-info",
            "fingerprint.json",
            "lib.zip",
            "nomad_secrets_trust.py",
        ]
        assert zf.read("fingerprint.json") == b'{"type": "secrets", "version": "%s"}\n' % GO_VERSION.encode()
        with zipfile.ZipFile(io.BytesIO(zf.read("lib.zip"))) as lib:
            names = lib.namelist()
            model = json.loads(lib.read("lib/botocore/data/ssm/2014-11-06/service-2.json"))
    assert set(model["operations"]) == {"GetParameter", "GetParametersByPath"}
    assert "documentation" not in json.dumps(model["operations"])
    services = {n.split("/")[3] for n in names if n.startswith("lib/botocore/data/") and n.count("/") > 4}
    assert services == {"secretsmanager", "ssm", "sts"}
    assert not [n for n in names if n.endswith((".so", ".pyd", ".pyc"))]
    for package in ("botocore", "urllib3", "tomli", "nomad_secrets", "packaging"):
        assert any(n.startswith(f"lib/{package}/") for n in names), package
    assert not any(n.startswith(("lib/bin/", "lib/boto3/", "lib/hvac/", "lib/requests/")) for n in names)
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


def _fresh_plugin(tmp_path: Path, moto_endpoint: str) -> tuple[Path, Path]:
    cache = tmp_path / "cache"
    exe = build_artifact(tmp_path / "nomad-secrets", cache)
    install_plugin(exe, tmp_path / "plugins", ["aws"], aws_config(moto_endpoint))
    return tmp_path / "plugins", cache


def test_many_first_runs_at_once_share_one_unpack(
    tmp_path: Path, moto_endpoint: str, secretsmanager: Any, decoder: Any
) -> None:
    plugins, cache = _fresh_plugin(tmp_path, moto_endpoint)
    secretsmanager.create_secret(Name="concurrent-first-run", SecretString='{"k": "v"}')
    nomad = NomadClient(plugins, decoder)
    with ThreadPoolExecutor(8) as pool:
        runs = list(pool.map(lambda _: nomad.fetch("aws", "concurrent-first-run"), range(8)))
    assert [r.result for r in runs] == [{"k": "v"}] * 8
    entries = os.listdir(cache)
    assert len(entries) == 1 and not entries[0].startswith(".unpack-"), entries
    assert (os.stat(cache).st_mode & 0o077) == 0


def test_cache_writable_by_others_is_refused(tmp_path: Path, moto_endpoint: str, decoder: Any) -> None:
    plugins, cache = _fresh_plugin(tmp_path, moto_endpoint)
    cache.mkdir()
    cache.chmod(0o777)
    fetched = NomadClient(plugins, decoder).fetch("aws", "x")
    assert fetched.run.returncode == 0 and not fetched.ok
    error = fetched.plugin_error or ""
    assert f"the cache directory {cache} is writable by group or others" in error
    assert f"chmod go-w {cache}" in error
    assert os.listdir(cache) == []  # nothing unpacked into it


def test_cache_under_a_directory_writable_by_others_is_refused(
    tmp_path: Path, moto_endpoint: str, decoder: Any
) -> None:
    plugins, cache = _fresh_plugin(tmp_path, moto_endpoint)
    tmp_path.chmod(0o777)  # the cache's parent: anyone could swap the cache for their own
    try:
        fetched = NomadClient(plugins, decoder).fetch("aws", "x")
    finally:
        tmp_path.chmod(0o700)
    assert fetched.run.returncode == 0 and not fetched.ok
    assert f"the directory {tmp_path} is writable by group or others" in (fetched.plugin_error or "")
    assert not cache.exists()  # refused before anything was written


def test_cache_entry_replaced_by_a_symlink_is_refused(
    tmp_path: Path, moto_endpoint: str, decoder: Any
) -> None:
    plugins, cache = _fresh_plugin(tmp_path, moto_endpoint)
    nomad = NomadClient(plugins, decoder)
    nomad.fetch("aws", "x")  # unpacks
    (entry,) = os.listdir(cache)
    shutil.move(cache / entry, tmp_path / "elsewhere")
    (cache / entry).symlink_to(tmp_path / "elsewhere")
    fetched = nomad.fetch("aws", "x")
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
