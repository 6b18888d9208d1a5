"""The callback walkers on a synthetic kernel: netfilter hooks per network namespace, tracepoint probes
(32-bit relative pointers), keyboard notifiers, tty line disciplines, the /proc tree (directories,
regular files with seq_operations or single_show, symbolic links skipped) and kernel threads' functions,
each with its owner and whether its table lies in the kernel's image; ftrace's filter hash names what a
callback covers. Hostile structures (looping chains and trees, pointers out of RAM, huge counts) give
problems and bounded results, never crashes or hangs."""

from __future__ import annotations

from typing import Any

from tests.synthetic import DIRECT_MAP, synthetic_kernel_reader
from tests.synthetic_kernel import callbacks_btf

from vmsentinel.os.linux.symbols import TextRange
from vmsentinel.os.linux.views.callbacks import MAX_HOOK_ENTRIES, MAX_NOTIFIERS, MAX_PROBES, CallbackReader
from vmsentinel.os.linux.views.hooks import ftrace_filter

D = DIRECT_MAP
TEXT, TEXT_END = D + 0x100000, D + 0x200000  # core kernel text (the stub resolver's)
IMAGE_END = D + 0x400000  # the kernel image: text, then its data
MODULE = D + 0x600000  # a module's text
NETNS_LIST, TP_START, KBD, LDISCS, PROC_ROOT = D + 0x300000, D + 0x301000, D + 0x302000, D + 0x303000, D + 0x304000
N_TP = 4


class Resolver:
    text_start, text_end = TEXT, TEXT_END

    def in_core_text(self, addr: int) -> bool:
        return TEXT <= addr < TEXT_END

    def describe(self, addr: int) -> str | None:
        return f"fn_{addr - TEXT:x}" if self.in_core_text(addr) else None

    def owner(self, addr: int, module_text: Any = ()) -> str:
        if self.in_core_text(addr):
            return "kernel"
        for rng in module_text:
            if rng.start <= addr < rng.end:
                return f"module:{rng.owner}"
        return "unknown"


