"""The operator's config file: lookup order, schema, provider resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import aws_config, write_config
from nomad import NomadClient

from nomad_secrets import config
from nomad_secrets.errors import ConfigError


def test_no_file_means_builtin_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "SYSTEM_CONFIG", str(tmp_path / "absent.toml"))
    loaded = config.load(str(tmp_path / "aws"))
    assert loaded.path is None
    assert loaded.provider("aws").store == "aws-sm"
    assert loaded.provider("aws-ssm").store == "aws-ssm"
    assert loaded.plugin.deadline_seconds == 8.0


def test_file_beside_the_executable_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "etc.toml"
    system.write_text("[plugin]\ndeadline_seconds = 3\n")
    monkeypatch.setattr(config, "SYSTEM_CONFIG", str(system))
    assert config.load(str(tmp_path / "aws")).plugin.deadline_seconds == 3
    (tmp_path / "nomad-secrets.toml").write_text("[plugin]\ndeadline_seconds = 5\n")
    assert config.load(str(tmp_path / "aws")).plugin.deadline_seconds == 5


def test_providers_section() -> None:
    loaded = config.parse(
        b'[providers.openbao]\nstore = "vault"\n[providers.params]\nstore = "aws-ssm"\n', "f"
    )
    assert loaded.provider("openbao").store == "vault"
    assert loaded.provider("params").store == "aws-ssm"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("bogus = 1\n", "unknown key 'bogus' in f"),
        ("[aws]\nregion = 3\n", "aws.region in f must be a string"),
        ("[aws]\njob_region = 'yes'\n", "aws.job_region in f must be a boolean"),
        ("[plugin]\ndeadline_seconds = true\n", "must be a number"),
        ("[plugin]\ndeadline_seconds = 0\n", "between 0 and 3600"),
        ("[providers.x]\nstore = 'redis'\n", "use one of aws-sm, aws-ssm, vault"),
        ("[providers.x]\nstore = 'vault'\nextra = 1\n", "unknown key 'providers.x.extra'"),
        ("[providers.nomad]\nstore = 'vault'\n", "never runs a plugin named 'nomad'"),
        ("providers = 1\n", "providers in f must be a table"),
    ],
)
def test_errors_name_the_key_and_the_file(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        config.parse(text.encode(), "f")


def test_unknown_provider_says_how_to_configure_it() -> None:
    with pytest.raises(ConfigError, match=r"add \[providers.db\]"):
        config.Config().provider("db")


@pytest.fixture
def nomad_plugin_dir_with_policy(nomad: NomadClient, moto_endpoint: str) -> tuple[NomadClient, Path]:
    policy = '[[policy]]\nallow = ["aws-sm:nomad/{namespace}/{job}/**"]\n'
    return nomad, write_config(nomad.plugin_dir, aws_config(moto_endpoint, policy))


def test_an_empty_config_is_an_error_not_no_policy(
    nomad_plugin_dir_with_policy: tuple[NomadClient, Path],
) -> None:
    """An empty file is what a reader sees while cp or an editor rewrites it:
    taken as "no config" it switched the policy off (a reviewer got 16 of 60
    fetches through with no policy while cp rewrote the file)."""
    nomad, config = nomad_plugin_dir_with_policy
    config.write_text("")
    message = nomad.fetch("aws", "prod/db", {"AWS_REGION": "us-east-2"}).plugin_error or ""
    assert f"the config file {config} is empty" in message and "rename it into place" in message


def test_a_config_written_while_a_fetch_reads_it_is_read_whole(
    nomad_plugin_dir_with_policy: tuple[NomadClient, Path],
) -> None:
    """Truncated, then written 0.1 s later (as cp does, slowly): the fetch
    that starts in between gets the policy's answer, not no policy."""
    import threading
    import time

    nomad, config = nomad_plugin_dir_with_policy
    text = config.read_text()
    config.write_text("")

    def finish() -> None:
        time.sleep(0.1)
        config.write_text(text)

    writer = threading.Thread(target=finish)
    writer.start()
    message = nomad.fetch("aws", "prod/db", {"AWS_REGION": "us-east-2"}, job_id="web").plugin_error or ""
    writer.join()
    assert "the operator's policy does not let namespace 'default', job 'web'" in message
