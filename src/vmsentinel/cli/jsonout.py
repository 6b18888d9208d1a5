"""The one way every command writes JSON.

An array of records is written one compact record per line: as easy to read
with ``jq`` or ``grep`` as indented JSON, and made by the C encoder (indented
output goes through the pure-Python one, which costs more than reading the
guest). Anything else is indented.
"""

from __future__ import annotations

import json
from typing import Any


def json_text(data: Any) -> str:
    if isinstance(data, list):
        if not data:
            return "[]\n"
        return "[\n" + ",\n".join(json.dumps(item, default=str) for item in data) + "\n]\n"
    return json.dumps(data, indent=2, default=str) + "\n"
