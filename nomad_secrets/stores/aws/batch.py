"""Several Secrets Manager references of one fetch in one call:
BatchGetSecretValue instead of one GetSecretValue each.

A secret block that names N secrets (``NAME = aws-sm:...`` lines) cost N
calls, each billed and counted against the account's rate. The references
that read the current version (no ``version_id`` or ``version_stage``
option) are asked for together, up to ``BATCH`` names a call; the first
reader makes the call, the others take their answer from it. Each one's
failure is the one its own GetSecretValue gives (not found, scheduled for
deletion, denied, ...), in its own words. A reference the answer does not
name back (a partial ARN, say) is read alone, and so is every one when the
batch call fails as a whole: the node's identity may not call
BatchGetSecretValue (an IAM policy written for GetSecretValue alone), the
store is down, or one name fails them all. No name takes another's
failure, and nothing that read before fails now.
"""

from __future__ import annotations

import threading
from typing import Any

from nomad_secrets.core.reference import Reference
from nomad_secrets.core.shape import Raw
from nomad_secrets.stores.aws.secretsmanager import SecretsManager
from nomad_secrets.stores.aws.store import aws_errors
from nomad_secrets.stores.backend import Backend

BATCH = 20  # BatchGetSecretValue's most names in one call
_local = threading.local()


def batched(backend: Backend, refs: list[Reference]) -> Backend:
    """``backend`` reading ``refs`` together where it can, else itself."""
    if not isinstance(backend, SecretsManager):
        return backend
    names = list(dict.fromkeys(ref.locator for ref in refs if not ref.options))
    return Batched(backend, names) if len(names) >= 2 else backend


def rode_along() -> bool:
    """Whether this thread's last read took its answer from another's call."""
    return bool(getattr(_local, "rode", False))


class Batched:
    def __init__(self, backend: SecretsManager, names: list[str]) -> None:
        self.backend, self.names, self.label = backend, names, backend.label
        self._lock = threading.Lock()
        # name -> its answer (a SecretValues entry) or its error (an Errors
        # entry, or the whole call's exception); None until the call is made.
        self._answers: dict[str, Any] | None = None

    def read(self, ref: Reference) -> Raw:
        _local.rode = False
        if ref.options or ref.locator not in self.names:
            return self.backend.read(ref)
        with self._lock:
            if self._answers is None:
                self._answers = self._call(ref)
            else:
                _local.rode = True
        answer = self._answers.get(ref.locator)
        if answer is None:  # not named back, or the batch was not allowed: alone
            _local.rode = False
            return self.backend.read(ref)
        if isinstance(answer, Exception):
            raise self.backend.failure(answer, ref)
        return self.backend.value(answer, ref)

    def _call(self, ref: Reference) -> dict[str, Any]:
        import botocore.exceptions

        answers: dict[str, Any] = {}
        for start in range(0, len(self.names), BATCH):
            names = self.names[start : start + BATCH]
            try:
                response = self.backend.client.batch_get_secret_value(SecretIdList=names)
            except aws_errors():
                # The whole call failed (denied for this identity, the store
                # down, one bad name failing them all): no name takes that
                # failure as its own; each is read alone, as without a batch,
                # and gets its own answer or error.
                continue
            for value in response.get("SecretValues") or []:
                for name in (value.get("Name"), value.get("ARN")):
                    if name in names:
                        answers[name] = value
            for error in response.get("Errors") or []:
                if error.get("SecretId") in names:
                    answers[error["SecretId"]] = botocore.exceptions.ClientError(
                        {"Error": {"Code": error.get("ErrorCode"), "Message": error.get("Message")}},
                        "GetSecretValue",
                    )
        return answers

    def close(self) -> None:
        self.backend.close()
