"""The store registry (stores/registry.py) against every part of the
product that must know each store: core's declaration, config parsing,
``check``'s probes, the warm pool, the server's store table, the contract
suite and docs/references.md. Each test fails when one registered store
is missing from its part; an unknown store is an error naming the known
ones everywhere, never a fall-through to another store."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from nomad_secrets.core import config as config_module
from nomad_secrets.core import schemes
from nomad_secrets.core.config import SECTIONS, Config, Provider, Settings
from nomad_secrets.core.request import Identity, JobOptions
from nomad_secrets.ops import check
from nomad_secrets.process.deadline import Deadline
from nomad_secrets.process.errors import ConfigError
from nomad_secrets.serve.stores import ServerStores
from nomad_secrets.stores import registry
from nomad_secrets.stores.pool import StorePool
from nomad_secrets.stores.registry import Said

ROOT = Path(__file__).resolve().parent.parent
NO_ONE = Identity(namespace=None, job_id=None)
UNKNOWN = "gcp-sm"


def config_for_every_store(tmp_path: Path) -> Config:
    """A config with settings for every store section that make a client
    without the network: AWS with a region, static keys and a dead endpoint;
    Vault with a token file and a dead address."""
    token = tmp_path / "token"
    token.write_text("s.not-a-real-token\n")
    text = f"""
