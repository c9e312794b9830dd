"""The node agent: one long-lived process that answers fetches for the plugin.

A fetch in process pays for the interpreter, botocore's import and a new
store client every time (docs/performance.md: about 120 ms of CPU, most of
it imports), which a burst of task starts on a small node multiplies. The
agent holds warm store clients instead; the plugin, when the operator sets
``agent.socket``, forwards the fetch over a unix socket and prints the
agent's answer, importing only the standard library on that path.

- ``wire``: the framing both sides speak;
- ``client``: the plugin's side (standard library only), which gives up
  quickly and lets the plugin fetch in process: an accelerator, never a
  single point of failure;
- ``server``: ``nomad-secrets agent``, with systemd socket activation;
  every request is answered by the same code as a fetch in process
  (config, policy, identity checks, messages), with warm clients.

Both sides check who is at the other end with SO_PEERCRED: the agent serves
root (and the users the operator names), the plugin talks only to an agent
running as root (or itself).
"""