class Kernel:
    def __init__(self) -> None:
        symbols = {
            "_text": TEXT,
            "_end": IMAGE_END,
            "net_namespace_list": NETNS_LIST,
            "__start___tracepoints_ptrs": TP_START,
            "__stop___tracepoints_ptrs": TP_START + 4 * N_TP,
            "keyboard_notifier_list": KBD,
            "tty_ldiscs": LDISCS,
            "after_ldiscs": LDISCS + 8 * 30,
            "proc_root": PROC_ROOT,
        }
        self.mem, self.reader = synthetic_kernel_reader(callbacks_btf(), symbols=symbols)
        self.next_free = 0x800000
        self.put(NETNS_LIST, NETNS_LIST)  # an empty list of namespaces
        self.put(NETNS_LIST + 8, NETNS_LIST)

    def alloc(self, size: int = 0x100) -> int:
        addr = D + self.next_free
        self.next_free += (size + 0xFF) & ~0xFF
        return addr

    def put(self, vaddr: int, value: int, size: int = 8) -> None:
        self.mem.write(vaddr - D, value.to_bytes(size, "little", signed=value < 0))

    def string(self, text: bytes, at: int | None = None) -> int:
        at = at or self.alloc(len(text) + 1)
        self.mem.write(at - D, text + b"\0")
        return at

    def netns(self, inum: int) -> int:
        """A network namespace appended to net_namespace_list."""
        net = self.alloc(0x200)
        last = self.reader.u64(NETNS_LIST + 8)
        self.put(net, NETNS_LIST)
        self.put(net + 8, last)
        self.put(last, net)
        self.put(NETNS_LIST + 8, net)
        self.put(net + 32 + 16, inum, 4)
        return net

    def hooks(self, net: int, hooknum: int, functions: list[int], count: int | None = None) -> int:
        entries = self.alloc(8 + 16 * len(functions))
        self.put(entries, len(functions) if count is None else count, 2)
        for i, fn in enumerate(functions):
            self.put(entries + 8 + 16 * i, fn)
        self.put(net + 64 + 8 * hooknum, entries)  # hooks_ipv4[hooknum]
        return entries

    def tracepoints(self, probes: dict[int, list[int]]) -> list[int]:
        """N_TP tracepoints; ``probes`` gives the functions on some of them (by index)."""
        tps = []
        for i in range(N_TP):
            tp = self.alloc(80)
            self.put(tp, self.string(f"tp_{i}".encode()))
            if i in probes:
                funcs = self.alloc(24 * (len(probes[i]) + 1))
                for j, fn in enumerate(probes[i]):
                    self.put(funcs + 24 * j, fn)
                self.put(tp + 64, funcs)
            slot = TP_START + 4 * i
            self.put(slot, tp - slot, 4)
            tps.append(tp)
        return tps

    def notifiers(self, functions: list[int]) -> list[int]:
        blocks = [self.alloc(24) for _ in functions]
        for block, fn, nxt in zip(blocks, functions, [*blocks[1:], 0], strict=True):
            self.put(block, fn)
            self.put(block + 8, nxt)
        self.put(KBD + 8, blocks[0] if blocks else 0)
        return blocks

    def pde(self, name: bytes, mode: int, proc_ops: int = 0, seq_ops: int = 0) -> int:
        entry = self.alloc(64)
        self.put(entry + 32, self.string(name))
        self.put(entry + 40, mode, 2)
        self.put(entry + 48, proc_ops)
        self.put(entry + 56, seq_ops)
        return entry

    def children(self, parent: int, entries: list[int]) -> None:
        """Hang ``entries`` under ``parent`` as a right-leaning rb-tree (in order)."""
        nodes = [e + 8 for e in entries]
        self.put(parent, nodes[0] if nodes else 0)
        for node, nxt in zip(nodes, [*nodes[1:], 0], strict=True):
            self.put(node + 8, nxt)  # rb_right


def test_netfilter_hooks_per_namespace_with_their_owners() -> None:
    k = Kernel()
    first, second = k.netns(0xF0000001), k.netns(0xF0000002)
    k.hooks(first, 0, [TEXT + 0x10, MODULE + 0x20])
    k.hooks(second, 3, [D + 0x900000])  # a hook in memory no module owns
    sweep = CallbackReader(k.reader, Resolver()).sweep([TextRange("evil", MODULE, MODULE + 0x1000)], [])  # type: ignore[arg-type]
    assert not sweep.problems
    assert [(c.where, c.owner) for c in sweep.callbacks if c.kind == "netfilter"] == [
        ("ipv4 PRE_ROUTING netns 4026531841", "kernel"),
        ("ipv4 PRE_ROUTING netns 4026531841", "module:evil"),
        ("ipv4 LOCAL_OUT netns 4026531842", "unknown"),
    ]


def test_hostile_netfilter_arrays_are_bounded() -> None:
    k = Kernel()
    net = k.netns(1)
    k.hooks(net, 0, [TEXT] * 4, count=0xFFFF)  # a count no kernel has
    k.put(net + 64 + 8, D + 0x5000000)  # LOCAL_IN's entries outside RAM
    sweep = CallbackReader(k.reader, Resolver()).sweep([], [])  # type: ignore[arg-type]
    assert len([c for c in sweep.callbacks if c.kind == "netfilter"]) == 4  # the rest of the claimed are zero
    assert any(f"read {MAX_HOOK_ENTRIES}" in p for p in sweep.problems)
    assert any("LOCAL_IN" in p for p in sweep.problems)
    k.put(k.reader.u64(NETNS_LIST), k.reader.u64(NETNS_LIST))  # the namespace list loops on itself
    looped = CallbackReader(k.reader, Resolver()).sweep([], [])  # type: ignore[arg-type]
    assert any("loops" in p for p in looped.problems)


