"""HashiCorp Vault and OpenBao: KV v1, KV v2 and other secrets engines.

Transport: urllib3 directly, not hvac and not requests. Every fetch is a
fresh process, so import time is the product's speed: ``import hvac`` costs
about 115 ms (it pulls requests and every API module), urllib3 about 20 ms,
and urllib3 is carried anyway for botocore.

What a reference ``vault:<mount>/<path>`` reads:

- KV v2: ``GET /v1/<mount>/data/<path>[?version=N]``, its ``data.data`` map;
- KV v1: ``GET /v1/<mount>/<path>``, its ``data`` map;
- any other engine (database, aws, pki, ...): ``GET /v1/<mount>/<path>``,
  its ``data`` map. A lease that comes with it is left to expire: the plugin
  neither renews it (the task owns what it was handed; the node agent keeps
  no secret) nor revokes it (that would end the credentials just handed to
  the task).

The parts, each named after Vault's own vocabulary:

- ``client``: the transport (one urllib3 pool, TLS always verified, the
  deadline, a 429's retries) and what a status means before any caller
  reads it; the messages that quote Vault, with credentials blanked out;
- ``auth``: where the token comes from (token file, AppRole, cert, JWT),
  the one login per process, kept while its lease lasts (renewed, replaced)
  and whether Vault still accepts the token;
- ``kv``: which mount holds a path (``vault.kv_mounts`` or Vault's
  preflight), Vault's own API refused, and the reads of KV v1, v2 and
  other engines;
- ``store``: the ``Vault`` backend a fetch uses, putting them together;
- ``warm``: what a long-lived process (the node agent) keeps across fetches
  (connections, the operator's token, found mounts) and lends to each
  fetch with its own deadline.

Messages name the reference and the store and say what to check; they never
carry a secret value, a token, a secret_id or a JWT. The tests are
tests/support/backend_contract.py (every store's) and tests/test_stores_vault.py,
against a real OpenBao server.
"""

from nomad_secrets.stores.vault.store import Vault

__all__ = ["Vault"]
