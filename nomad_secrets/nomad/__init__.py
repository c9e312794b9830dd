"""Nomad's front door: the plugin's side of Nomad's contract.

Owns the one conversation with the Nomad client (``protocol``: stdout
carries one JSON object, nothing on stderr, exit 0), turning the path and
the environment Nomad gives into references and a caller (``fetch``), and
running one fetch from config to answer (``answer``), in the plugin's
process or for the node agent.

May import: ``stores``, ``records``, ``core``, ``process``.
"""
