"""The CI server reading Vault, against the real OpenBao server: a Drone
secret request reads a KV v2 secret with the server's AppRole login, which
it keeps across requests (one login for many), and revokes when it stops."""

from __future__ import annotations

from pathlib import Path

from support.openbao import Session, toml, unique
from support.serverutil import Server, secret_body, server_config, write_secret

SECRET = "5d41402abc4b2a76b9719d911017c592ae9a9f6d7c1c0f6e2e7e0a1b2c3d4e5f"


def test_drone_reads_vault_with_one_login_kept_and_revoked_at_stop(bao: Session, tmp_path: Path) -> None:
    server_api = bao.server
    name = unique("ci")
    server_api.put_kv("secret", f"ci/octocat/hello/{name}", {"password": "hunter2-vault"})
    secret_id = write_secret(tmp_path / "secret-id", bao.secret_id() + "\n")
    drone_secret = write_secret(tmp_path / "drone-secret", SECRET + "\n")
    body = (
        f'[vault]\naddress = {toml(server_api.address)}\nauth_method = "approle"\n'
        f"role_id = {toml(bao.role_id)}\nsecret_id_file = {toml(secret_id)}\n"
        f'[drone]\nsecret_file = "{drone_secret}"\n'
        '[[drone.policy]]\nrepo = "octocat/*"\nevent = "push"\nallow = ["vault:secret/ci/{repo}/**"]\n'
    )
    config, port = server_config(tmp_path, body, server_extra='store = "vault"\n')
    before = server_api.accessors()
    mark = server_api.audit_mark()
    with Server(config, port) as running:
        for _ in range(4):
            answer = running.drone_secret(
                SECRET, secret_body(f"vault:secret/ci/octocat/hello/{name}", "password", repo="octocat/hello")
            )
            assert answer.status == 200 and answer.json()["data"] == "hunter2-vault", answer.body
        during = server_api.accessors() - before
        assert running.terminate() == 0
    seen = server_api.audited(mark)
    assert seen.count("update auth/approle/login") == 1, seen
    assert len(during) == 1  # the login's token, kept across the four requests
    assert server_api.accessors() - before == set()  # revoked when the server stopped
