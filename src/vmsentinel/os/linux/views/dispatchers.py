"""The system call dispatchers' own calls, checked without history or a vendor image.

Since Linux 6.9 (and 6.1.85) ``x64_sys_call``, ``x32_sys_call`` and ``ia32_sys_call`` are one
``switch`` of direct calls (or tail calls) to the syscall functions, so a rootkit that wants a hook
the syscall table does not show rewrites one of those calls. Disassembled, every direct call or jump
of a dispatcher must land inside itself, on a syscall function (``__x64_sys_*``, ``__ia32_sys_*`` and
their compat forms), a return thunk, or ftrace; anything else is reported with where it goes.

    calls = read_dispatcher_calls(reader, resolver, module_text)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from capstone import CS_ARCH_X86, CS_MODE_64, Cs, CsError

from vmsentinel.errors import ProfileError, ReadError
from vmsentinel.os.declare import column
from vmsentinel.os.linux.reader import KernelReader
from vmsentinel.os.linux.symbols import SymbolResolver, TextRange

#: the dispatchers, and the prefixes of the syscall functions they may call (the 32-bit ones reuse x64
#: functions for calls that take no pointers, and the compat ones)
DISPATCHERS = ("x64_sys_call", "x32_sys_call", "ia32_sys_call")
FAMILY = ("__x64_sys_", "__ia32_sys_", "__x64_compat_sys_", "__ia32_compat_sys_", "__x32_compat_sys_")
#: what any function may call or jump to (the kernel's own return thunks, ftrace)
ALWAYS = ("__x86_return_thunk", "__fentry__", "ftrace_", "srso_return_thunk", "srso_alias_return_thunk", "its_return_thunk")
#: a dispatcher is read up to this many bytes (6.12's x64_sys_call is ~8 KiB)
MAX_BYTES = 1 << 16
_cs = Cs(CS_ARCH_X86, CS_MODE_64)


@dataclass(frozen=True)
class DispatcherCall:
    dispatcher: str = column("DISPATCHER")
    address: int = column("ADDRESS", hex=True)
    target: int = column("TARGET", hex=True)
    #: the target's symbol, or the memory it lies in
    lands_in: str = column("LANDS IN")
    #: the target is no syscall function (nor inside the dispatcher, a return thunk or ftrace)
    foreign: bool = column("FOREIGN")


@dataclass
class DispatcherSweep:
    calls: list[DispatcherCall] = field(default_factory=list)
    #: dispatchers this kernel has (none before 6.9 / 6.1.85)
    dispatchers: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def read_dispatcher_calls(reader: KernelReader, resolver: SymbolResolver, module_text: Sequence[TextRange]) -> DispatcherSweep:
    sweep = DispatcherSweep()
    for name in DISPATCHERS:
        try:
            start = reader.symbol(name)
        except ProfileError:
            continue
        sweep.dispatchers.append(name)
        size = min(resolver.extent(start) or MAX_BYTES, MAX_BYTES)
        try:
            code = reader.read(start, size)
        except ReadError as exc:
            sweep.problems.append(f"{name}: {exc}")
            continue
        try:
            insns = list(_cs.disasm_lite(code, start))
        except CsError as exc:
            sweep.problems.append(f"{name}: does not disassemble: {exc}")
            continue
        for address, _size, mnemonic, operands in insns:
            if mnemonic not in ("call", "jmp") or not operands.startswith("0x"):
                continue
            target = int(operands, 16)
            if start <= target < start + size:
                continue  # a branch inside the dispatcher
            symbol = resolver.lookup(target)
            label = symbol[0] if symbol is not None and symbol[1] == 0 else resolver.describe(target) or ""
            own = symbol is not None and symbol[1] == 0 and symbol[0].startswith(FAMILY)
            kernel_own = symbol is not None and any(symbol[0].startswith(p) for p in ALWAYS)
            if not label:
                label = resolver.owner(target, module_text)
            sweep.calls.append(DispatcherCall(name, address, target, label, not (own or kernel_own)))
    return sweep
