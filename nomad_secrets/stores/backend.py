"""What a store's code gives and is given: the ``Backend`` a fetch reads
through, the ``Lender`` a long-lived process keeps warm, and the ``Said``
a probe reports to (check's report). Kept apart from the registry so that
a store's modules depend on these shapes, never on the table that lists
them.
"""

from __future__ import annotations

from typing import Protocol

from nomad_secrets.core.reference import Reference
from nomad_secrets.core.shape import Raw
from nomad_secrets.process.deadline import Deadline


class Backend(Protocol):
    label: str

    def read(self, ref: Reference) -> Raw:
        """The raw secret ``ref`` names; a StoreError subclass if not."""

    def close(self) -> None:
        """Give back what the fetch held (a Vault login's token); never raises."""


class Lender(Protocol):
    def lend(self, deadline: Deadline) -> Backend:
        """The backend for one fetch, with that fetch's deadline."""

    def close(self) -> None:
        """Give back what it holds (a login's token); never raises."""


class Said(Protocol):
    """Where a probe says what it found (check's report)."""

    def ok(self, text: str) -> None: ...

    def warn(self, text: str) -> None: ...

    def problem(self, text: str) -> None: ...
