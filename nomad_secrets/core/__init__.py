"""The question every front door asks: which secrets may this caller read?

Owns the request as Nomad gives it (``request``: the job's identity and the
env block's options), the stores a reference can name, as the config knows
them (``schemes``), the reference syntax (``reference``), the policy and
its callers (``policy``), the workload identity check (``identity``), the
shaping of a secret into keys (``shape``), and the operator's configuration
file (``config/``: ``model``, ``reader``, ``parser``). Knows no store's
client and no front door's protocol.

May import: ``process`` and the standard library (tomli on 3.10).
"""
