"""``nomad-secrets serve``: the CI front doors, over HTTP.

Drone's secret and admission extensions, Bitbucket Pipelines' secrets
provider and Woodpecker's secret extension ask the question a Nomad job
asks (which secrets may this caller read?) over HTTP. Each door turns its request into references and a
``policy.Caller``, then the plugin's own ``resolve.check_policy`` and
``resolve.resolve`` answer, and the door writes the answer in its protocol.

This package runs from the installed package with the ``server`` extra
(Starlette, uvicorn, PyJWT): never from the plugin's executable, which
carries none of it, and nothing outside this package imports it but
``cli.operator_command`` (tests/test_server_house.py holds both).

Modules, one job each:

- ``settings``: the ``[server]``, ``[drone]``, ``[admission]``,
  ``[bitbucket]`` and ``[woodpecker]`` sections, checked, and the files
  they name, trusted;
- ``exchange``: a request and an answer as the doors see them;
- ``httpsig``: Drone's HTTP signatures, verified;
- ``message_signatures``: Woodpecker's HTTP Message Signatures (RFC 9421),
  verified;
- ``aesgcm``: Drone's encrypted answer;
- ``fetchjson``: a bounded GET of JSON (GitHub's API, an OIDC issuer);
- ``stores``: the store clients every request shares;
- ``named``: the rules that give a caller NAME = reference pairs, read;
- ``drone_secret``, ``drone_admission`` (with ``github``), ``bitbucket``
  (with ``oidc``), ``woodpecker``: the doors;
- ``app``: the HTTP application (Starlette): routes, limits, access log;
- ``http11``: uvicorn's HTTP/1.1 protocol with a deadline on headers;
- ``listen``: the listening sockets, bound first, shared out per peer;
- ``main``: the process: uvicorn, TLS, signals, graceful shutdown.
"""
