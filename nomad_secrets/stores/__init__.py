"""The stores: AWS Secrets Manager, SSM Parameter Store, Vault/OpenBao.

Owns the registry of stores (``registry``: what each scheme opens, with
which label), asking the stores for a request's references (``resolve``:
concurrently, inside the deadline, failing closed, bounded), the warm
clients a long-lived process lends to each fetch (``pool``), and one
package per store family (``aws``, ``vault``), imported only when a
reference needs it: a fetch from SSM never imports the Vault client.

May import: ``core``, ``process``, ``_version``; botocore and urllib3.
"""
