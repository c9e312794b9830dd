"""AWS SSM Parameter Store: one parameter, or every parameter below a path.

- ``aws-ssm:/app/db/password`` reads one parameter (String, StringList or
  SecureString, decrypted), by name or ARN; ``:3`` / ``:label`` after the
  name, or the options ``version=3`` / ``label=x``, pick a version.
- ``aws-ssm:/app/`` (a trailing ``/``) reads every parameter directly below
  it with GetParametersByPath, every page; ``recursive=true`` goes deeper.
  Keys are the names below the prefix with ``/`` turned into ``_``
  (``/app/db/password`` under ``/app/`` is ``db_password``); two names that
  give one key are an error.

Throttling is retried by botocore's standard retry mode (exponential
backoff with jitter, 4 attempts in all), inside the fetch's deadline.
"""

from __future__ import annotations

from typing import Any

from nomad_secrets.core.reference import Reference
from nomad_secrets.core.shape import Raw
from nomad_secrets.process.errors import InvalidSecret, RequestError
from nomad_secrets.stores.aws.store import AwsStore, aws_errors, not_an_aws_answer

OPTIONS = ("version", "label", "recursive")
MAX_PAGES = 100  # 10 parameters a page: far more than a task should need


class ParameterStore(AwsStore):
    service = "ssm"
    label = "AWS SSM Parameter Store"

    def read(self, ref: Reference) -> Raw:
        options = ref.options_for(self.label, OPTIONS)
        if ref.locator.endswith("/"):
            if "version" in options or "label" in options:
                raise RequestError(f"{ref.text!r} ({self.label}): a path prefix has no version or label")
            return self._by_path(ref, options.get("recursive", "false"))
        if "recursive" in options:
            raise RequestError(
                f"{ref.text!r} ({self.label}): recursive applies to a path prefix; end the name with /"
            )
        return self._one(ref, options)

    def _one(self, ref: Reference, options: dict[str, str]) -> str:
        name = ref.locator
        if "version" in options and "label" in options:
            raise RequestError(f"{ref.text!r} ({self.label}): set version or label, not both")
        if "version" in options:
            if not options["version"].isdigit():
                raise RequestError(f"{ref.text!r} ({self.label}): version must be a number")
            name += ":" + options["version"]
        elif "label" in options:
            name += ":" + options["label"]
        response = self._call(
            ref,
            "ssm:GetParameter",
            f"parameter {ref.locator!r}",
            "get_parameter",
            Name=name,
            WithDecryption=True,
        )
        parameter = response.get("Parameter")
        if not isinstance(parameter, dict) or not isinstance(parameter.get("Value"), str):
            raise not_an_aws_answer(ref.text, self.label)
        return str(parameter["Value"])

    def _by_path(self, ref: Reference, recursive: str) -> dict[str, object]:
        if recursive not in ("true", "false"):
            raise RequestError(f"{ref.text!r} ({self.label}): recursive is true or false")
        prefix = ref.locator
        params: dict[str, Any] = {
            "Path": prefix.rstrip("/") or "/",
            "Recursive": recursive == "true",
            "WithDecryption": True,
        }
        values: dict[str, object] = {}
        origin: dict[str, str] = {}
        for _ in range(MAX_PAGES):
            page = self._call(
                ref, "ssm:GetParametersByPath", f"path {prefix!r}", "get_parameters_by_path", **params
            )
            if not isinstance(page.get("Parameters"), list):
                raise not_an_aws_answer(ref.text, self.label)
            for parameter in page["Parameters"]:
                if not (isinstance(parameter.get("Name"), str) and isinstance(parameter.get("Value"), str)):
                    raise not_an_aws_answer(ref.text, self.label)
                name = str(parameter["Name"])
                key = name[len(prefix) :] if name.startswith(prefix) else name.rsplit("/", 1)[-1]
                key = key.strip("/").replace("/", "_")
                if key in values:
                    raise InvalidSecret(
                        ref.text,
                        self.label,
                        f"the parameters {origin[key]!r} and {name!r} both give the key {key!r}",
                        "rename one, or read them as separate NAME = reference lines",
                    )
                values[key], origin[key] = str(parameter["Value"]), name
            token = page.get("NextToken")
            if not token:
                break
            params["NextToken"] = token
        else:
            raise InvalidSecret(
                ref.text, self.label, f"more than {MAX_PAGES} pages of parameters", "read a narrower path"
            )
        if not values:
            from nomad_secrets.process.errors import NotFound

            raise NotFound(
                ref.text,
                self.label,
                f"no parameters below this path in {self.region}",
                f"check the path, and the region ({self.region}: {self.region_source});"
                " ssm:GetParametersByPath returns only what the node may read",
            )
        return values

    def _call(self, ref: Reference, action: str, resource: str, method: str, **params: Any) -> Any:
        try:
            return getattr(self.client, method)(**params)
        except aws_errors() as exc:
            raise self.store_error(exc, ref.text, action=action, resource=resource) from None
