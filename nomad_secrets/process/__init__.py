"""The process: what every run of the executable needs before and beside
any secret, standard library only.

Owns the file-trust rules (``trust``), the unpack cache (``cache``), the
node's slots for fetches in process (``admission``), the deadline, the
process's own limits (``limits``), the operator's debug log and the node
files it writes (``debuglog``, ``nodefile``), the vocabulary of
failures every answer uses (``errors``: kinds and messages), and how a
run ends (``endings``: every last answer, the error object, the kept
stdout).

May import: the standard library, and the modules of this wing. Nothing
else of ours: ``trust``, ``cache``, ``admission`` and ``endings`` run
from the zip's root before anything is unpacked (scripts/build stores
them there).
"""
