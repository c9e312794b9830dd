"""Secrets given by name: the rules of the doors whose caller gets a set of
``NAME = reference`` pairs (Bitbucket's steps, Woodpecker's pipelines),
and reading them as one value each.

Every rule whose globs all match the caller gives its pairs; two matching
rules giving one name two references is the operator's mistake, said as
such. The optional guard (``[[<section>.policy]]``) checks the references
as ``[[policy]]`` checks a Nomad job's; then ``resolve`` reads them, all or
nothing, and each must give one value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from nomad_secrets.core.policy import Caller, Rule, glob_match
from nomad_secrets.core.reference import Reference
from nomad_secrets.process.deadline import Deadline
from nomad_secrets.process.errors import ConfigError, InvalidSecret
from nomad_secrets.serve.settings import NamedRule, Settings
from nomad_secrets.serve.stores import ServerStores
from nomad_secrets.stores.registry import STORE_LABELS
from nomad_secrets.stores.resolve import check_policy, resolve


def chosen(
    rules: tuple[NamedRule, ...],
    fields: Mapping[str, str],
    section: str,
    applies: Callable[[NamedRule], bool] = lambda rule: True,
) -> list[Reference]:
    """Every NAME = reference the matching rules give, once each."""
    found: dict[str, Reference] = {}
    for rule in rules:
        if not all(glob_match(glob, fields.get(key, "")) for key, glob in rule.when) or not applies(rule):
            continue
        for ref in rule.secrets:
            name = str(ref.name)
            if name in found and found[name].text != ref.text:
                raise ConfigError(
                    f"two [[{section}.rule]]s give {name}, as {found[name].text!r} and {ref.text!r};"
                    " make the rules exclusive"
                )
            found[name] = ref
    return list(found.values())


class NamedSecrets:
    """One door's rules, guard and stores: the values a caller's fields get."""

    def __init__(
        self,
        section: str,
        rules: tuple[NamedRule, ...],
        guard: tuple[Rule, ...] | None,
        placeholders: Mapping[str, int],
        settings: Settings,
        pool: ServerStores,
    ) -> None:
        self.section, self.rules, self.guard, self.placeholders = section, rules, guard, placeholders
        self.default_store = settings.server.store
        self.max_output_bytes = settings.config.plugin.max_output_bytes
        self.pool = pool

    def values(
        self,
        fields: Mapping[str, str],
        deadline: Deadline,
        applies: Callable[[NamedRule], bool] = lambda rule: True,
    ) -> dict[str, str]:
        """NAME: value for each name the matching rules give ({} for none);
        a PluginError says which reference failed."""
        refs = chosen(self.rules, fields, self.section, applies)
        if not refs:
            return {}
        stores = [ref.scheme or self.default_store for ref in refs]
        caller = Caller(fields=tuple(fields.items()), placeholders=self.placeholders)
        check_policy(refs, stores, caller, self.guard, deadline)
        with self.pool.backends(deadline) as backend_for:
            values = resolve(refs, stores, backend_for, deadline, self.max_output_bytes)
        for ref, store in zip(refs, stores, strict=True):
            if ref.name not in values:
                raise InvalidSecret(
                    ref.text,
                    STORE_LABELS[store],
                    "the secret gives no single value (it is a JSON object, or binary)",
                    f"select one field for {ref.name} with #field in [[{self.section}.rule]]",
                )
        return {str(ref.name): values[str(ref.name)] for ref in refs}
