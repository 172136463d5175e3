"""How clinical systems and people reach imaging-crosscheck: the CLI, the demo and its report.

(The CDS Hooks service, the REST API and the review queue are later issues.)
"""

from plugin.cli import main

__all__ = ["main"]
