"""AWS Secrets Manager and SSM Parameter Store, against moto's server,
through the built executable: the shared contract plus each store's own
features."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from conftest import MotoIam, aws_config, put_secret, write_config
from support.backend_contract import StoreContract
from support.netutil import RecordingProxy
from support.nomad import NomadClient

ACCOUNT = "123456789012"  # moto's default account


class AwsStore(StoreContract):
    env = {"AWS_REGION": "us-east-2"}  # noqa: RUF012

    @pytest.fixture(autouse=True)
    def _clients(self, secretsmanager: Any, ssm: Any, moto_endpoint: str) -> None:
        self.sm, self.ssm, self.endpoint = secretsmanager, ssm, moto_endpoint

    def point_at(self, nomad: NomadClient, url: str, extra: str = "") -> None:
        write_config(nomad.plugin_dir, aws_config(url, extra))


class TestSecretsManager(AwsStore):
    label = "AWS Secrets Manager"

    def put_text(self, name: str, text: str) -> str:
        self.sm.create_secret(Name=name, SecretString=text)
        return f"aws-sm:{name}"

    def put_binary(self, name: str, data: bytes) -> str:
        self.sm.create_secret(Name=name, SecretBinary=data)
        return name  # no scheme: the provider `aws` means Secrets Manager

    def put_versions(self, name: str, first: str, second: str) -> tuple[str, str]:
        self.sm.create_secret(Name=name, SecretString=first)
        self.sm.put_secret_value(SecretId=name, SecretString=second)
        return f"aws-sm:{name}?version_stage=AWSPREVIOUS", f"aws-sm:{name}"

    def missing(self) -> str:
        return "aws-sm:missing-" + uuid.uuid4().hex[:8]

    def test_denied(self, nomad: NomadClient, moto_iam: MotoIam) -> None:  # type: ignore[override]
        """Denied as AWS reports it: moto's server with IAM enforcement on
        (a second server, so the other tests stay open)."""
        self.point_at(nomad, moto_iam.endpoint)
        write_config(nomad.plugin_dir, moto_iam.config())
        self.failed(
            self.fetch(nomad, "aws-sm:denied-secret"),
            "'aws-sm:denied-secret'",
            self.label,
            "access denied",
            "secretsmanager:GetSecretValue",
            "user/node",
        )

    def test_by_arn(self, nomad: NomadClient) -> None:
        name = self.name()
        arn = self.sm.create_secret(Name=name, SecretString="by arn")["ARN"]
        assert arn.startswith(f"arn:aws:secretsmanager:us-east-2:{ACCOUNT}:secret:{name}")
        assert self.fetch(nomad, arn).result == {"value": "by arn"}
        assert self.fetch(nomad, "aws-sm:" + arn).result == {"value": "by arn"}

    def test_version_id(self, nomad: NomadClient) -> None:
        name = self.name()
        first = self.sm.create_secret(Name=name, SecretString="v1")["VersionId"]
        self.sm.put_secret_value(SecretId=name, SecretString="v2")
        assert self.fetch(nomad, f"{name}?version_id={first}").result == {"value": "v1"}
        self.failed(self.fetch(nomad, f"{name}?version_id={first}&version_stage=AWSCURRENT"), "not both")

    def test_scheduled_for_deletion_reads_as_not_found(self, nomad: NomadClient) -> None:
        name = self.name()
        self.sm.create_secret(Name=name, SecretString="x")
        self.sm.delete_secret(SecretId=name, RecoveryWindowInDays=7)
        self.failed(self.fetch(nomad, name), "scheduled for deletion")


class TestParameterStore(AwsStore):
    label = "AWS SSM Parameter Store"

    def large_size(self) -> int:
        return 8 * 1024  # the advanced tier's limit; moto enforces 4096 for Standard

    def put_text(self, name: str, text: str) -> str:
        tier = "Advanced" if len(text.encode()) > 4096 else "Standard"
        self.ssm.put_parameter(Name=f"/{name}", Value=text, Type="SecureString", Tier=tier)
        return f"aws-ssm:/{name}"

    def put_binary(self, name: str, data: bytes) -> None:
        return None  # parameters are text only

    def put_versions(self, name: str, first: str, second: str) -> tuple[str, str]:
        self.ssm.put_parameter(Name=f"/{name}", Value=first, Type="String")
        self.ssm.put_parameter(Name=f"/{name}", Value=second, Type="String", Overwrite=True)
        return f"aws-ssm:/{name}:1", f"aws-ssm:/{name}?version=2"

    def missing(self) -> str:
        return "aws-ssm:/missing/" + uuid.uuid4().hex[:8]

    def test_denied(self, nomad: NomadClient, moto_iam: MotoIam) -> None:  # type: ignore[override]
        write_config(nomad.plugin_dir, moto_iam.config())
        self.failed(
            self.fetch(nomad, "aws-ssm:/denied/p"),
            "'aws-ssm:/denied/p'",
            self.label,
            "access denied",
            "ssm:GetParameter",
        )
        self.failed(self.fetch(nomad, "aws-ssm:/denied/"), "access denied", "ssm:GetParametersByPath")

    def test_string_list_and_label(self, nomad: NomadClient) -> None:
        name = f"/{self.name()}"
        self.ssm.put_parameter(Name=name, Value="a,b,c", Type="StringList")
        self.ssm.label_parameter_version(Name=name, ParameterVersion=1, Labels=["stable"])
        assert self.fetch(nomad, f"aws-ssm:{name}").result == {"value": "a,b,c"}
        assert self.fetch(nomad, f"aws-ssm:{name}:stable").result == {"value": "a,b,c"}
        assert self.fetch(nomad, f"aws-ssm:{name}?label=stable").result == {"value": "a,b,c"}

    def test_by_arn(self, nomad: NomadClient) -> None:
        name = self.name()
        self.ssm.put_parameter(Name=f"/{name}", Value="by arn", Type="String")
        arn = f"arn:aws:ssm:us-east-2:{ACCOUNT}:parameter/{name}"
        assert self.fetch(nomad, f"aws-ssm:{arn}").result == {"value": "by arn"}

    def test_path_prefix(self, nomad: NomadClient) -> None:
        top = f"/{self.name()}"
        for leaf, value in {"db/password": "pw", "db/user": "u", "api_key": "k", "deep/er/x": "x"}.items():
            self.ssm.put_parameter(Name=f"{top}/{leaf}", Value=value, Type="SecureString")
        assert self.fetch(nomad, f"aws-ssm:{top}/").result == {"api_key": "k"}
        assert self.fetch(nomad, f"aws-ssm:{top}/?recursive=true").result == {
            "api_key": "k",
            "db_password": "pw",
            "db_user": "u",
            "deep_er_x": "x",
        }
        named = self.fetch(nomad, f"app = aws-ssm:{top}/db/\n")
        assert named.result == {"app_password": "pw", "app_user": "u"}

    def test_path_prefix_every_page(self, nomad: NomadClient) -> None:
        top = f"/{self.name()}"
        for i in range(23):  # GetParametersByPath pages hold 10
            self.ssm.put_parameter(Name=f"{top}/p{i:02d}", Value=str(i), Type="String")
        result = self.fetch(nomad, f"aws-ssm:{top}/").result
        assert result == {f"p{i:02d}": str(i) for i in range(23)}

    def test_prefix_key_collision_is_an_error(self, nomad: NomadClient) -> None:
        top = f"/{self.name()}"
        self.ssm.put_parameter(Name=f"{top}/a/b", Value="1", Type="String")
        self.ssm.put_parameter(Name=f"{top}/a_b", Value="2", Type="String")
        self.failed(self.fetch(nomad, f"aws-ssm:{top}/?recursive=true"), "both give the key 'a_b'")

    def test_provider_named_for_ssm(self, nomad: NomadClient, artifact: Any) -> None:
        (nomad.plugin_dir / "secrets" / "aws-ssm").symlink_to(artifact)
        name = self.name()
        self.ssm.put_parameter(Name=f"/{name}", Value=json.dumps({"k": "v"}), Type="String")
        assert nomad.fetch("aws-ssm", f"/{name}", self.env).result == {"k": "v"}

    @pytest.mark.parametrize(
        ("suffix", "needle"),
        [
            ("?version=x", "version must be a number"),
            ("?version=1&label=a", "not both"),
            ("?recursive=true", "end the name with /"),
            ("?bogus=1", "unknown option 'bogus'"),
        ],
    )
    def test_option_errors(self, nomad: NomadClient, suffix: str, needle: str) -> None:
        self.failed(self.fetch(nomad, f"aws-ssm:/x{suffix}"), needle)


@pytest.mark.parametrize("path", ["aws-ssm:/throttled/param", "aws-sm:throttled-secret"])
def test_throttling_is_retried_with_backoff(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, ssm: Any, path: str
) -> None:
    put_secret(secretsmanager, "throttled-secret", "ok")
    ssm.put_parameter(Name="/throttled/param", Value="ok", Type="String", Overwrite=True)
    with RecordingProxy(moto_endpoint, throttle=2) as proxy:
        write_config(nomad.plugin_dir, aws_config(proxy.url))
        assert nomad.fetch("aws", path, {"AWS_REGION": "us-east-2"}).result == {"value": "ok"}
    assert len(proxy.requests) == 3  # two throttled, the third answered


@pytest.mark.long
def test_throttling_that_lasts_is_a_throttled_error(nomad: NomadClient, moto_endpoint: str) -> None:
    with RecordingProxy(moto_endpoint, throttle=100) as proxy:
        write_config(nomad.plugin_dir, aws_config(proxy.url))
        fetched = nomad.fetch("aws", "aws-ssm:/throttled/param", {"AWS_REGION": "us-east-2"})
    assert not fetched.ok and fetched.run.returncode == 0
    assert "'aws-ssm:/throttled/param' (AWS SSM Parameter Store): throttled" in str(fetched.plugin_error)
    assert len(proxy.requests) == 4  # botocore's standard mode, total_max_attempts = 4


def test_stores_mix_in_one_path(nomad: NomadClient, secretsmanager: Any, ssm: Any) -> None:
    name = "mix-" + uuid.uuid4().hex[:8]
    secretsmanager.create_secret(Name=name, SecretString=json.dumps({"password": "pw"}))
    ssm.put_parameter(Name=f"/{name}", Value="param", Type="String")
    fetched = nomad.fetch(
        "aws", f"db = {name}#password\nparam = aws-ssm:/{name}\n", {"AWS_REGION": "us-east-2"}
    )
    assert fetched.result == {"db": "pw", "param": "param"}