def test_tracepoint_probes_through_relative_pointers_and_bounded() -> None:
    k = Kernel()
    k.tracepoints({1: [TEXT + 0x40, MODULE + 8], 3: [MODULE + 0x10] * (MAX_PROBES + 10)})
    sweep = CallbackReader(k.reader, Resolver()).sweep([TextRange("evil", MODULE, MODULE + 0x1000)], [])  # type: ignore[arg-type]
    probes = [(c.where, c.owner) for c in sweep.callbacks if c.kind == "tracepoint"]
    assert probes[:2] == [("tp_1", "kernel"), ("tp_1", "module:evil")]
    assert len(probes) == 2 + MAX_PROBES  # an unterminated probe array stops at the cap


def test_keyboard_notifiers_and_a_looping_chain() -> None:
    k = Kernel()
    blocks = k.notifiers([TEXT + 8, MODULE + 0x30])
    sweep = CallbackReader(k.reader, Resolver()).sweep([TextRange("kl", MODULE, MODULE + 0x100)], [])  # type: ignore[arg-type]
    assert [c.owner for c in sweep.callbacks if c.kind == "keyboard"] == ["kernel", "module:kl"]
    k.put(blocks[1] + 8, blocks[0])  # the chain loops
    looped = CallbackReader(k.reader, Resolver()).sweep([], [])  # type: ignore[arg-type]
    assert len([c for c in looped.callbacks if c.kind == "keyboard"]) == 2
    assert any("loops" in p for p in looped.problems)
    chain = [k.alloc(24) for _ in range(MAX_NOTIFIERS + 5)]
    for block, nxt in zip(chain, [*chain[1:], 0], strict=True):
        k.put(block, TEXT)
        k.put(block + 8, nxt)
    k.put(KBD + 8, chain[0])
    endless = CallbackReader(k.reader, Resolver()).sweep([], [])  # type: ignore[arg-type]
    assert len([c for c in endless.callbacks if c.kind == "keyboard"]) == MAX_NOTIFIERS


def test_a_kernel_line_discipline_pointing_out_of_kernel_text_is_marked() -> None:
    k = Kernel()
    n_tty = TEXT_END + 0x1000  # the ops table in the kernel's data
    k.put(n_tty + 16, TEXT + 0x100)  # open
    k.put(n_tty + 32, MODULE + 0x50)  # receive_buf swapped
    k.put(LDISCS, n_tty)
    k.put(LDISCS + 8, D + 0x5000000)  # a line discipline outside RAM
    k.put(LDISCS + 16, 0x1234)  # not a kernel pointer
    sweep = CallbackReader(k.reader, Resolver()).sweep([TextRange("kl", MODULE, MODULE + 0x100)], [])  # type: ignore[arg-type]
    ldisc = [(c.where, c.owner, c.table_in_kernel) for c in sweep.callbacks if c.kind == "tty_ldisc"]
    assert ldisc == [("tty line discipline 0 open", "kernel", True), ("tty line discipline 0 receive_buf", "module:kl", True)]
    assert any("line discipline 1" in p for p in sweep.problems) and any("tty_ldiscs[2]" in p for p in sweep.problems)


