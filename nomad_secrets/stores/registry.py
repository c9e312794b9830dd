"""The registry of stores: one row per scheme, everything a store plugs in.

``core/schemes.py`` declares what the configuration needs of each store
(scheme, label, config section); this table holds, keyed by the same
schemes, what only ``stores`` can give:

- ``open``: the backend factory, a ready client for one fetch;
- ``warm``: how a long-lived process keeps it (``pool.py``): one shared,
  thread-safe client per settings and region (``SharedClient``), or a warm
  object lent to each fetch with its deadline (``LentClient``);
- ``probe``: what ``nomad-secrets check`` asks of its settings, a harmless
  call that proves the credentials;
- ``scope``: which names a reference reads besides its own, for the policy.

The files a store trusts are its settings class's ``secret_files``
(``core/config/model.py``), checked when the config loads.

Every factory imports its store's package when called, never here: a fetch
from SSM never imports the Vault client, and fingerprint imports none of
this. The module refuses to load when this table and core's disagree
(``check_agreement``), and tests/test_registry.py holds every part of the
product (config, check, the pool, the server, docs/references.md) to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from nomad_secrets.core import policy
from nomad_secrets.core.config import SECTIONS, Provider, Settings
from nomad_secrets.core.reference import Reference
from nomad_secrets.core.request import Identity, JobOptions
from nomad_secrets.core.schemes import BY_NAME, LABELS, SCHEMES
from nomad_secrets.process.deadline import Deadline
from nomad_secrets.process.errors import ConfigError, RequestError
from nomad_secrets.stores.backend import Backend, Lender, Said

if TYPE_CHECKING:
    from nomad_secrets.stores.vault.warm import WarmVault

STORE_LABELS = LABELS  # the label of each store, for messages
__all__ = [
    "STORES",
    "Backend",
    "Lender",
    "LentClient",
    "Said",
    "SharedClient",
    "Store",
    "batched",
    "open_backend",
    "store",
]


if TYPE_CHECKING:  # the table's types; plain classes below, not dataclasses,
    # whose making costs about half a millisecond each at every fetch
    Opener = Callable[[Provider, JobOptions, Identity, Deadline], Backend]
    Prober = Callable[[Settings, list[Provider], Said, float], None]


class SharedClient:
    """One thread-safe client for every fetch with the same settings and
    region, made with ``open`` at the process's deadline."""

    __slots__ = ("own", "region")

    def __init__(
        self,
        region: Callable[[Provider, JobOptions], str | None],  # part of the client's key
        own: Callable[[Provider], bool],  # True: the job's own client (its identity): never kept
    ) -> None:
        self.region, self.own = region, own


class LentClient:
    """A warm object per settings, lent to each fetch with its deadline."""

    __slots__ = ("make", "own")

    def __init__(
        self,
        make: Callable[[Provider, Deadline], Lender],  # with the process's deadline
        own: Callable[[Provider], bool],  # True: the job's own login: never kept
    ) -> None:
        self.make, self.own = make, own


class Store:
    __slots__ = ("batch", "open", "probe", "scheme", "scope", "warm")

    def __init__(
        self,
        scheme: str,
        open: Opener,
        warm: SharedClient | LentClient,
        probe: Prober,
        scope: Callable[[Reference], policy.Many | None] | None = None,
        # Reads several references of one block in one call where the store
        # can (Secrets Manager's BatchGetSecretValue): the backend, wrapped or not.
        batch: Callable[[Backend, list[Reference]], Backend] | None = None,
    ) -> None:
        self.scheme, self.open, self.warm, self.probe = scheme, open, warm, probe
        self.scope, self.batch = scope, batch

    @property
    def label(self) -> str:
        return BY_NAME[self.scheme].label

    @property
    def section(self) -> str:
        """The config section of its settings: ``[aws]``, ``[vault]``."""
        return BY_NAME[self.scheme].section

    @property
    def settings_class(self) -> type[Settings]:
        return SECTIONS[self.section]

    @property
    def trusted_files(self) -> tuple[str, ...]:
        """The keys of its settings that name secret files (trust-checked)."""
        return self.settings_class.secret_files


# --- the factories: each imports its store's package when called ----------


def _open_secretsmanager(
    provider: Provider, options: JobOptions, identity: Identity, deadline: Deadline
) -> Backend:
    from nomad_secrets.stores.aws.secretsmanager import SecretsManager

    return SecretsManager(provider.aws, options, deadline, identity, provider)


