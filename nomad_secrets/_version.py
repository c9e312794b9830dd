"""The package version (PEP 440) and its hashicorp/go-version form.

``scripts/build --version`` rewrites this file inside the executable; a test
checks that GO_VERSION is ``goversion.to_go_version(__version__)``, and
``--socket-dir`` sets SOCKET_DIR ("": agent/client.py's SOCKET_DIR).
"""

__version__ = "0.1.0"
GO_VERSION = "0.1.0"
SOCKET_DIR = ""
