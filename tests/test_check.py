"""`nomad-secrets check` through the built executable, as an operator runs it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, aws_config, write_config
from support.netutil import dead_port_url


def check(plugin_dir: Path, name: str = "aws") -> tuple[int, str]:
    proc = subprocess.run(
        [str(plugin_dir / "secrets" / name), "check"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert proc.stderr == ""
    return proc.returncode, proc.stdout


FAILS = " (a fetch that meets a PROBLEM above fails until it is fixed)"


def test_all_well_with_a_warning_for_a_rule_that_opens_everything(plugin_dir: Path, artifact: Path) -> None:
    (plugin_dir / "secrets" / "aws-ssm").symlink_to(artifact)
    code, out = check(plugin_dir)  # the tests' config: allow = ["*:**"]
    assert code == 0, out
    assert "aws -> AWS Secrets Manager (built-in name)" in out
    assert "aws-ssm -> AWS SSM Parameter Store (built-in name)" in out
    assert "static keys from the config are arn:aws:" in out  # sts:GetCallerIdentity answered
    assert "WARNING  a rule for every namespace and job allows a whole store" in out
    assert out.splitlines()[-1] == "result: OK: 0 problems, 1 warning"


def test_a_config_file_without_policy_is_a_problem(plugin_dir: Path, moto_endpoint: str) -> None:
    config = plugin_dir / "secrets" / "nomad-secrets.toml"
    config.write_text(aws_config(moto_endpoint))  # not write_config, which adds a rule
    code, out = check(plugin_dir)
    assert code == 1, out
    assert f"PROBLEM  the config file {config} has no [[policy]], so no job may read anything" in out


def test_policy_is_printed(plugin_dir: Path, moto_endpoint: str) -> None:
    write_config(
        plugin_dir, aws_config(moto_endpoint, '[[policy]]\nnamespace = "web*"\nallow = ["aws-sm:x/*"]\n')
    )
    code, out = check(plugin_dir)
    assert code == 0, out
    assert "rule 1: namespace 'web*', job '*' may read aws-sm:x/*" in out
    assert "WARNING" not in out


def test_unreachable_store_is_a_problem(plugin_dir: Path) -> None:
    write_config(plugin_dir, aws_config(dead_port_url()))
    code, out = check(plugin_dir)
    assert code == 1 and "PROBLEM  AWS" in out and "cannot reach" in out
    assert out.splitlines()[-1] == f"result: NOT OK: 1 problem, 1 warning{FAILS}"  # the wide rule


def test_untrusted_config_is_a_problem(plugin_dir: Path) -> None:
    (plugin_dir / "secrets" / "nomad-secrets.toml").chmod(0o664)
    code, out = check(plugin_dir)
    assert code == 1 and "writable by group or others" in out
    # the config is not even read, and the run ends as every other run does
    assert out.splitlines()[-1] == f"result: NOT OK: 1 problem, 0 warnings{FAILS}"


def test_a_writable_executable_is_a_problem(plugin_dir: Path, artifact: Path, tmp_path: Path) -> None:
    exe = tmp_path / "writable" / "nomad-secrets"
    exe.parent.mkdir()
    exe.write_bytes(artifact.read_bytes())
    exe.chmod(0o777)
    (plugin_dir / "secrets" / "aws").unlink()
    (plugin_dir / "secrets" / "aws").symlink_to(exe)
    code, out = check(plugin_dir)
    assert code == 1 and f"the executable {exe} is writable by group or others" in out


def test_run_outside_a_plugin_directory_says_how_to_run_it(artifact: Path) -> None:
    proc = subprocess.run([str(artifact), "check"], capture_output=True, text=True, env={}, timeout=60)
    assert "run check as <common_plugin_dir>/secrets/<provider name> check" in proc.stdout


def test_reserved_and_unconfigured_names_are_problems(plugin_dir: Path, artifact: Path) -> None:
    (plugin_dir / "secrets" / "vault").symlink_to(artifact)
    (plugin_dir / "secrets" / "mystery").symlink_to(artifact)
    code, out = check(plugin_dir)
    assert code == 1
    assert "vault: Nomad never runs a plugin named 'vault'" in out
    assert "mystery: provider 'mystery' is not configured" in out
    assert out.splitlines()[-1].startswith("result: NOT OK: 2 problems, ")


def test_version_and_help(plugin_dir: Path) -> None:
    proc = subprocess.run([str(plugin_dir / "secrets" / "aws"), "version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("nomad-secrets ")
    proc = subprocess.run([str(plugin_dir / "secrets" / "aws"), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "fetch <path>" in proc.stdout and "check" in proc.stdout


def test_ambiguous_web_identity_role_template_is_warned(plugin_dir: Path, moto_endpoint: str) -> None:
    role = "arn:aws:iam::123456789012:role/nomad-{namespace}-{job}"
    write_config(plugin_dir, aws_config(moto_endpoint, f'web_identity_role_arn = "{role}"\n'))
    code, out = check(plugin_dir)
    assert code == 0, out
    assert "WARNING  aws.web_identity_role_arn: {namespace}-{job}" in out
    assert "role/nomad/{namespace}@{job}" in out
    unambiguous = "arn:aws:iam::123456789012:role/nomad/{namespace}@{job}"
    write_config(plugin_dir, aws_config(moto_endpoint, f'web_identity_role_arn = "{unambiguous}"\n'))
    assert "web_identity_role_arn:" not in check(plugin_dir)[1]


def check_json(plugin_dir: Path, name: str = "aws") -> tuple[int, dict[str, object]]:
    import json

    proc = subprocess.run(
        [str(plugin_dir / "secrets" / name), "check", "--format", "json"],
        capture_output=True,
        text=True,
        env={},
        timeout=60,
    )
    assert proc.stderr == ""
    return proc.returncode, json.loads(proc.stdout)


def test_json_format_says_the_same_with_the_same_exit_status(plugin_dir: Path, moto_endpoint: str) -> None:
    code, report = check_json(plugin_dir)
    assert code == check(plugin_dir)[0] == 0
    assert report["result"] == "OK" and report["problems"] == 0 and report["warnings"] == 1
    assert report["providers"] == {
        "aws": {
            "store": "aws-sm",
            "source": "built-in name",
            "settings": {
                "aws": {
                    "region": "us-east-2",
                    "endpoint_url": moto_endpoint,
                    "endpoint_urls": {},
                    "access_key_id": "testing",
                    "secret_access_key": "(set, not shown)",
                    "session_token": None,
                    "job_region": True,
                    "web_identity_role_arn": None,
                    "cache_seconds": 0.0,
                    "cache_max_bytes": 4 * 1024 * 1024,
                    "stale_if_error_seconds": 0.0,
                }
            },
            "set_by_provider": [],
        }
    }
    levels = {(i["section"], i["level"]) for i in report["items"]}  # type: ignore[attr-defined]
    assert ("policy", "warning") in levels and ("stores", "ok") in levels

    write_config(plugin_dir, aws_config(dead_port_url()))
    code, report = check_json(plugin_dir)
    assert code == check(plugin_dir)[0] == 1
    assert report["result"] == "NOT OK" and report["problems"] == 1
    (problem,) = [i for i in report["items"] if i["level"] == "problem"]  # type: ignore[attr-defined]
    assert problem["section"] == "stores" and "cannot reach" in problem["message"]

    (plugin_dir / "secrets" / "nomad-secrets.toml").chmod(0o664)  # the config is not even read
    code, report = check_json(plugin_dir)
    assert code == check(plugin_dir)[0] == 1
    assert report["result"] == "NOT OK" and report["providers"] == {}
    assert "writable by group or others" in report["items"][0]["message"]  # type: ignore[index]


def test_the_readme_json_check_with_jq(plugin_dir: Path) -> None:
    """README's line for configuration management, as written."""
    import re
    import shutil

    jq = shutil.which("jq")
    if jq is None:
        pytest.skip("needs jq: run scripts/setup as root, or apt-get install jq")
    line = re.search(
        r"^/opt/nomad/data/common_plugins/secrets/aws check --format json \| jq -e '(.*)'$",
        (ROOT / "README.md").read_text(),
        re.M,
    )
    assert line, "README.md lost its check --format json example"
    aws = str(plugin_dir / "secrets" / "aws")
    ok = subprocess.run(f"{aws} check --format json | {jq} -e '{line.group(1)}'", shell=True, env={})
    assert ok.returncode == 0
    (plugin_dir / "secrets" / "nomad-secrets.toml").chmod(0o664)
    broken = subprocess.run(
        f"{aws} check --format json | {jq} -e '{line.group(1)}'", shell=True, env={}, capture_output=True
    )
    assert broken.returncode == 1 and broken.stdout == b"false\n"


