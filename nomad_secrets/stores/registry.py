"""One module per store, imported only when a reference needs that store.

A fetch from SSM never imports the Vault client, and fingerprint imports
none of this.
"""

from __future__ import annotations

from typing import Protocol

from nomad_secrets.core import policy
from nomad_secrets.core.config import Provider
from nomad_secrets.core.reference import Reference
from nomad_secrets.core.request import Identity, JobOptions
from nomad_secrets.core.shape import Raw
from nomad_secrets.process.deadline import Deadline

STORE_LABELS = {
    "aws-sm": "AWS Secrets Manager",
    "aws-ssm": "AWS SSM Parameter Store",
    "vault": "Vault",
}


class Backend(Protocol):
    label: str

    def read(self, ref: Reference) -> Raw:
        """The raw secret ``ref`` names; a StoreError subclass if not."""

    def close(self) -> None:
        """Give back what the fetch held (a Vault login's token); never raises."""


def read_scope(store: str, ref: Reference) -> policy.Many | None:
    """For the policy: which names a reference reads besides its own. An
    SSM path (``aws-ssm:/app/``) reads every parameter one level below it,
    or every one below it with ``recursive`` (any value but ``false``
    counts, the store refuses a bad one later).

    An SSM name with an empty segment (``/app//``) is refused here, before
    the policy: SSM's path read would see ``/app``, while the policy would
    see one segment more."""
    if store == "aws-ssm" and "//" in ref.locator:
        from nomad_secrets.process.errors import RequestError

        raise RequestError(
            f"{ref.text!r} ({STORE_LABELS[store]}): a parameter name has no empty parts; write it without //"
        )
    if store != "aws-ssm" or not ref.locator.endswith("/"):
        return None
    recursive = dict(ref.options).get("recursive", "false")
    return policy.ANY_CHILD if recursive == "false" else policy.ANY_DESCENDANTS


def open_backend(
    store: str, provider: Provider, options: JobOptions, identity: Identity, deadline: Deadline
) -> Backend:
    """A ready client for ``store``, with the settings ``provider`` uses
    (its own section's keys over the top-level ``[aws]`` or ``[vault]``).
    Called in the main thread only: client creation in botocore is not
    thread-safe, while the clients are."""
    if store == "aws-sm":
        from nomad_secrets.stores.aws.secretsmanager import SecretsManager

        return SecretsManager(provider.aws, options, deadline, identity, provider)
    if store == "aws-ssm":
        from nomad_secrets.stores.aws.ssm import ParameterStore

        return ParameterStore(provider.aws, options, deadline, identity, provider)
    from nomad_secrets.stores.vault import Vault

    return Vault(provider.vault, options, deadline)
