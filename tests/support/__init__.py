"""What the tests stand on, never a test itself (as urllib3's dummyserver):
the executable run as Nomad runs it (nomad), a fresh node with its own
unpack cache (node), the real servers' starters
(openbao, moto's in conftest), Go's own decoder and signer (gocheck,
woodpecker, with their Go programs beside them), the doubles for what a real
server cannot be made to do (vault_faults, aws_double, netutil), and the
shared store contract (backend_contract).

tests/ holds only conftest.py and test_*.py beside this package
(tests/test_house.py checks it); pytest finds it on its pythonpath, so a test
imports ``from support.nomad import NomadClient``.
"""
