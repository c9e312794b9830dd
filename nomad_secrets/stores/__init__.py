"""The stores: AWS Secrets Manager, SSM Parameter Store, Vault/OpenBao.

Owns the registry of stores (``registry``: per scheme, what opens it, how a
long-lived process keeps it warm, what ``check`` probes; ``backend``: the
shapes a store's code provides), asking the stores for a request's
references (``resolve``: concurrently, inside the deadline, failing
closed, bounded), the warm clients a long-lived process lends to each
fetch (``pool``), and one package per store family (``aws``, ``vault``), imported only when a
reference needs it: a fetch from SSM never imports the Vault client.

May import: ``core``, ``process``, ``_version``; botocore and urllib3.
"""