def _open_ssm(provider: Provider, options: JobOptions, identity: Identity, deadline: Deadline) -> Backend:
    from nomad_secrets.stores.aws.ssm import ParameterStore

    return ParameterStore(provider.aws, options, deadline, identity, provider)


def _open_vault(provider: Provider, options: JobOptions, identity: Identity, deadline: Deadline) -> Backend:
    from nomad_secrets.stores.vault import Vault

    return Vault(provider.vault, options, deadline)


def _aws_region(provider: Provider, options: JobOptions) -> str | None:
    from nomad_secrets.stores.aws.store import region_for

    return region_for(provider.aws, options)


def _aws_own(provider: Provider) -> bool:
    return bool(provider.aws.web_identity_role_arn)


def _warm_vault(provider: Provider, lifetime: Deadline) -> WarmVault:
    from nomad_secrets.stores.vault.warm import WarmVault

    return WarmVault(provider.vault, lifetime)


def _vault_own(provider: Provider) -> bool:
    return provider.vault.auth_method == "jwt"


def _probe_aws(settings: Settings, providers: list[Provider], said: Said, seconds: float) -> None:
    from nomad_secrets.stores.aws.probe import probe

    probe(settings, providers, said, seconds)


def _probe_vault(settings: Settings, providers: list[Provider], said: Said, seconds: float) -> None:
    from nomad_secrets.stores.vault.probe import probe

    probe(settings, providers, said, seconds)


def _ssm_scope(ref: Reference) -> policy.Many | None:
    """An SSM path (``aws-ssm:/app/``) reads every parameter one level below
    it, or every one below it with ``recursive`` (any value but ``false``
    counts, the store refuses a bad one later).

    An SSM name with an empty segment (``/app//``) is refused here, before
    the policy: SSM's path read would see ``/app``, while the policy would
    see one segment more."""
    if "//" in ref.locator:
        raise RequestError(
            f"{ref.text!r} ({LABELS['aws-ssm']}): a parameter name has no empty parts; write it without //"
        )
    if not ref.locator.endswith("/"):
        return None
    recursive = dict(ref.options).get("recursive", "false")
    return policy.ANY_CHILD if recursive == "false" else policy.ANY_DESCENDANTS


_AWS_WARM = SharedClient(region=_aws_region, own=_aws_own)


def _batch_secretsmanager(backend: Backend, refs: list[Reference]) -> Backend:
    from nomad_secrets.stores.aws.batch import batched

    return batched(backend, refs)


STORES: dict[str, Store] = {
    "aws-sm": Store(
        "aws-sm", open=_open_secretsmanager, warm=_AWS_WARM, probe=_probe_aws, batch=_batch_secretsmanager
    ),
    "aws-ssm": Store("aws-ssm", open=_open_ssm, warm=_AWS_WARM, probe=_probe_aws, scope=_ssm_scope),
    "vault": Store(
        "vault", open=_open_vault, warm=LentClient(make=_warm_vault, own=_vault_own), probe=_probe_vault
    ),
}


def check_agreement(declared: Iterable[str], registered: Iterable[str]) -> None:
    """Refuse a store declared in core but not registered here, or the
    other way round: either would be a store the config accepts and no
    code opens, or one no config can name."""
    declared, registered = tuple(declared), tuple(registered)
    if declared != registered:
        raise ImportError(
            f"the stores of core/schemes.py {declared} and of stores/registry.py {registered}"
            " disagree: a store needs its row in both"
        )


check_agreement(SCHEMES, STORES)


def store(scheme: str) -> Store:
    """The registered store of ``scheme``; a clear error for any other."""
    try:
        return STORES[scheme]
    except KeyError:
        raise ConfigError(f"no store {scheme!r}: the stores are {', '.join(STORES)}") from None


def batched(scheme: str, backend: Backend, refs: list[Reference]) -> Backend:
    """``backend`` reading these references of its store together where the
    store can, else itself."""
    together = store(scheme).batch
    return backend if together is None or len(refs) < 2 else together(backend, refs)


def read_scope(scheme: str, ref: Reference) -> policy.Many | None:
    """For the policy: which names a reference reads besides its own."""
    scope = store(scheme).scope
    return None if scope is None else scope(ref)


def open_backend(
    scheme: str, provider: Provider, options: JobOptions, identity: Identity, deadline: Deadline
) -> Backend:
    """A ready client for ``scheme``, with the settings ``provider`` uses
    (its own section's keys over the top-level ``[aws]`` or ``[vault]``).
    Called in the main thread only: client creation in botocore is not
    thread-safe, while the clients are."""
    return store(scheme).open(provider, options, identity, deadline)
