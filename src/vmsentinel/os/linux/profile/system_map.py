"""Plain ``System.map`` files (``nm -n vmlinux`` output): ``ADDRESS TYPE NAME`` per line.

Debian's kernel package ships a placeholder instead of the real file; that is
recognised and refused with a pointer to what to use instead.
"""

from __future__ import annotations

import re
from pathlib import Path

from vmsentinel.errors import ProfileError
from vmsentinel.os.linux.profile.profile import SymbolTable

_LINE = re.compile(r"^([0-9a-fA-F]{1,16}) ([A-Za-z?]) (\S{1,512})(?:\s+\[\S+\])?$")
MAX_LINES = 4_000_000


def read_system_map(path: str | Path) -> SymbolTable:
    names: list[str] = []
    types: list[str] = []
    addresses: list[int] = []
    with open(path, errors="replace") as f:
        for count, line in enumerate(f):
            if count >= MAX_LINES:
                raise ProfileError(f"{path}: more than {MAX_LINES} lines; not a System.map")
            line = line.rstrip("\n")
            if "The real System.map is in" in line:
                raise ProfileError(
                    f"{path} is Debian's placeholder, not a System.map; build the profile from the "
                    "kernel image or from memory instead (kallsyms)"
                )
            m = _LINE.match(line)
            if not m:
                if line.strip():
                    raise ProfileError(f"{path}:{count + 1}: not a System.map line: {line[:80]!r}")
                continue
            addresses.append(int(m.group(1), 16))
            types.append(m.group(2))
            names.append(m.group(3))
    if not names:
        raise ProfileError(f"{path}: no symbols")
    return SymbolTable(names, "".join(types), addresses)
