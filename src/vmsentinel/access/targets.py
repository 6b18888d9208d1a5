"""The access layer's former entry point, kept under its old names while callers
move to :mod:`vmsentinel.access` (``open_connector``, ``Connector``)::

    with open_target("lab:web1") as target:
        target.memory.read(0, 16)
"""

from __future__ import annotations

from vmsentinel.access.connector import Connector as Target
from vmsentinel.access.registry import open_connector as open_target

__all__ = ["Target", "open_target"]
