"""Direct calls and jumps that leave core kernel text for other executable memory:
the shape of an inline hook, seen without any history and without the vendor's
image (an intrinsic check of a first look).

Core kernel code calls and jumps within itself. The only direct branches out of
it that the kernel writes go to trampolines it makes itself, and only from
places it keeps in its own tables: ftrace call sites (to ftrace and BPF
trampolines), static call sites and their trampolines, jump labels, optimized
kprobes, the BPF dispatchers; and it calls its own boot-time (``__init``) functions,
from the few places allowed to, until it frees them. Every other ``call rel32`` or ``jmp rel32`` in
core text whose target is executable memory outside it was written by someone
else.

The text is scanned for the opcode bytes (a few hundred thousand), each target
looked up once per page in the kernel's page tables (most land on nothing
executable), and only the few that do are disassembled from the start of their
function, so that a byte inside another instruction is not taken for a branch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from vmsentinel.errors import VmSentinelError
from vmsentinel.os.declare import column
from vmsentinel.os.linux.reader import KernelReader
from vmsentinel.os.linux.symbols import SymbolResolver, TextRange

MASK64 = (1 << 64) - 1
CHUNK = 1 << 20
#: a function is disassembled this far at most to find whether a candidate is an instruction
MAX_FUNCTION = 1 << 16
#: bytes decoded before a candidate that no symbol is near
WINDOW = 4096
#: candidates disassembled at most (hostile text full of them cannot make a first look endless)
MAX_CANDIDATES = 4096
#: functions whose branches out are the kernel's own trampolines at work
KERNEL_TRAMPOLINES = ("__SCT__", "bpf_dispatcher_", "__bpf_", "ftrace_", "arch_ftrace_", "__x86_indirect_")
_OPCODES = re.compile(rb"[\xe8\xe9]")


@dataclass(frozen=True)
class ForeignBranch:
    at: int = column("AT", hex=True)
    symbol: str | None = column("SYMBOL")
    instruction: str = column("INSN")
    target: int = column("TARGET", hex=True)
    owner: str = column("TARGET OWNER")


@dataclass
class BranchSweep:
    branches: list[ForeignBranch] = field(default_factory=list)
    #: bytes of core kernel text scanned
    scanned: int = 0
    problems: list[str] = field(default_factory=list)


def static_call_sites(reader: KernelReader, problems: list[str]) -> set[int]:
    """The core kernel's static call sites (``.static_call_sites``: s32 offsets to each call)."""
    size = reader.size("static_call_site") if reader.has("static_call_site", "addr") else 8
    return set(reader.relative_table("__start_static_call_sites", "__stop_static_call_sites", size, 1 << 20, problems))


def read_foreign_branches(
    reader: KernelReader, resolver: SymbolResolver, module_text: list[TextRange], known_sites: set[int]
) -> BranchSweep:
    """Every direct call or jump in core kernel text to executable memory outside it, except at the sites
    the kernel patches itself (``known_sites``: ftrace, jump labels, static calls, kprobes)."""
    sweep = BranchSweep()
    start, end = resolver.text_start, resolver.text_end
    executable: dict[int, bool] = {}
    candidates: list[tuple[int, int]] = []
    for chunk in range(start, end, CHUNK):
        try:  # a little more than the chunk: a branch across its end is seen whole
            data = reader.read(chunk, min(CHUNK, end - chunk) + 4)
        except VmSentinelError:
            try:
                data = reader.read(chunk, min(CHUNK, end - chunk))
            except VmSentinelError as exc:
                sweep.problems.append(f"kernel text at {chunk:#x}: {exc}")
                continue
        sweep.scanned += min(CHUNK, end - chunk)
        limit = min(CHUNK, end - chunk, len(data) - 4)
        for match in _OPCODES.finditer(data, 0, max(0, limit)):
            i = match.start()
            at = chunk + i
            target = (at + 5 + int.from_bytes(data[i + 1 : i + 5], "little", signed=True)) & MASK64
            if start <= target < end or target < 1 << 63 or at in known_sites:
                continue
            page = target >> 12
            runs = executable.get(page)
            if runs is None:
                try:
                    runs = not reader.space.translation(target).nx
                except VmSentinelError:
                    runs = False
                executable[page] = runs
            if runs:
                candidates.append((at, target))
    if len(candidates) > MAX_CANDIDATES:
        sweep.problems.append(f"{len(candidates)} possible branches out of kernel text: the first {MAX_CANDIDATES} checked")
        del candidates[MAX_CANDIDATES:]
    for at, target, insn in _confirmed(reader, resolver, candidates, sweep.problems):
        if _calls_init_code(resolver, target):
            continue
        sweep.branches.append(ForeignBranch(at, resolver.describe(at), insn, target, resolver.owner(target, module_text)))
    return sweep


def _calls_init_code(resolver: SymbolResolver, target: int) -> bool:
    """A branch to the start of one of the kernel's own boot-time functions: the compiler's call from a
    function marked to be allowed to (``__ref``) into ``__init`` code, freed after boot (and looked at
    only if a first look comes before that, or its pages were left executable)."""
    if resolver.owner(target) != "kernel-init":
        return False
    found = resolver.lookup(target)
    return found is not None and found[1] == 0


def _confirmed(
    reader: KernelReader, resolver: SymbolResolver, candidates: list[tuple[int, int]], problems: list[str]
) -> list[tuple[int, int, str]]:
    """The candidates that are instructions (decoded from their function's start), outside the kernel's
    own trampolines."""
    import capstone

    decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    by_function: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for at, target in candidates:
        found = resolver.lookup(at)
        if found is None:
            by_function.setdefault(("", at), []).append((at, target))
            continue
        name, offset = found
        if name.startswith(KERNEL_TRAMPOLINES):
            continue
        by_function.setdefault((name, at - offset), []).append((at, target))
    out: list[tuple[int, int, str]] = []
    for (_name, function), items in by_function.items():
        last = max(at for at, _ in items) + 5
        starts, stopped = (
            _instructions(reader, decoder, function, last, problems) if last - function <= MAX_FUNCTION else ({}, function)
        )
        for at, target in items:
            if at < stopped:
                mnemonic = starts.get(at)
            else:  # no symbol near, or bytes before it that do not decode: decode windows before it from three
                # offsets; x86 code falls into step within a few instructions, so all agree on a true instruction
                seen = {_instructions(reader, decoder, at - WINDOW + k, at + 5, problems)[0].get(at) for k in (0, 1, 3)}
                mnemonic = seen.pop() if len(seen) == 1 else None
            if mnemonic in ("call", "jmp"):
                out.append((at, target, str(mnemonic)))
    return out


def _instructions(reader: KernelReader, decoder: Any, start: int, end: int, problems: list[str]) -> tuple[dict[int, str], int]:
    """address -> mnemonic of the instructions decoded from ``start`` towards ``end``, and where decoding
    stopped (``end`` or past it when every byte decoded; else the first byte that did not)."""
    try:
        code = reader.read(start, end - start)
    except VmSentinelError as exc:
        problems.append(f"kernel text at {start:#x}: {exc}")
        return {}, start
    starts: dict[int, str] = {}
    offset = 0
    for address, size, mnemonic, _ops in decoder.disasm_lite(code, start):
        starts[address] = mnemonic
        offset = address + size - start
    return starts, start + offset if offset < len(code) else end
