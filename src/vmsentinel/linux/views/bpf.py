"""eBPF programs loaded in the guest kernel, from the kernel's ``prog_idr``.

A program of a tracing type (kprobe, tracepoint, fentry/fexit, LSM...) runs
inside kernel functions and can read or rewrite what they see: an eBPF rootkit
needs no module and leaves kernel text untouched. Each program is listed with
its id, type, name, tag and, for BTF-attached types, the kernel function it
attaches to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..reader import KernelReader, ReadError
from .declare import column

MAX_PROGRAMS = 1 << 16
#: program types that run inside kernel functions or on syscall paths (the others filter packets,
#: sockets or cgroup access)
HOOKING_TYPES = frozenset(
    {
        "BPF_PROG_TYPE_KPROBE",
        "BPF_PROG_TYPE_TRACEPOINT",
        "BPF_PROG_TYPE_PERF_EVENT",
        "BPF_PROG_TYPE_RAW_TRACEPOINT",
        "BPF_PROG_TYPE_RAW_TRACEPOINT_WRITABLE",
        "BPF_PROG_TYPE_TRACING",
        "BPF_PROG_TYPE_LSM",
        "BPF_PROG_TYPE_EXT",
        "BPF_PROG_TYPE_STRUCT_OPS",
    }
)


@dataclass(frozen=True)
class BpfProgram:
    id: int = column("ID")
    type: str = column("TYPE")
    name: str = column("NAME")
    tag: str = column("TAG")
    attach_to: str | None = column("ATTACHED TO")
    instructions: int = column("INSNS")
    load_time_ns: int = column("LOADED (ns since boot)", table=False)
    hooking: bool = column("HOOKING")
    address: int = column("STRUCT", hex=True, table=False)


@dataclass
class BpfSweep:
    programs: list[BpfProgram] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class BpfReader:
    """Reads ``prog_idr``; the program type names come once from the kernel's own enum."""

    def __init__(self, r: KernelReader) -> None:
        self.r = r
        self.available = r.has_symbol("prog_idr") and r.types.has_struct("bpf_prog_aux")
        self.type_names = {v: k for k, v in r.types.enum_values("bpf_prog_type").items()} if self.available else {}

    def sweep(self) -> BpfSweep:
        """Every program in ``prog_idr`` (a kernel without BPF gives an empty sweep)."""
        sweep = BpfSweep()
        if not self.available:
            return sweep
        r = self.r
        head = r.symbol("prog_idr") + r.off("idr", "idr_rt") + r.off("xarray", "xa_head")
        entries, problems = r.xarray_entries(head, limit=MAX_PROGRAMS)
        sweep.problems.extend(problems)
        for _index, prog in entries:
            try:
                sweep.programs.append(self._program(prog))
            except ReadError as exc:
                sweep.problems.append(f"bpf program {prog:#x}: {exc}")
        sweep.programs.sort(key=lambda p: p.id)
        return sweep

    def _program(self, prog: int) -> BpfProgram:
        r = self.r
        kind = r.u32(prog + r.off("bpf_prog", "type"))
        aux = r.pointer(prog + r.off("bpf_prog", "aux"))
        if aux is None:
            raise ReadError("no bpf_prog_aux")
        name = r.read(aux + r.off("bpf_prog_aux", "name"), 16).split(b"\0", 1)[0].decode(errors="replace")
        attach = None
        if r.has("bpf_prog_aux", "attach_func_name"):
            ptr = r.pointer(aux + r.off("bpf_prog_aux", "attach_func_name"))
            attach = r.cstring(ptr, 128) if ptr else None
        type_name = self.type_names.get(kind, f"type {kind}")
        return BpfProgram(
            id=r.u32(aux + r.off("bpf_prog_aux", "id")),
            type=type_name.removeprefix("BPF_PROG_TYPE_").lower(),
            name=name,
            tag=r.read(prog + r.off("bpf_prog", "tag"), 8).hex(),
            attach_to=attach,
            instructions=r.u32(prog + r.off("bpf_prog", "len")),
            load_time_ns=r.u64(aux + r.off("bpf_prog_aux", "load_time")),
            hooking=type_name in HOOKING_TYPES,
            address=prog,
        )