[aws]
region = "us-east-2"
endpoint_url = "http://127.0.0.1:9"
access_key_id = "AKIAEXAMPLE"
secret_access_key = "example"
[vault]
address = "http://127.0.0.1:9"
token_file = "{token}"
revoke_token = false
"""
    text += "".join(f'[providers.p-{name}]\nstore = "{name}"\n' for name in schemes.SCHEMES)
    return config_module.parse(text.encode(), "registry.toml")


def test_core_and_the_registry_declare_the_same_stores() -> None:
    assert tuple(registry.STORES) == schemes.SCHEMES
    with pytest.raises(ImportError, match="a store needs its row in both"):
        registry.check_agreement(schemes.SCHEMES, schemes.SCHEMES[:-1])
    with pytest.raises(ImportError, match="a store needs its row in both"):
        registry.check_agreement(schemes.SCHEMES, (*schemes.SCHEMES, UNKNOWN))


def test_every_store_has_every_part() -> None:
    config_fields = {f.name for f in dataclasses.fields(Config)}
    provider_fields = {f.name for f in dataclasses.fields(Provider)}
    for name, entry in registry.STORES.items():
        assert entry.scheme == name
        assert entry.label == schemes.BY_NAME[name].label and entry.label
        assert entry.settings_class is SECTIONS[entry.section]
        assert entry.section in config_fields and entry.section in provider_fields
        assert callable(entry.open) and callable(entry.probe) and callable(entry.warm.own)
        assert isinstance(entry.warm, (registry.SharedClient, registry.LentClient))
        settings_keys = {f.name for f in dataclasses.fields(entry.settings_class)}
        assert set(entry.trusted_files) <= settings_keys


def test_config_parsing_gives_every_store_its_own_section(tmp_path: Path) -> None:
    config = config_for_every_store(tmp_path)
    for name, entry in registry.STORES.items():
        provider = config.provider(f"p-{name}")
        assert provider.store == name
        assert provider.settings is getattr(provider, entry.section)
        assert isinstance(provider.settings, entry.settings_class)
        assert provider.settings == getattr(config, entry.section)  # nothing of its own: the top level


def test_a_key_of_another_stores_section_names_both(tmp_path: Path) -> None:
    for name, entry in registry.STORES.items():
        for section, settings_class in SECTIONS.items():
            if section == entry.section:
                continue
            # A key of that section alone (the cache keys are every section's).
            own = {f.name for f in dataclasses.fields(SECTIONS[entry.section])}
            key = next(f.name for f in dataclasses.fields(settings_class) if f.name not in own)
            with pytest.raises(ConfigError) as raised:
                config_module.parse(f'[providers.p]\nstore = "{name}"\n{key} = 1\n'.encode(), "f")
            assert f"is {'an' if section[0] in 'aeiou' else 'a'} [{section}] key" in raised.value.message
            assert f"its own store's section, [{entry.section}]" in raised.value.message


def test_an_unknown_store_is_an_error_naming_the_known_ones(tmp_path: Path) -> None:
    known = ", ".join(schemes.SCHEMES)
    with pytest.raises(ConfigError) as raised:
        config_module.parse(f'[providers.p]\nstore = "{UNKNOWN}"\n'.encode(), "f")
    assert raised.value.message == f"providers.p.store in f is {UNKNOWN!r}; use one of {known}"
    said = f"no store {UNKNOWN!r}: the stores are {known}"
    config = config_for_every_store(tmp_path)
    provider = config.provider("p-aws-sm")
    with pytest.raises(ConfigError, match=re.escape(said)):
        registry.open_backend(UNKNOWN, provider, JobOptions(), NO_ONE, Deadline(5))
    with pytest.raises(ConfigError, match=re.escape(said)):
        StorePool().backend(UNKNOWN, provider, 5, JobOptions(), NO_ONE, Deadline(5))
    server = ServerStores(config, 5, "aws-sm")
    with pytest.raises(ConfigError, match=re.escape(said)), server.backends(Deadline(5)) as backend_for:
        backend_for(UNKNOWN)
    server.close()


def test_check_probes_every_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """check's stores section runs each store's own probe, once per distinct
    connection, for the providers that use it (a TEST DOUBLE records the
    probes: the real ones need the stores, tests/test_check.py runs them)."""
    probed: list[tuple[str, type, list[str]]] = []
    for name, entry in registry.STORES.items():

        def record(
            settings: Settings, users: list[Provider], said: Said, seconds: float, name: str = name
        ) -> None:
            probed.append((name, type(settings), [p.name for p in users]))

        stand_in = registry.Store(entry.scheme, entry.open, entry.warm, record, entry.scope, entry.batch)
        monkeypatch.setitem(registry.STORES, name, stand_in)
    config = config_for_every_store(tmp_path)
    providers = [config.provider(f"p-{name}") for name in schemes.SCHEMES]
    check.probe_stores(providers, check.Report(lambda _: None))
    covered = {user for _, _, users in probed for user in users}
    assert covered == {p.name for p in providers}
    for name, settings_class, users in probed:
        assert settings_class is registry.STORES[name].settings_class
        assert f"p-{name}" in users
    assert len(probed) == len(SECTIONS)  # stores of one section, same settings: one probe


def test_the_pool_keeps_a_client_of_every_store(tmp_path: Path) -> None:
    config = config_for_every_store(tmp_path)
    pool = StorePool()
    try:
        for name, entry in registry.STORES.items():
            provider = config.provider(f"p-{name}")
            first = pool.backend(name, provider, 5, JobOptions(), NO_ONE, Deadline(5))
            assert first is not None and first.label == entry.label
            again = pool.backend(name, provider, 5, JobOptions(), NO_ONE, Deadline(5))
            if isinstance(entry.warm, registry.SharedClient):
                assert again is first
        assert len(pool) == len(registry.STORES)
    finally:
        pool.close()


def test_the_server_has_every_store_in_its_table(tmp_path: Path) -> None:
    config = config_for_every_store(tmp_path)
    server = ServerStores(config, 5, "aws-sm")
    try:
        assert set(server.table) == set(registry.STORES)
        assert server.problems() == []
        with server.backends(Deadline(5)) as backend_for:
            for name, entry in registry.STORES.items():
                assert backend_for(name).label == entry.label
    finally:
        server.close()


def test_docs_references_has_a_section_for_every_store() -> None:
    text = (ROOT / "docs" / "references.md").read_text()
    grammar = re.search(r"^scheme\s+=\s+(.+)$", text, re.M)
    assert grammar is not None and tuple(grammar.group(1).split(" | ")) == schemes.SCHEMES
    headings = re.findall(r"^## .*\(`([a-z0-9-]+):`\)$", text, re.M)
    assert headings == list(schemes.SCHEMES)


def contract_labels() -> set[str]:
    """The ``label`` of every test class that subclasses StoreContract
    (tests/backend_contract.py), at any depth, in any test module."""
    bases: dict[str, list[str]] = {}
    labels: dict[str, str] = {}
    for path in Path(__file__).parent.glob("test_*.py"):
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.ClassDef):
                continue
            bases[node.name] = [b.id for b in node.bases if isinstance(b, ast.Name)]
            for item in node.body:
                if (
                    isinstance(item, ast.Assign)
                    and [t.id for t in item.targets if isinstance(t, ast.Name)] == ["label"]
                    and isinstance(item.value, ast.Constant)
                ):
                    labels[node.name] = str(item.value.value)

    def contract(name: str) -> bool:
        return any(base == "StoreContract" or contract(base) for base in bases.get(name, []))

    return {label for name, label in labels.items() if contract(name)}


def test_every_store_has_its_contract_suite_class() -> None:
    assert contract_labels() >= {entry.label for entry in registry.STORES.values()}