def test_a_pinned_region_is_probed_with_the_config_region(plugin_dir: Path, moto_endpoint: str) -> None:
    """job_region = false: check's probe is not a job, and must not be
    refused as one setting AWS_REGION (it was, so check always failed)."""
    write_config(plugin_dir, aws_config(moto_endpoint, "job_region = false\n"))
    code, out = check(plugin_dir)
    assert code == 0, out
    assert "pins the AWS region" not in out


def test_check_says_what_the_cache_means_for_a_revoked_secret(plugin_dir: Path, moto_endpoint: str) -> None:
    """Off by default, and said so; once set, how long a secret revoked in
    the store can still be served, and that a store's not found ends it."""
    out = check(plugin_dir)[1]
    assert "cache: off (cache_seconds = 0)" in out
    assert "but no agent runs" not in out
    write_config(plugin_dir, aws_config(moto_endpoint, "cache_seconds = 30\nstale_if_error_seconds = 600\n"))
    code, out = check(plugin_dir)
    assert code == 0
    assert "aws.cache_seconds = 30  (from [aws])" in out
    assert "revoked in the store can still be served for up to 30 s (300 s for a read pinned" in out
    assert "for up to 600 s more (stale_if_error_seconds), but never once the store has said not found" in out
    # The tests' config says [agent] auto = false and no agent runs: kept values would live nowhere.
    assert "WARNING  cache_seconds is set, but no agent runs" in out
    write_config(plugin_dir, aws_config(moto_endpoint, "cache_seconds = -1\n"))
    assert "aws.cache_seconds in" in check(plugin_dir)[1]
