"""``nomad-secrets check``'s look at a ``[vault]`` connection: a login, or
the token file's token looked up (reads no secret); a ``jwt`` login is the
job's and cannot be tried without its token."""

from __future__ import annotations

from nomad_secrets.core.config import Provider, Settings, VaultSettings
from nomad_secrets.core.request import JobOptions
from nomad_secrets.process.deadline import Deadline
from nomad_secrets.process.errors import PluginError
from nomad_secrets.stores.backend import Said
from nomad_secrets.stores.vault.store import Vault


def probe(settings: Settings, providers: list[Provider], report: Said, seconds: float) -> None:
    if not isinstance(settings, VaultSettings):
        raise TypeError(f"Vault settings to probe, not {type(settings).__name__}")
    names = [p.name for p in providers]
    where = f"Vault for {', '.join(names)}: {settings.address}, auth {settings.auth_method}"
    if settings.auth_method == "jwt":
        report.ok(f"{where}: logs in with the job's workload identity (not testable without a token)")
        return
    vault = None
    try:
        vault = Vault(settings, JobOptions(), Deadline(seconds))
        vault.probe()
    except PluginError as exc:
        report.problem(f"{where}: {exc.message}")
    else:
        report.ok(f"{where}: the token is valid")
    finally:
        if vault is not None:
            vault.close()
