"""AWS Secrets Manager: GetSecretValue by name or ARN."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nomad_secrets.core.reference import Reference
from nomad_secrets.core.shape import Raw
from nomad_secrets.process.errors import NotFound, PluginError, RequestError
from nomad_secrets.stores.aws.store import AwsStore, aws_errors, not_an_aws_answer

OPTIONS = ("version_stage", "version_id")


class SecretsManager(AwsStore):
    service = "secretsmanager"
    label = "AWS Secrets Manager"

    def read(self, ref: Reference) -> Raw:
        params = {"SecretId": ref.locator}
        options = ref.options_for(self.label, OPTIONS)
        if "version_id" in options and "version_stage" in options:
            raise RequestError(f"{ref.text!r} ({self.label}): set version_id or version_stage, not both")
        if "version_id" in options:
            params["VersionId"] = options["version_id"]
        else:
            params["VersionStage"] = options.get("version_stage", "AWSCURRENT")
        try:
            response = self.client.get_secret_value(**params)
        except aws_errors() as exc:
            raise self.failure(exc, ref) from None
        return self.value(response, ref)

    def failure(self, exc: Exception, ref: Reference) -> PluginError:
        """Our message for a failed read of ``ref``, in its own words."""
        error = (getattr(exc, "response", None) or {}).get("Error", {})  # None: no answer at all
        # AWS: "...because it was marked for deletion."; moto: "...marked deleted."
        if error.get("Code") == "InvalidRequestException" and "marked" in str(error.get("Message")):
            return NotFound(
                ref.text,
                self.label,
                "the secret is scheduled for deletion",
                "restore it, or point the job at another secret",
            )
        return self.store_error(
            exc,
            ref.text,
            action="secretsmanager:GetSecretValue",
            resource=f"secret {ref.locator!r}",
        )

    def value(self, answer: Mapping[str, Any], ref: Reference) -> Raw:
        """The secret in a GetSecretValue answer (or one of BatchGetSecretValue's)."""
        if isinstance(answer.get("SecretString"), str):
            return str(answer["SecretString"])
        if isinstance(answer.get("SecretBinary"), bytes):
            return bytes(answer["SecretBinary"])
        raise not_an_aws_answer(ref.text, self.label)
