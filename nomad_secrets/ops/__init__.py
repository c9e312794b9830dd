"""What operators run by hand: ``check`` (is this node ready: config,
trust, stores, the agent, the metrics file) and ``install`` (put a build in
the plugin directory so that a running fetch never sees half of it).

May import: every wing below the entry (``agent``, ``stores``, ``records``,
``core``, ``process``); only ``cli`` imports it.
"""
