"""What the OS views ask of a kernel's types, whatever the types came from.

Two sources answer the same questions: BTF (the kernel's own, from its image or
its memory) and Volatility 3 ISF (for kernels without BTF)::

    types.struct_size("module")
    types.member_offset("task_struct", "cred")
    types.member_offset("module", "mem")        # anonymous members are looked into
    types.enum_values("pid_type")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from vmsentinel.errors import BtfError
from vmsentinel.os.types import IsfTypes, TypeInfo, _MemberLookup

if TYPE_CHECKING:  # parsed BTF is loaded on first use
    from vmsentinel.os.linux.profile.btf import Btf


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


__all__ = ["BtfError", "BtfTypes", "IsfTypes", "TypeInfo"]
