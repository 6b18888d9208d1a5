"""Direct branches out of core kernel text on a synthetic kernel: a call or jump into executable memory
outside the text is reported with its owner; one at a place the kernel patches itself, in one of its own
trampolines, into memory that is not executable, or made of bytes inside another instruction is not; a
page of text that cannot be read is a problem, not a crash."""

from __future__ import annotations

import bisect
from typing import Any, ClassVar

from tests.synthetic import DIRECT_MAP, synthetic_kernel_reader
from tests.synthetic_kernel import sample_btf

from vmsentinel.os.linux.symbols import TextRange
from vmsentinel.os.linux.views.branches import read_foreign_branches

D = DIRECT_MAP
TEXT, TEXT_END = D + 0x100000, D + 0x102000
MODULE = D + 0x600000  # executable memory outside the text (a module's)
NOWHERE = D + 0x5000000  # past RAM: mapped by nothing


class Resolver:
    text_start, text_end = TEXT, TEXT_END
    names: ClassVar[list[tuple[int, str]]] = [
        (TEXT + offset, name)
        for offset, name in (
            (0, "func_a"),
            (0x100, "func_b"),
            (0x200, "func_c"),
            (0x300, "func_d"),
            (0x400, "__SCT__tp_x"),
            (0x500, "func_f"),
        )
    ]

    def lookup(self, addr: int) -> tuple[str, int] | None:
        i = bisect.bisect_right([a for a, _ in self.names], addr) - 1
        return (self.names[i][1], addr - self.names[i][0]) if i >= 0 else None

    def describe(self, addr: int) -> str | None:
        found = self.lookup(addr) if TEXT <= addr < TEXT_END else None
        return None if found is None else found[0] if not found[1] else f"{found[0]}+{found[1]:#x}"

    def owner(self, addr: int, module_text: Any = ()) -> str:
        if TEXT <= addr < TEXT_END:
            return "kernel"
        for rng in module_text:
            if rng.start <= addr < rng.end:
                return f"module:{rng.owner}"
        return "unknown"


def branch(opcode: int, at: int, target: int) -> bytes:
    return bytes([opcode]) + ((target - at - 5) & 0xFFFFFFFF).to_bytes(4, "little")


def kernel() -> tuple[Any, Any]:
    mem, reader = synthetic_kernel_reader(sample_btf(), symbols={"_text": TEXT})
    code = {
        TEXT: b"\x55" + branch(0xE8, TEXT + 1, MODULE + 0x40) + b"\x5d\xc3",  # push rbp; call module; pop; ret
        # movabs rax, imm64 whose bytes hold e8 + rel32 to the module: not an instruction
        TEXT + 0x100: b"\x48\xb8" + branch(0xE8, TEXT + 0x102, MODULE) + b"\x00\x00\x00\xc3",
        TEXT + 0x200: branch(0xE9, TEXT + 0x200, NOWHERE),  # a jump to nothing executable
        TEXT + 0x300: branch(0xE8, TEXT + 0x300, MODULE + 0x80) + b"\xc3",  # a known site (ftrace, static call...)
        TEXT + 0x400: branch(0xE9, TEXT + 0x400, MODULE + 0x90),  # a static call trampoline at work
        TEXT + 0x500: b"\x90\x90" + branch(0xE9, TEXT + 0x502, MODULE + 0xA0),  # an inline hook, jmp
    }
    for at, data in code.items():
        mem.write(at - D, data)
    return mem, reader


def test_branches_out_of_kernel_text_are_found_and_the_kernels_own_are_not() -> None:
    _mem, reader = kernel()
    sweep = read_foreign_branches(reader, Resolver(), [TextRange("rk", MODULE, MODULE + 0x1000)], {TEXT + 0x300})  # type: ignore[arg-type]
    assert not sweep.problems and sweep.scanned == TEXT_END - TEXT
    assert [(b.symbol, b.instruction, b.target - MODULE, b.owner) for b in sweep.branches] == [
        ("func_a+0x1", "call", 0x40, "module:rk"),
        ("func_f+0x2", "jmp", 0xA0, "module:rk"),
    ]


def test_undecodable_bytes_before_a_branch_do_not_hide_it() -> None:
    mem, reader = kernel()
    mem.write(TEXT + 0x500 - D, b"\x0f\xff\x0f")  # bytes that do not decode, then the hook further on
    mem.write(TEXT + 0x510 - D, branch(0xE8, TEXT + 0x510, MODULE + 0xB0))
    sweep = read_foreign_branches(reader, Resolver(), [], set())  # type: ignore[arg-type]
    assert ("func_f+0x10", "call", "unknown") in [(b.symbol, b.instruction, b.owner) for b in sweep.branches]


def test_text_that_cannot_be_read_is_a_problem() -> None:
    _mem, reader = kernel()

    class Beyond(Resolver):
        text_end = D + 0x1000000 + 0x100000  # text claimed past the end of RAM

    sweep = read_foreign_branches(reader, Beyond(), [], set())  # type: ignore[arg-type]
    assert any("cannot read" in p for p in sweep.problems)
    assert sweep.scanned < Beyond.text_end - Beyond.text_start


def test_calls_to_the_kernels_own_boot_time_functions_are_its_own() -> None:
    init = D + 0x700000  # __init text, still executable (a look before the kernel freed it)

    class Booting(Resolver):
        names: ClassVar[list[tuple[int, str]]] = [*Resolver.names, (TEXT + 0x600, "kernel_init"), (init, "kernel_init_freeable")]

        def owner(self, addr: int, module_text: Any = ()) -> str:
            return "kernel-init" if init <= addr < init + 0x1000 else super().owner(addr, module_text)

    mem, reader = kernel()
    mem.write(TEXT + 0x600 - D, branch(0xE8, TEXT + 0x600, init))  # kernel_init calls kernel_init_freeable
    mem.write(TEXT + 0x605 - D, branch(0xE8, TEXT + 0x605, init + 0x40))  # into the middle of it: not the compiler's
    sweep = read_foreign_branches(reader, Booting(), [], {TEXT + 0x300})  # type: ignore[arg-type]
    assert [(b.at - TEXT, b.target - init) for b in sweep.branches if b.owner == "kernel-init"] == [(0x605, 0x40)]
