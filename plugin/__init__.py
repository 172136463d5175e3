"""How clinical systems and people reach imaging-crosscheck: the CLI, the demo and its report,
the CDS Hooks service and the REST API (`plugin.service`), write-back, and the store.
"""

from importlib import metadata

from plugin.cli import main

try:
    __version__ = metadata.version("imaging-crosscheck")
except metadata.PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__", "main"]
