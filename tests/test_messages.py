"""Messages that name the real mistake, through the executable as Nomad runs
it: the region a read searched, a lone NAME = reference line, a misspelt
scheme, a region AWS does not have."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from conftest import REGION, aws_config, put_secret, write_config
from support.netutil import dead_port_url
from support.nomad import NomadClient


def error_of(nomad: NomadClient, path: str, env: dict[str, str] | None = None) -> str:
    fetched = nomad.fetch("aws", path, env)
    assert not fetched.ok and fetched.run.returncode == 0
    return fetched.plugin_error or ""


def test_not_found_names_the_region_searched_and_who_chose_it(nomad: NomadClient) -> None:
    error = error_of(nomad, "prod/no-such-db", {"AWS_REGION": "eu-west-1"})
    assert "'prod/no-such-db' (AWS Secrets Manager): not found in eu-west-1 (AWS said" in error
    assert (
        "check the name of secret 'prod/no-such-db', and the region (eu-west-1: the job's AWS_REGION)"
        in error
    )
    error = error_of(nomad, "aws-ssm:/no/such/param")  # no AWS_REGION: the config's
    assert f"not found in {REGION} (AWS said ParameterNotFound" in error
    assert f"and the region ({REGION}: aws.region in the config)" in error
    error = error_of(nomad, "aws-ssm:/no/such/path/")
    assert f"no parameters below this path in {REGION}" in error


def test_a_lone_named_line_is_not_read_as_a_secret_name(nomad: NomadClient, secretsmanager: Any) -> None:
    put_secret(secretsmanager, "prod/db", '{"password": "pw"}')
    for path in ("db = aws-sm:prod/db", "db=aws-sm:prod/db"):
        error = error_of(nomad, path)
        assert error.startswith(f"the secret path {path!r} is one NAME = reference line")
        assert 'for one reference write path = "aws-sm:prod/db"' in error
        assert "heredoc" in error and "not found" not in error
    # as a heredoc it works
    assert nomad.fetch("aws", "db = aws-sm:prod/db\n").result == {"db_password": "pw"}


@pytest.mark.parametrize(
    ("path", "meant"),
    [
        ("aws-sn:prod/api", "aws-sm:"),
        ("aws-ssn:/prod/api", "aws-ssm:"),
        ("vualt:secret/app", "vault:"),
        ("ssm:/prod/app/flags", "aws-ssm:"),
        ("api = aws_sm:prod/api\n", "aws-sm:"),
    ],
)
def test_a_misspelt_scheme_is_named(nomad: NomadClient, path: str, meant: str) -> None:
    error = error_of(nomad, path)
    typo = path.split("=")[-1].strip().split(":")[0]
    assert f"starts with '{typo}:', which is not a scheme; did you mean '{meant}'?" in error
    assert "The schemes are aws-sm:, aws-ssm:, vault:" in error


def test_names_with_colons_that_are_not_schemes_still_read(nomad: NomadClient, ssm: Any) -> None:
    ssm.put_parameter(Name="vaul", Value="v1", Type="String", Overwrite=True)
    (nomad.plugin_dir / "secrets" / "aws-ssm").symlink_to(nomad.executable("aws").resolve())
    assert nomad.fetch("aws-ssm", "vaul:1").result == {"value": "v1"}  # parameter vaul, version 1


def test_a_region_aws_does_not_have(nomad: NomadClient) -> None:
    """moto answers HTTP 500 for it; AWS itself has no endpoint name for it."""
    error = error_of(nomad, "prod/api", {"AWS_REGION": "us-est-2"})
    assert error.startswith(
        "'prod/api' (AWS Secrets Manager): 'us-est-2' (the job's AWS_REGION) is not an AWS region"
    )
    assert "set AWS_REGION in the secret block's env to an AWS region, such as us-east-2" in error
    assert "check the reference and its options" not in error


@pytest.mark.parametrize("region", ["", "EU-WEST-1", "useast2"])
def test_a_region_not_shaped_like_one_says_what_to_set(nomad: NomadClient, region: str) -> None:
    """Before any reference is read: the block's env is wrong, whatever the path."""
    error = error_of(nomad, "prod/api", {"AWS_REGION": region})
    assert error == (
        f"the secret block's env sets AWS_REGION={region!r}, which is not an AWS region name:"
        " set it to one, such as us-east-2, or remove it to read in the operator's region"
    )


def test_a_region_aws_does_not_have_in_the_config(nomad: NomadClient) -> None:
    """What AWS's own endpoint gives for an unknown region: no host to
    connect to (a dead port here)."""
    write_config(nomad.plugin_dir, aws_config(dead_port_url()).replace(REGION, "eu-wst-1"))
    error = error_of(nomad, "prod/api")
    assert "'eu-wst-1' (aws.region in the config) is not an AWS region" in error
    assert "set aws.region in the operator's config" in error
    assert "cannot reach" not in error


def test_the_readme_error_example_is_what_a_job_sees(nomad: NomadClient, secretsmanager: Any) -> None:
    import re

    from conftest import ROOT

    shown = re.search(
        r'^provider "aws" for secret "db" response contained error: "(.*)"$',
        (ROOT / "README.md").read_text(),
        re.M,
    )
    assert shown, "README.md lost its error example"
    error = error_of(nomad, "prod/dbb", {"AWS_REGION": "us-east-2"})
    # moto's words for ResourceNotFoundException differ from AWS's: compare ours around them
    ours = re.sub(r"\(AWS said [^)]*\)", "(AWS said ...)", error)
    assert ours == re.sub(r"\(AWS said [^)]*\)", "(AWS said ...)", shown.group(1))


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            b"[aws\nregion = 'us-east-1'\n",
            "is not valid TOML: Expected ']' at the end of a table declaration"
            " (at line 1, column 5): correct it there",
        ),
        (b"[aws]\nregion = 'us-east-1'\n# caf\xe9\n", "is not UTF-8 (line 3): save it as UTF-8"),
    ],
)
def test_a_config_that_cannot_be_read_says_where_and_what_next(
    nomad: NomadClient, text: bytes, said: str
) -> None:
    """The operator review: a config that is not TOML named the parser's
    complaint but no next step."""
    path = write_config(nomad.plugin_dir, "")
    path.write_bytes(text)
    error = error_of(nomad, "prod/db")
    command = f"{nomad.executable('aws')} check"  # the executable that read it
    assert error == f"the config file {path} {said}, then run `{command}`, which reads it the same way"
    argv = command.split()  # the command as written: it reads that file
    check = subprocess.run(argv, env={}, capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 1 and f"the config file {path} {said}" in check.stdout, check


@pytest.mark.parametrize("path", ["db = ", "db ="])
def test_a_named_line_without_its_reference_says_it_is_missing(nomad: NomadClient, path: str) -> None:
    """The hostile review: "db = " was told to write path = "" instead, and
    the same line in a heredoc was called an empty path."""
    error = error_of(nomad, path)
    assert error == (
        f"the secret path {path!r} names the key 'db' but no reference after its =: write the"
        " reference there, in a heredoc of NAME = reference lines"
    ), error
    error = error_of(nomad, f"api = aws-sm:prod/api\n{path}\n")
    assert error == "line 2 of the secret path names the key 'db' but no reference after its =", error
