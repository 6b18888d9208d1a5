"""The eBPF program and kprobe walkers on a synthetic kernel: programs from prog_idr with the kernel
function a perf kprobe attaches them to, aggregated kprobes expanded, and hostile structures (pointers
out of RAM, lists that loop, endless program arrays) giving problems, never crashes or hangs."""

from __future__ import annotations

from tests.synthetic import DIRECT_MAP, synthetic_kernel_reader
from tests.synthetic_kernel import bpf_btf

from vmsentinel.os.linux.views.bpf import MAX_PROGRAMS_PER_EVENT, BpfReader
from vmsentinel.os.linux.views.hooks import registered_kprobes

DIRECT = DIRECT_MAP
KPROBE_TABLE, PROG_IDR = DIRECT + 0x1000, DIRECT + 0x2000
DISPATCHER, AGGREGATE = 0xFFFFFFFF81100000, 0xFFFFFFFF81200000
TK_TO_KPROBE = 64  # trace_kprobe.rp + kretprobe.kp


class Kernel:
    def __init__(self) -> None:
        symbols = {
            "kprobe_table": KPROBE_TABLE,
            "prog_idr": PROG_IDR,
            "kprobe_dispatcher": DISPATCHER,
            "aggr_pre_handler": AGGREGATE,
        }
        self.mem, self.reader = synthetic_kernel_reader(bpf_btf(), symbols=symbols)
        self.next_free = 0x10000

    def alloc(self, size: int = 0x100) -> int:
        addr = DIRECT + self.next_free
        self.next_free += (size + 0xFF) & ~0xFF
        return addr

    def put(self, vaddr: int, value: int, size: int = 8) -> None:
        self.mem.write(vaddr - DIRECT, value.to_bytes(size, "little"))

    def string(self, text: bytes) -> int:
        at = self.alloc(len(text) + 1)
        self.mem.write(at - DIRECT, text + b"\0")
        return at

    def program(self, ident: int, kind: int, name: bytes, aux: int | None = None) -> int:
        prog = self.alloc()
        if aux is None:
            aux = self.alloc()
            self.put(aux, ident, 4)
            self.mem.write(aux + 8 - DIRECT, name)
            self.put(aux + 32, 123456789)
        self.put(prog + 4, kind, 4)
        self.put(prog + 8, 2, 4)
        self.mem.write(prog + 16 - DIRECT, bytes(range(1, 9)))
        self.put(prog + 32, aux)
        return prog

    def kprobe(self, bucket: int, handler: int, addr: int = 0xFFFFFFFF81300000) -> int:
        """A kprobe inside a trace_kprobe, hashed into ``bucket`` (returns the trace_kprobe)."""
        tk = self.alloc(0x200)
        kp = tk + TK_TO_KPROBE
        self.put(kp + 32, addr)
        self.put(kp + 40, handler)
        self.put(kp, self.reader.u64(KPROBE_TABLE + bucket * 8))  # push on the bucket's hlist
        self.put(KPROBE_TABLE + bucket * 8, kp)
        return tk

    def attach(self, tk: int, function: bytes, progs: list[int]) -> None:
        event, array = self.alloc(), self.alloc(16 + 16 * (len(progs) + 1))
        self.put(tk + 160, self.string(function))
        self.put(tk + 192 + 8, event)
        self.put(event + 16 + 32, array)
        for i, prog in enumerate(progs):
            self.put(array + 16 + i * 16, prog)

    def idr(self, progs: list[int]) -> None:
        node = self.alloc(576)
        for i, prog in enumerate(progs):
            self.put(node + 40 + (i + 1) * 8, prog)
        self.put(PROG_IDR + 8, node | 2)


def test_programs_are_listed_with_the_function_their_kprobe_hooks() -> None:
    k = Kernel()
    hook, filt = k.program(7, 2, b"vms_hook"), k.program(8, 1, b"sock_filter")
    k.idr([hook, filt])
    k.attach(k.kprobe(5, DISPATCHER), b"__x64_sys_getdents64", [hook])
    sweep = BpfReader(k.reader).sweep()
    assert not sweep.problems
    assert [(p.id, p.type, p.name, p.attach_to, p.hooking, p.tag) for p in sweep.programs] == [
        (7, "kprobe", "vms_hook", "kprobe:__x64_sys_getdents64", True, "0102030405060708"),
        (8, "socket_filter", "sock_filter", None, False, "0102030405060708"),
    ]


def test_aggregated_kprobes_are_expanded_and_a_looping_child_list_is_bounded() -> None:
    k = Kernel()
    agg = k.alloc()
    k.put(agg + 40, AGGREGATE)
    k.put(KPROBE_TABLE + 3 * 8, agg)
    children = [k.alloc() for _ in range(2)]
    nodes = [agg + 16] + [c + 16 for c in children]
    for a, b in zip(nodes, nodes[1:] + nodes[:1], strict=True):
        k.put(a, b)
    problems: list[str] = []
    assert registered_kprobes(k.reader, problems) == children and not problems
    k.put(children[1] + 16, children[0] + 16)  # the last child points back at the first: a loop
    problems = []
    assert registered_kprobes(k.reader, problems) == children and any("loops back" in p for p in problems)


def test_hostile_programs_and_events_give_problems_not_crashes() -> None:
    k = Kernel()
    lost = k.program(9, 2, b"lost", aux=DIRECT + 0x5000000)  # aux outside RAM
    good = k.program(10, 2, b"ok")
    k.idr([lost, good])
    tk = k.kprobe(1, DISPATCHER)
    k.attach(tk, b"x" * 300, [good] * (MAX_PROGRAMS_PER_EVENT + 50))  # an endless program array, a long name
    k.put(KPROBE_TABLE + 2 * 8, DIRECT + 0x6000000)  # a bucket pointing outside RAM
    sweep = BpfReader(k.reader).sweep()
    assert [p.id for p in sweep.programs] == [10]
    assert sweep.programs[0].attach_to == "kprobe:" + "x" * 128  # the name is capped
    assert any(f"bpf program {lost:#x}" in p for p in sweep.problems)
    k.put(PROG_IDR + 8, DIRECT + 0x7000000 | 2)  # the IDR's root node outside RAM
    assert BpfReader(k.reader).sweep().programs == []
