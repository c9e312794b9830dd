"""The node agent: one long-lived process per plugin directory that answers
its fetches with warm store clients (docs/agent.md).

A fetch in process pays for the interpreter, botocore's import and a new
store client every time (about 150 ms of CPU), which a burst of task starts
on a small node multiplies. The agent holds warm store clients instead.

- ``client``: the plugin's side, run by the bootstrap before anything of
  the plugin is unpacked (standard library only): forward, start the agent
  when none runs, replace a hung one, or say why the fetch runs in process;
- ``server``: ``nomad-secrets agent``, started by a fetch, by systemd, or
  by hand; every request is answered by the same code as a fetch in
  process (config, policy, identity checks, messages), with warm clients;
- ``callers`` and ``nomad_jwks``: who a caller other than root speaks for;
- ``build``: which build and which socket directory this code is.

Both sides check who is at the other end with SO_PEERCRED: the agent serves
root and its own user (and, for a verified job only, the users the operator
names), the plugin talks only to an agent running as root (or itself).
"""
