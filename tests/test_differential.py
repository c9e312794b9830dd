"""The executable against the libraries users know, on the same servers.

The plugin carries its own lean clients (urllib3 for Vault, botocore without
boto3 for AWS: docs/performance.md). Here each read case goes both ways: the
built executable, run as Nomad runs it, and ``hvac`` (against the same real
OpenBao server) or ``boto3`` (against the same moto server). The library's
answer, shaped by the rules docs/references.md writes down ("Result keys
and values"), must equal the plugin's result. The rules are written again
here from the docs, not imported from nomad_secrets.core.shape.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import boto3
import hvac
from conftest import REGION
from support.nomad import NomadClient
from support.openbao import Vault, unique

VALUE: dict[str, Any] = {
    "s": "text",
    "n": 5432,
    "f": 1.5,
    "t": True,
    "z": None,
    "o": {"a": [1, "two"], "u": "ключ ✓"},
    "l": ["x", {"y": None}],
    "u": "pässwörd 🔑",
}


def text(value: Any) -> str:
    """A value as docs/references.md says: strings as they are, numbers and
    booleans as JSON text, objects and arrays as compact JSON, null as ""."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def fields(data: dict[str, Any], name: str | None = None) -> dict[str, str]:
    """A map gives one key per field (NAME_field under a NAME)."""
    return {(k if name is None else f"{name}_{k}"): text(v) for k, v in data.items()}


def secret_string(value: str) -> dict[str, str]:
    """SecretString: a JSON object gives its fields, other text gives value."""
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    return fields(parsed) if isinstance(parsed, dict) else {"value": value}


# --- Vault: hvac ------------------------------------------------------------------------


def test_vault_reads_equal_hvacs(vault: Vault) -> None:
    server, name = vault.server, unique()
    server.put_kv("secret", name, {"first": "version"})
    server.put_kv("secret", name, VALUE)
    server.put_kv("kv1", name, VALUE)
    client = hvac.Client(url=server.address, token=vault.bao.plugin_token)
    kv2 = client.secrets.kv.v2
    latest = kv2.read_secret_version(path=name, raise_on_deleted_version=True)["data"]["data"]
    cases = {
        f"vault:secret/{name}": fields(latest),
        f"vault:secret/{name}?version=1": fields(
            kv2.read_secret_version(path=name, version=1, raise_on_deleted_version=True)["data"]["data"]
        ),
        f"vault:kv1/{name}": fields(client.secrets.kv.v1.read_secret(path=name, mount_point="kv1")["data"]),
        "vault:pki/cert/ca": fields(client.read("pki/cert/ca")["data"]),
        # A selector: an object gives its fields, a scalar or an array gives value.
        f"vault:secret/{name}#/o": fields(latest["o"]),
        f"vault:secret/{name}#/o/a": {"value": text(latest["o"]["a"])},
        f"vault:secret/{name}#n": {"value": text(latest["n"])},
        f"db = vault:secret/{name}\nca = vault:pki/cert/ca\n": {
            **fields(latest, "db"),
            **fields(client.read("pki/cert/ca")["data"], "ca"),
        },
    }
    for reference, expected in cases.items():
        assert vault.fetch(reference).result == expected, reference


def test_vault_namespace_reads_equal_hvacs(vault: Vault) -> None:
    client = hvac.Client(url=vault.server.address, token=vault.server.root, namespace="ns1")
    vault.configure(token=vault.server.root, namespace="ns1")
    for path in ("kv/app/db", "child/kv/app/db"):
        mount, _, rest = path.rpartition("kv/")
        data = client.secrets.kv.v2.read_secret_version(
            path=rest, mount_point=f"{mount}kv", raise_on_deleted_version=True
        )["data"]["data"]
        assert vault.fetch(f"vault:{path}").result == fields(data), path


# --- AWS: boto3 -------------------------------------------------------------------------


def test_aws_reads_equal_boto3s(nomad: NomadClient, moto_endpoint: str) -> None:
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )
    sm = session.client("secretsmanager", endpoint_url=moto_endpoint)
    ssm = session.client("ssm", endpoint_url=moto_endpoint)
    base = "diff-" + uuid.uuid4().hex[:8]
    sm.create_secret(Name=f"{base}/json", SecretString=json.dumps(VALUE, ensure_ascii=False))
    sm.create_secret(Name=f"{base}/text", SecretString="plain ✓ text")
    sm.create_secret(Name=f"{base}/binary", SecretBinary=b"\x00\x01\xfe\xff")
    sm.put_secret_value(SecretId=f"{base}/text", SecretString="second")
    params = {"plain": ("String", "a"), "list": ("StringList", "a,b,c"), "secure": ("SecureString", "s3cr3t")}
    for key, (kind, value) in params.items():
        ssm.put_parameter(Name=f"/{base}/{key}", Value=value, Type=kind)
    ssm.put_parameter(Name=f"/{base}/deep/json", Value=json.dumps({"k": 1}), Type="SecureString")

    def secret(name: str, **extra: str) -> dict[str, str]:
        answer = sm.get_secret_value(SecretId=name, **extra)
        if "SecretBinary" in answer:
            return {"value_base64": base64.b64encode(answer["SecretBinary"]).decode()}
        return secret_string(answer["SecretString"])

    def parameter(name: str) -> dict[str, str]:
        return secret_string(ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"])

    def under(name: str) -> str:
        return name[len(base) + 2 :].replace("/", "_")

    below = ssm.get_parameters_by_path(Path=f"/{base}/", WithDecryption=True)["Parameters"]
    deep = ssm.get_parameters_by_path(Path=f"/{base}/", WithDecryption=True, Recursive=True)["Parameters"]
    cases = {
        f"aws-sm:{base}/json": secret(f"{base}/json"),
        f"aws-sm:{base}/text": secret(f"{base}/text"),
        f"aws-sm:{base}/text?version_stage=AWSPREVIOUS": secret(f"{base}/text", VersionStage="AWSPREVIOUS"),
        f"aws-sm:{base}/binary": secret(f"{base}/binary"),
        f"aws-sm:{base}/json#/o/u": {"value": VALUE["o"]["u"]},
        **{f"aws-ssm:/{base}/{key}": parameter(f"/{base}/{key}") for key in params},
        f"aws-ssm:/{base}/deep/json": parameter(f"/{base}/deep/json"),
        # Below a path: the names under the prefix, "/" turned into "_", each
        # value as it is (a JSON object's fields only for a parameter read alone).
        f"aws-ssm:/{base}/": {p["Name"][len(base) + 2 :]: p["Value"] for p in below},
        f"aws-ssm:/{base}/?recursive=true": {
            p["Name"][len(base) + 2 :].replace("/", "_"): p["Value"] for p in deep
        },
    }
    assert len(below) == 3 and len(deep) == 4
    for reference, expected in cases.items():
        fetched = nomad.fetch("aws", reference, {"AWS_REGION": REGION})
        assert fetched.result == expected, (reference, fetched.plugin_error)