def test_the_proc_tree_its_operations_and_a_looping_tree() -> None:
    k = Kernel()
    kernel_seq = TEXT_END + 0x2000  # tcp4_seq_ops, in the image
    for i, fn in enumerate([TEXT + 1, TEXT + 2, TEXT + 3, MODULE + 4]):
        k.put(kernel_seq + 8 * i, fn)
    proc_ops = TEXT_END + 0x3000
    k.put(proc_ops + 8, TEXT + 0x20)
    net = k.pde(b"net", 0o040555)
    tcp = k.pde(b"tcp", 0o100444, proc_ops, kernel_seq)
    uptime = k.pde(b"uptime", 0o100444, proc_ops, TEXT + 0x30)  # single_show
    link = k.pde(b"self", 0o120777, 0x4141414141414141, 0x4242424242424242)  # a link: its union holds its target
    k.children(PROC_ROOT, [net, uptime, link])
    k.children(net, [tcp])
    sweep = CallbackReader(k.reader, Resolver()).sweep([TextRange("rk", MODULE, MODULE + 0x100)], [])  # type: ignore[arg-type]
    assert not sweep.problems
    proc = [(c.where, c.owner, c.table_in_kernel) for c in sweep.callbacks if c.kind == "proc"]
    assert proc == [
        ("/proc/net/tcp proc_open", "kernel", True),
        ("/proc/net/tcp start", "kernel", True),
        ("/proc/net/tcp next", "kernel", True),
        ("/proc/net/tcp stop", "kernel", True),
        ("/proc/net/tcp show", "module:rk", True),
        ("/proc/uptime proc_open", "kernel", True),
        ("/proc/uptime single_show", "kernel", False),
    ]
    k.put(tcp + 8 + 8, net + 8)  # tcp's right child is its own parent directory: the tree loops
    looped = CallbackReader(k.reader, Resolver()).sweep([], [])  # type: ignore[arg-type]
    assert any("/proc tree loops" in p or "deeper than" in p for p in looped.problems)


def test_kernel_threads_with_the_function_they_run() -> None:
    k = Kernel()
    threads = []
    for pid, fn in ((10, TEXT + 0x99), (11, MODULE + 0x10), (12, 0)):
        task, kthread = k.alloc(64), k.alloc(32)
        k.put(task + 32, kthread)
        k.put(kthread + 16, fn)
        threads.append((pid, f"k{pid}", task))
    idle = k.alloc(64)  # no struct kthread: kthreadd, the idle tasks
    lost = k.alloc(64)
    k.put(lost + 32, D + 0x5000000)
    sweep = CallbackReader(k.reader, Resolver()).sweep(  # type: ignore[arg-type]
        [TextRange("rk", MODULE, MODULE + 0x100)], [*threads, (2, "kthreadd", idle), (13, "lost", lost)]
    )
    assert [(c.where, c.owner) for c in sweep.callbacks if c.kind == "kthread"] == [
        ("k10 (pid 10)", "kernel"),
        ("k11 (pid 11)", "module:rk"),
    ]
    assert any("kernel thread 13 (lost)" in p for p in sweep.problems)


def test_ftrace_filter_names_the_functions_a_callback_covers() -> None:
    k = Kernel()
    ops, hashes, table, buckets = k.alloc(32), k.alloc(16), k.alloc(24), k.alloc(8 * 4)
    k.put(ops + 16, hashes)
    k.put(hashes + 8, table)
    entries = [k.alloc(32) for _ in range(3)]
    for entry, ip in zip(entries, (TEXT + 0x10, TEXT + 0x20, TEXT + 0x30), strict=True):
        k.put(entry + 16, ip)
    k.put(buckets + 8, entries[0])  # bucket 1: two entries; bucket 3: one
    k.put(entries[0], entries[1])
    k.put(buckets + 24, entries[2])
    k.put(table, 2)  # 4 buckets
    k.put(table + 8, buckets)
    k.put(table + 16, 3)
    problems: list[str] = []
    assert ftrace_filter(k.reader, Resolver(), ops, problems) == ("fn_10", "fn_20", "fn_30")  # type: ignore[arg-type]
    k.put(table + 16, 0)
    assert ftrace_filter(k.reader, Resolver(), ops, problems) == ("*",)  # type: ignore[arg-type]
    k.put(table + 16, 3)
    k.put(table, 40)  # 2^40 buckets claimed
    assert ftrace_filter(k.reader, Resolver(), ops, problems) == ("3 functions",)  # type: ignore[arg-type]
    k.put(table, 2)
    k.put(entries[1], entries[0])  # a bucket's list loops
    problems = []
    covered = ftrace_filter(k.reader, Resolver(), ops, problems)  # type: ignore[arg-type]
    assert covered[:2] == ("fn_10", "fn_20") and problems
