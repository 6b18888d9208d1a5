"""What the OS views ask of a kernel's types, whatever the types came from.

Two sources answer the same questions: BTF (the kernel's own, from its image or
its memory) and Volatility 3 ISF (for kernels without BTF)::

    types.struct_size("module")
    types.member_offset("task_struct", "cred")
    types.member_offset("module", "mem")        # anonymous members are looked into
    types.enum_values("pid_type")
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from vmsentinel.errors import BtfError

if TYPE_CHECKING:  # parsed BTF is loaded on first use
    from vmsentinel.os.linux.profile.btf import Btf


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


class BtfTypes(_MemberLookup):
    """TypeInfo over parsed BTF. Given a loader instead of a parsed ``Btf`` (a profile loaded from the
    cache), it parses when first asked, so a look that the saved hot layout answers never does."""

    def __init__(self, btf: Btf | Callable[[], Btf], source: str) -> None:
        self._btf: Btf | None = None if callable(btf) else btf
        self._load: Callable[[], Btf] | None = btf if callable(btf) else None
        self.source = source
        self._memo: dict[tuple[str, str], int] = {}

    @property
    def btf(self) -> Btf:
        if self._btf is None:
            assert self._load is not None
            self._btf, self._load = self._load(), None
        return self._btf

    def struct_size(self, name: str) -> int:
        return self.btf.size_of(self.btf.find(name))

    def member_offset(self, struct: str, path: str) -> int:
        key = (struct, path)
        if key not in self._memo:
            self._memo[key] = self.btf.member_offset(struct, path)[0]
        return self._memo[key]

    def enum_values(self, name: str) -> dict[str, int]:
        return self.btf.enum_values(name)

    def has_struct(self, name: str) -> bool:
        try:
            self.btf.find(name)
            return True
        except BtfError:
            return False

    def count(self) -> int:
        return len(self.btf) - 1


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


__all__ = ["BtfError", "BtfTypes", "IsfTypes", "TypeInfo"]
