"""The syscall dispatchers' calls, on synthetic code: calls and tail calls of syscall functions and
branches inside the dispatcher are its own; a call anywhere else (a module, another kernel function)
is foreign and said where it lands; bytes that do not decode or cannot be read are problems, and a
kernel without dispatchers (before 6.9 / 6.1.85) has none to check."""

from __future__ import annotations

import bisect
import struct
from typing import Any

from vmsentinel.errors import ProfileError, ReadError
from vmsentinel.os.linux.views.dispatchers import read_dispatcher_calls

BASE = 0xFFFFFFFF81000000
DISPATCH = BASE + 0x1000
SYSCALLS = {"__x64_sys_read": BASE + 0x2000, "__x64_sys_getpid": BASE + 0x2100, "__ia32_compat_sys_open": BASE + 0x2200}
OTHER = BASE + 0x3000  # some kernel function that is no syscall
THUNK = BASE + 0x3100  # __x86_return_thunk
MODULE = 0xFFFFFFFFC0001000


def _rel(at: int, target: int) -> bytes:
    return struct.pack("<i", target - (at + 5))


def dispatcher(calls: list[tuple[int, int]]) -> bytes:
    """cmp/je chains of the kind the compiler makes, ending in each (opcode, target) call or jump."""
    code = bytearray()
    for opcode, target in calls:
        code += bytes.fromhex("83ff00")  # cmp edi, 0
        code += bytes.fromhex("7405")  # je +5 (inside)
        at = DISPATCH + len(code)
        code += bytes([opcode]) + _rel(at, target)
    at = DISPATCH + len(code)
    code += b"\xe9" + _rel(at, THUNK)  # return through the thunk
    return bytes(code)


class Kernel:
    def __init__(self, code: bytes, unreadable: bool = False) -> None:
        self.code = code
        self.unreadable = unreadable
        self.symbols = {"x64_sys_call": DISPATCH, "__x86_return_thunk": THUNK, "other_function": OTHER, **SYSCALLS}
        self.symbols["after_dispatcher"] = DISPATCH + len(code)
        self.sorted = sorted((a, n) for n, a in self.symbols.items())

    # the reader
    def symbol(self, name: str) -> int:
        if name not in self.symbols or name.endswith(("x32_sys_call", "ia32_sys_call")):
            raise ProfileError(f"no symbol {name!r}")
        return self.symbols[name]

    def read(self, address: int, length: int) -> bytes:
        if self.unreadable:
            raise ReadError(f"cannot read {length} bytes at {address:#x}")
        return self.code[address - DISPATCH : address - DISPATCH + length]

    # the resolver
    def lookup(self, addr: int) -> tuple[str, int] | None:
        i = bisect.bisect_right([a for a, _ in self.sorted], addr) - 1
        if i < 0 or not BASE <= addr < BASE + 0x10000:
            return None
        return self.sorted[i][1], addr - self.sorted[i][0]

    def describe(self, addr: int) -> str | None:
        found = self.lookup(addr)
        return None if found is None else f"{found[0]}+{found[1]:#x}" if found[1] else found[0]

    def owner(self, addr: int, module_text: Any = ()) -> str:
        return "modules-area" if addr >= 0xFFFFFFFFA0000000 and not BASE <= addr < BASE + 0x10000 else "kernel"

    def extent(self, addr: int) -> int:
        above = [a for a, _ in self.sorted if a > addr]
        return min(above) - addr if above else 0


def _calls(kernel: Kernel) -> Any:
    return read_dispatcher_calls(kernel, kernel, [])  # type: ignore[arg-type]


def test_calls_of_syscall_functions_and_branches_inside_are_the_dispatchers_own() -> None:
    kernel = Kernel(dispatcher([(0xE8, a) for a in SYSCALLS.values()] + [(0xE9, SYSCALLS["__x64_sys_read"])]))
    sweep = _calls(kernel)
    assert sweep.dispatchers == ["x64_sys_call"] and sweep.problems == []
    assert [(c.lands_in, c.foreign) for c in sweep.calls] == [
        ("__x64_sys_read", False),
        ("__x64_sys_getpid", False),
        ("__ia32_compat_sys_open", False),
        ("__x64_sys_read", False),
        ("__x86_return_thunk", False),
    ]


def test_a_call_into_a_module_or_another_kernel_function_is_foreign() -> None:
    kernel = Kernel(
        dispatcher([(0xE8, SYSCALLS["__x64_sys_read"]), (0xE8, MODULE), (0xE9, OTHER), (0xE8, SYSCALLS["__x64_sys_getpid"] + 4)])
    )
    foreign = [(c.lands_in, hex(c.target)) for c in _calls(kernel).calls if c.foreign]
    assert foreign == [
        ("modules-area", hex(MODULE)),
        ("other_function", hex(OTHER)),
        ("__x64_sys_getpid+0x4", hex(SYSCALLS["__x64_sys_getpid"] + 4)),
    ]


def test_unreadable_or_undecodable_dispatchers_are_problems_and_no_kernel_dispatcher_is_none() -> None:
    assert "cannot read" in _calls(Kernel(dispatcher([]), unreadable=True)).problems[0]
    junk = _calls(Kernel(b"\xe8\x00"))  # a call cut short: the rest does not decode (capstone stops; nothing found)
    assert junk.calls == []
    old = Kernel(b"")
    del old.symbols["x64_sys_call"]
    assert _calls(old).dispatchers == [] and _calls(old).calls == []
