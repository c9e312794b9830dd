"""One contract every store must pass, through the built executable.

Like keyring's ``testing/backend.py``: a store's test class subclasses
``StoreContract`` and says how to write a secret there and how to refer to
it; the cases below are then run against it, exactly as Nomad runs the
plugin. A new store proves itself by passing them.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from support.netutil import HangingServer, dead_port_url
from support.nomad import Fetched, NomadClient

CANARY = "canary-" + uuid.uuid4().hex  # must never show up in an error


class StoreContract:
    provider = "aws"  # the executable's name in the plugin directory
    env: dict[str, str] = {}  # noqa: RUF012 - read-only class default
    label = ""  # the store's name in messages

    # --- what a store's test class provides ---------------------------------

    def put_text(self, name: str, text: str) -> str:
        """Store ``text`` under a fresh ``name``; return its reference."""
        raise NotImplementedError

    def put_binary(self, name: str, data: bytes) -> str | None:
        """Store bytes, or return None where the store has no binary values."""
        raise NotImplementedError

    def put_versions(self, name: str, first: str, second: str) -> tuple[str, str]:
        """Two versions; return references to (first, latest) pinned versions."""
        raise NotImplementedError

    def missing(self) -> str:
        raise NotImplementedError

    def text_key(self, name: str) -> str:
        """The key a text secret gets under NAME; a store of maps (Vault)
        keeps text as {"value": text}, which gives NAME_value."""
        return name

    def denied(self) -> str:
        """A reference the plugin's identity may not read."""
        raise NotImplementedError

    def point_at(self, nomad: NomadClient, url: str, extra: str = "") -> None:
        """Rewrite the config so the store's endpoint is ``url``."""
        raise NotImplementedError

    # --- the contract ---------------------------------------------------------

    def fetch(self, nomad: NomadClient, path: str, **kwargs: Any) -> Fetched:
        return nomad.fetch(self.provider, path, self.env, **kwargs)

    def failed(self, fetched: Fetched, *needles: str) -> str:
        assert fetched.run.returncode == 0 and not fetched.ok and fetched.result == {}, fetched
        message = fetched.plugin_error or ""
        for needle in needles:
            assert needle in message, (needle, message)
        assert CANARY not in message
        return message

    def name(self) -> str:
        return "contract-" + uuid.uuid4().hex[:12]

    def test_string(self, nomad: NomadClient) -> None:
        ref = self.put_text(self.name(), "plain text")
        assert self.fetch(nomad, ref).result == {"value": "plain text"}

    def test_json_object_gives_fields(self, nomad: NomadClient) -> None:
        ref = self.put_text(self.name(), json.dumps({"user": "u", "port": 5432, "on": False, "none": None}))
        assert self.fetch(nomad, ref).result == {"user": "u", "port": "5432", "on": "false", "none": ""}

    def test_nested_json_and_selectors(self, nomad: NomadClient) -> None:
        secret = {"db": {"primary": {"host": "h", "port": 1}}, "list": [1, "two"]}
        ref = self.put_text(self.name(), json.dumps(secret))
        assert self.fetch(nomad, ref).result == {
            "db": '{"primary":{"host":"h","port":1}}',
            "list": '[1,"two"]',
        }
        assert self.fetch(nomad, ref + "#/db/primary").result == {"host": "h", "port": "1"}
        assert self.fetch(nomad, ref + "#/db/primary/host").result == {"value": "h"}
        self.failed(self.fetch(nomad, ref + "#nope"), "no field 'nope'")

    def test_unicode(self, nomad: NomadClient) -> None:
        text = "pässwörd ✓ 密码 🔑"
        ref = self.put_text(self.name(), json.dumps({"ключ": text}, ensure_ascii=False))
        assert self.fetch(nomad, ref).result == {"ключ": text}

    def test_large_value(self, nomad: NomadClient) -> None:
        text = ("0123456789abcdef" * 4096)[: self.large_size()]
        ref = self.put_text(self.name(), text)
        assert self.fetch(nomad, ref).result == {"value": text}

    def large_size(self) -> int:
        return 64 * 1024

    def test_binary(self, nomad: NomadClient) -> None:
        ref = self.put_binary(self.name(), b"\x00\x01\xfe\xff")
        if ref is None:  # the store has no binary values: text stays text
            return
        assert self.fetch(nomad, ref).result == {"value_base64": "AAH+/w=="}

    def test_versions(self, nomad: NomadClient) -> None:
        first, latest = self.put_versions(self.name(), "one", "two")
        assert self.fetch(nomad, first).result == {"value": "one"}
        assert self.fetch(nomad, latest).result == {"value": "two"}

    def test_not_found(self, nomad: NomadClient) -> None:
        ref = self.missing()
        self.failed(self.fetch(nomad, ref), repr(ref), self.label, "not found")

    def test_denied(self, nomad: NomadClient) -> None:
        ref = self.denied()
        self.failed(self.fetch(nomad, ref), repr(ref), self.label, "denied")

    def test_several_references_in_one_process(self, nomad: NomadClient) -> None:
        a = self.put_text(self.name(), json.dumps({"user": "u", "password": CANARY}))
        b = self.put_text(self.name(), "token-value")
        fetched = self.fetch(nomad, f"# two at once\ndb = {a}\n\ntoken = {b}\n")
        assert fetched.result == {
            "db_user": "u",
            "db_password": CANARY,
            self.text_key("token"): "token-value",
        }

    def test_one_failure_fails_the_block_with_nothing_else(self, nomad: NomadClient) -> None:
        good = self.put_text(self.name(), CANARY)
        missing = self.missing()
        fetched = self.fetch(nomad, f"good = {good}\nbad = {missing}\n")
        self.failed(fetched, repr(missing))
        assert CANARY.encode() not in fetched.run.stdout

    def test_slow_server_times_out_inside_the_deadline(self, nomad: NomadClient) -> None:
        with HangingServer() as hanging:
            self.point_at(nomad, hanging.url, "[plugin]\ndeadline_seconds = 1.5\n")
            fetched = self.fetch(nomad, self.missing(), timeout=6)
        assert not fetched.run.terminated
        self.failed(fetched, self.label)
        assert "no answer" in (fetched.plugin_error or "")

    def test_server_down(self, nomad: NomadClient) -> None:
        self.point_at(nomad, dead_port_url())
        self.failed(self.fetch(nomad, self.missing()), self.label, "reach")


def plugin_config_path(nomad: NomadClient) -> Path:
    return nomad.plugin_dir / "secrets" / "nomad-secrets.toml"
