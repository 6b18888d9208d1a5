"""eBPF programs loaded in the guest kernel, from the kernel's ``prog_idr``.

A program of a tracing type (kprobe, tracepoint, fentry/fexit, LSM...) runs
inside kernel functions and can read or rewrite what they see: an eBPF rootkit
needs no module and leaves kernel text untouched. Each program is listed with
its id, type, name, tag and, for BTF-attached types, the kernel function it
attaches to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vmsentinel.errors import ReadError
from vmsentinel.os.declare import column
from vmsentinel.os.linux.reader import KernelReader

MAX_PROGRAMS = 1 << 16
MAX_PROGRAMS_PER_EVENT = 64
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
        kprobed = self._kprobe_attachments(sweep.problems) if entries else {}
        for _index, prog in entries:
            try:
                sweep.programs.append(self._program(prog, kprobed.get(prog)))
            except ReadError as exc:
                sweep.problems.append(f"bpf program {prog:#x}: {exc}")
        sweep.programs.sort(key=lambda p: p.id)
        return sweep

    def _kprobe_attachments(self, problems: list[str]) -> dict[int, str]:
        """bpf_prog -> kernel function, for programs attached through perf kprobe events.

        Such a kprobe's handler is the tracing core's ``kprobe_dispatcher``; the kprobe sits in a
        ``trace_kprobe`` whose event lists the attached programs (``trace_event_call.prog_array``).
        """
        from vmsentinel.os.linux.views.hooks import registered_kprobes

        r = self.r
        needed = (("trace_kprobe", "rp"), ("trace_kprobe", "symbol"), ("trace_kprobe", "tp"), ("trace_probe", "event"))
        if not r.has_symbol("kprobe_dispatcher") or not all(r.has(s, m) for s, m in needed):
            return {}
        dispatcher = r.symbol("kprobe_dispatcher")
        to_trace_kprobe = r.off("trace_kprobe", "rp") + r.off("kretprobe", "kp")
        item_size = r.size("bpf_prog_array_item")
        attached: dict[int, str] = {}
        for kp in registered_kprobes(r, problems):
            try:
                if r.u64(kp + r.off("kprobe", "pre_handler")) != dispatcher:
                    continue
                tk = kp - to_trace_kprobe
                name_at = r.pointer(tk + r.off("trace_kprobe", "symbol"))
                function = r.cstring(name_at, 128) if name_at else f"{r.u64(kp + r.off('kprobe', 'addr')):#x}"
                event = r.pointer(tk + r.off("trace_kprobe", "tp") + r.off("trace_probe", "event"))
                if event is None:
                    continue
                array = r.pointer(event + r.off("trace_probe_event", "call") + r.off("trace_event_call", "prog_array"))
                items = (array or 0) + r.off("bpf_prog_array", "items")
                for i in range(MAX_PROGRAMS_PER_EVENT if array else 0):
                    prog = r.u64(items + i * item_size + r.off("bpf_prog_array_item", "prog"))
                    if not prog:
                        break
                    attached[prog] = f"kprobe:{function}"
            except ReadError as exc:
                problems.append(f"kprobe event {kp:#x}: {exc}")
        return attached

    def _program(self, prog: int, attached: str | None = None) -> BpfProgram:
        r = self.r
        kind = r.u32(prog + r.off("bpf_prog", "type"))
        aux = r.pointer(prog + r.off("bpf_prog", "aux"))
        if aux is None:
            raise ReadError("no bpf_prog_aux")
        name = r.read(aux + r.off("bpf_prog_aux", "name"), 16).split(b"\0", 1)[0].decode(errors="replace")
        attach = attached
        if attach is None and r.has("bpf_prog_aux", "attach_func_name"):
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
