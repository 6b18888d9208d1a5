"""What OS views ask of a kernel's types, whatever the types came from: the questions
(:class:`TypeInfo`) and one answer every OS shares, Volatility 3 ISF (:class:`IsfTypes`: Linux
kernels without BTF, Windows symbol files made from PDBs, NT kernels' DWARF turned into ISF)::

    types.struct_size("_EPROCESS")
    types.member_offset("_EPROCESS", "ActiveProcessLinks")
    types.member_offset("module", "mem")        # anonymous members are looked into
"""

from __future__ import annotations

import json
import lzma
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from vmsentinel.errors import BtfError, ProfileError


class TypeInfo(Protocol):
    source: str

    def struct_size(self, name: str) -> int: ...

    def member_offset(self, struct: str, path: str) -> int: ...

    def has_member(self, struct: str, path: str) -> bool: ...

    def enum_values(self, name: str) -> dict[str, int]: ...

    def has_struct(self, name: str) -> bool: ...

    def count(self) -> int: ...


class _MemberLookup:
    """``has_member`` in terms of ``member_offset``, for both type sources."""

    def member_offset(self, struct: str, path: str) -> int:
        raise NotImplementedError

    def has_member(self, struct: str, path: str) -> bool:
        try:
            self.member_offset(struct, path)
            return True
        except BtfError:
            return False


@contextmanager
def _malformed(what: str) -> Iterator[None]:
    """An ISF file is someone else's JSON: a value of the wrong shape anywhere in it (a list for an object,
    text for an offset, a field without its type) is a :class:`BtfError` about the file, never a crash."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise BtfError(f"malformed ISF entry for {what}: {type(exc).__name__}: {exc}") from None


class IsfTypes(_MemberLookup):
    """TypeInfo over a Volatility 3 ISF document (``user_types``, ``enums``)."""

    def __init__(self, isf: dict[str, Any], source: str) -> None:
        self.user_types: dict[str, Any] = isf.get("user_types", {})
        self.enums: dict[str, Any] = isf.get("enums", {})
        self.source = source

    def _struct(self, name: str) -> dict[str, Any]:
        try:
            st: dict[str, Any] = self.user_types[name]
            return st
        except KeyError:
            raise BtfError(f"no struct or union named {name!r} in the ISF") from None

    def struct_size(self, name: str) -> int:
        with _malformed(name):
            return int(self._struct(name)["size"])

    def _field(self, struct: str, name: str, depth: int = 0) -> tuple[int, dict[str, Any]] | None:
        if depth > 32:
            raise BtfError(f"anonymous members of {struct} nest too deep")
        fields = self._struct(struct).get("fields", {})
        if name in fields:
            return int(fields[name]["offset"]), fields[name]["type"]
        for f in fields.values():
            t = f.get("type", {})
            if f.get("anonymous") and t.get("kind") in ("struct", "union"):
                inner = self._field(t["name"], name, depth + 1)
                if inner is not None:
                    return int(f["offset"]) + inner[0], inner[1]
        return None

    def member_offset(self, struct: str, path: str) -> int:
        offset, current = 0, struct
        with _malformed(f"{struct}.{path}"):
            for part in path.split("."):
                found = self._field(current, part)
                if found is None:
                    raise BtfError(f"struct {current} has no member {part!r} in the ISF")
                offset += found[0]
                current = found[1].get("name", "")
        return offset

    def enum_values(self, name: str) -> dict[str, int]:
        with _malformed(f"enum {name}"):
            if name not in self.enums:
                raise BtfError(f"no enum named {name!r} in the ISF")
            return {k: int(v) for k, v in self.enums[name]["constants"].items()}

    def has_struct(self, name: str) -> bool:
        return name in self.user_types

    def count(self) -> int:
        return len(self.user_types) + len(self.enums)


def load_isf(path: str | Path) -> dict[str, Any]:
    """An ISF document (plain or ``.json.xz``), checked to be one (a profile file is input too)."""
    raw = Path(path).read_bytes()
    try:
        if raw[:6] == b"\xfd7zXZ\x00":
            raw = lzma.decompress(raw)
        doc = json.loads(raw)
    except (lzma.LZMAError, ValueError, RecursionError) as exc:  # RecursionError: arrays nested thousands deep
        raise ProfileError(f"{path}: not an ISF JSON file: {exc}") from exc
    if not isinstance(doc, dict) or not {"symbols", "user_types"} <= doc.keys():
        raise ProfileError(f"{path}: not an ISF document (needs symbols and user_types)")
    if not all(isinstance(doc.get(key, {}), dict) for key in ("symbols", "user_types", "enums", "metadata")):
        raise ProfileError(f"{path}: not an ISF document (symbols, user_types, enums and metadata must be objects)")
    fmt = str(doc.get("metadata", {}).get("format", ""))
    if not fmt.startswith(("6.", "5.", "4.")):
        raise ProfileError(f"{path}: ISF format {fmt!r} is not supported")
    return doc


__all__ = ["IsfTypes", "TypeInfo", "load_isf"]
