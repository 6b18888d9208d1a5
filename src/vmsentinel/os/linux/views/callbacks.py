"""Functions the kernel calls back that a rootkit can add or swap without a byte of
changed kernel text: netfilter hooks (magic-packet backdoors), tracepoint probes,
keyboard notifiers (keyloggers), tty line-discipline operations, the operations of
``/proc`` and ``/proc/net`` entries (hiding sockets and processes), and the thread
function of every kernel thread.

Each callback is listed with the table it was found in and the owner of its
function (core kernel text, a module's text, or memory no module owns), and
``table_in_kernel`` says whether the table itself lies in the kernel's own image:
a kernel table whose function leaves kernel text was changed at run time (the
kernel never does that). Deciding what is a hook is the detectors' job.

Everything is bounded (namespaces, entries per hook, probes per tracepoint,
notifiers, ``/proc`` entries) and a structure that cannot be read is a problem
of the sweep, never an exception.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from vmsentinel.errors import VmSentinelError
from vmsentinel.os.declare import column
from vmsentinel.os.linux.reader import KernelReader
from vmsentinel.os.linux.symbols import SymbolResolver, TextRange
from vmsentinel.os.linux.views.hooks import table_length

MAX_NAMESPACES = 256
MAX_HOOK_ENTRIES = 256
MAX_TRACEPOINTS = 8192
MAX_PROBES = 64
MAX_NOTIFIERS = 256
MAX_PROC_ENTRIES = 8192
MAX_PROC_DEPTH = 8
NR_LDISCS = 64
S_IFMT, S_IFDIR, S_IFREG = 0o170000, 0o040000, 0o100000
#: x86-64 keeps tracepoint pointers as 32-bit offsets from each entry (CONFIG_HAVE_ARCH_PREL32_RELOCATIONS)
PREL32 = 4

HOOK_NAMES = {
    "hooks_ipv4": ("ipv4", ("PRE_ROUTING", "LOCAL_IN", "FORWARD", "LOCAL_OUT", "POST_ROUTING")),
    "hooks_ipv6": ("ipv6", ("PRE_ROUTING", "LOCAL_IN", "FORWARD", "LOCAL_OUT", "POST_ROUTING")),
    "hooks_arp": ("arp", ("IN", "OUT", "FORWARD")),
    "hooks_bridge": ("bridge", ("PRE_ROUTING", "LOCAL_IN", "FORWARD", "LOCAL_OUT", "POST_ROUTING")),
}
SEQ_OPS = ("start", "next", "stop", "show")
PROC_OPS = (
    "proc_open",
    "proc_read",
    "proc_read_iter",
    "proc_write",
    "proc_lseek",
    "proc_release",
    "proc_poll",
    "proc_ioctl",
    "proc_compat_ioctl",
    "proc_mmap",
    "proc_get_unmapped_area",
)
LDISC_OPS = (
    "open",
    "close",
    "flush_buffer",
    "read",
    "write",
    "ioctl",
    "compat_ioctl",
    "set_termios",
    "poll",
    "hangup",
    "receive_buf",
    "write_wakeup",
    "dcd_change",
    "lookahead_buf",
    "receive_buf2",
)


@dataclass(frozen=True, slots=True)
class KernelCallback:
    """One function the kernel calls back, where it was registered."""

    kind: str = column("KIND")  # netfilter, tracepoint, keyboard, tty_ldisc, proc, kthread
    where: str = column("WHERE")  # "ipv4 PRE_ROUTING netns 4026531840", "sched_process_exec", "/proc/net/tcp show"
    handler: int = column("HANDLER", hex=True)
    symbol: str | None = column("SYMBOL")
    owner: str = column("OWNER")
    #: the table (ops structure, hook array) the function pointer was read from, and whether it lies in the
    #: kernel's own image (such a table pointing out of kernel text was changed at run time)
    table: int = column("TABLE", hex=True, table=False, default=0)
    table_in_kernel: bool = column("KERNEL TABLE", table=False, default=False)


@dataclass
class CallbackSweep:
    callbacks: list[KernelCallback] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def network_namespaces(r: KernelReader, problems: list[str]) -> list[tuple[int, int]]:
    """(struct net address, namespace inode number) of every network namespace."""
    if not r.has_symbol("net_namespace_list"):
        return []
    walk = r.list_walk(r.symbol("net_namespace_list"), "net", "list", limit=MAX_NAMESPACES)
    problems.extend(walk.problems)
    out = []
    inum_off = r.off("net", "ns.inum") if r.has("net", "ns.inum") else None
    for net in walk.items:
        try:
            out.append((net, r.u32(net + inum_off) if inum_off is not None else 0))
        except VmSentinelError as exc:
            problems.append(f"netns {net:#x}: {exc}")
    return out


class CallbackReader:
    """Reads every kind of callback; one per guest (it remembers which kinds this kernel has)."""

    def __init__(self, reader: KernelReader, resolver: SymbolResolver) -> None:
        self.r = reader
        self.resolver = resolver
        self.image = (
            (reader.symbol("_text"), reader.symbol("_end"))
            if reader.has_symbol("_text") and reader.has_symbol("_end")
            else (resolver.text_start, resolver.text_end)
        )
        self._namespaces: list[tuple[int, int]] = []

    def in_image(self, address: int) -> bool:
        return self.image[0] <= address < self.image[1]

    def _add(self, out: CallbackSweep, kind: str, where: str, handler: int, text: list[TextRange], table: int = 0) -> None:
        out.callbacks.append(
            KernelCallback(
                kind,
                where,
                handler,
                self.resolver.describe(handler),
                self.resolver.owner(handler, text),
                table,
                bool(table) and self.in_image(table),
            )
        )

    def sweep(self, text: list[TextRange], kthreads: list[tuple[int, str, int]]) -> CallbackSweep:
        """Every callback; ``kthreads`` are (pid, name, task address) of the kernel threads to look into."""
        out = CallbackSweep()
        try:  # the namespaces, walked once for the netfilter hooks and /proc/net of each
            self._namespaces = network_namespaces(self.r, out.problems)
        except VmSentinelError as exc:
            self._namespaces = []
            out.problems.append(f"network namespaces: {exc}")
        for part in (self.netfilter, self.tracepoints, self.keyboard, self.tty_ldiscs, self.proc):
            try:
                part(out, text)
            except VmSentinelError as exc:  # a kind this kernel lays out unexpectedly: the others go on
                out.problems.append(f"{part.__name__}: {exc}")
        try:
            self.kthreads(out, text, kthreads)
        except VmSentinelError as exc:
            out.problems.append(f"kthreads: {exc}")
        return out

    # -- netfilter ----------------------------------------------------------------------------------

    def netfilter(self, out: CallbackSweep, text: list[TextRange]) -> None:
        r = self.r
        if not r.has("net", "nf"):
            return
        nf = r.off("net", "nf")
        hooks_at = r.off("nf_hook_entries", "hooks")
        entry = r.size("nf_hook_entry")
        for net, inum in self._namespaces:
            for member, (family, names) in HOOK_NAMES.items():
                if not r.has("netns_nf", member):
                    continue
                base = net + nf + r.off("netns_nf", member)
                for hooknum, name in enumerate(names):
                    where = f"{family} {name} netns {inum}"
                    try:
                        entries = r.pointer(base + 8 * hooknum)
                        if entries is None:
                            continue
                        count = int.from_bytes(r.read(entries, 2), "little")
                        if count > MAX_HOOK_ENTRIES:
                            out.problems.append(f"netfilter {where}: {count} hooks claimed, read {MAX_HOOK_ENTRIES}")
                            count = MAX_HOOK_ENTRIES
                        raw = r.read(entries + hooks_at, count * entry) if count else b""
                    except VmSentinelError as exc:
                        out.problems.append(f"netfilter {where}: {exc}")
                        continue
                    for i in range(count):
                        (hook,) = struct.unpack_from("<Q", raw, i * entry)
                        if hook:
                            self._add(out, "netfilter", where, hook, text, entries)

    # -- tracepoints --------------------------------------------------------------------------------

    def tracepoints(self, out: CallbackSweep, text: list[TextRange]) -> None:
        r = self.r
        if not r.has("tracepoint", "funcs"):
            return
        funcs_off, name_off = r.off("tracepoint", "funcs"), r.off("tracepoint", "name")
        func_size = r.size("tracepoint_func")
        tracepoints = r.relative_table(
            "__start___tracepoints_ptrs", "__stop___tracepoints_ptrs", PREL32, MAX_TRACEPOINTS, out.problems
        )
        for tp in tracepoints:
            try:
                funcs = r.pointer(tp + funcs_off)
                if funcs is None:
                    continue
                name = r.cstring(r.u64(tp + name_off), 128) or f"{tp:#x}"
                raw = r.read(funcs, MAX_PROBES * func_size)
            except VmSentinelError as exc:
                out.problems.append(f"tracepoint {tp:#x}: {exc}")
                continue
            for i in range(MAX_PROBES):
                (func,) = struct.unpack_from("<Q", raw, i * func_size)
                if func == 0:
                    break
                self._add(out, "tracepoint", name, func, text, funcs)

    # -- keyboard notifiers -------------------------------------------------------------------------

    def keyboard(self, out: CallbackSweep, text: list[TextRange]) -> None:
        r = self.r
        if not r.has_symbol("keyboard_notifier_list"):
            return
        call_off, next_off = r.off("notifier_block", "notifier_call"), r.off("notifier_block", "next")
        node = r.pointer(r.symbol("keyboard_notifier_list") + r.off("atomic_notifier_head", "head"))
        seen: set[int] = set()
        while node is not None:
            if node in seen or len(seen) >= MAX_NOTIFIERS:
                out.problems.append(f"keyboard notifier chain loops or is longer than {MAX_NOTIFIERS} at {node:#x}")
                return
            seen.add(node)
            self._add(out, "keyboard", "keyboard notifier", r.u64(node + call_off), text, node)
            node = r.pointer(node + next_off)

    # -- tty line disciplines ------------------------------------------------------------------------

    def _ops(
        self,
        out: CallbackSweep,
        kind: str,
        where: str,
        table: int,
        struct_name: str,
        members: tuple[str, ...],
        text: list[TextRange],
    ) -> None:
        """The function pointers ``members`` (those this build has) of the ops table at ``table``."""
        r = self.r
        present = [(m, r.off(struct_name, m)) for m in members if r.has(struct_name, m)]
        if not present:
            return
        try:
            raw = r.read(table, max(off for _, off in present) + 8)
        except VmSentinelError as exc:
            out.problems.append(f"{where}: {exc}")
            return
        for member, off in present:
            (fn,) = struct.unpack_from("<Q", raw, off)
            if fn:
                self._add(out, kind, f"{where} {member}", fn, text, table)

    def tty_ldiscs(self, out: CallbackSweep, text: list[TextRange]) -> None:
        r = self.r
        if not r.has_symbol("tty_ldiscs"):
            return
        base = r.symbol("tty_ldiscs")
        count = min(NR_LDISCS, table_length(r, "tty_ldiscs"))
        raw = r.read(base, count * 8)
        for number in range(count):
            (ops,) = struct.unpack_from("<Q", raw, number * 8)
            if not ops:
                continue
            if not r.is_kernel_pointer(ops):
                out.problems.append(f"tty_ldiscs[{number}]: bad pointer {ops:#x}")
                continue
            self._ops(out, "tty_ldisc", f"tty line discipline {number}", ops, "tty_ldisc_ops", LDISC_OPS, text)

    # -- /proc --------------------------------------------------------------------------------------

    def _rb_nodes(self, root: int, problems: list[str], budget: list[int]) -> list[int]:
        """The nodes of an rb-tree (in order), bounded by ``budget[0]`` nodes for the whole walk."""
        r = self.r
        left, right = r.off("rb_node", "rb_left"), r.off("rb_node", "rb_right")
        out: list[int] = []
        stack: list[int] = []
        node = r.pointer(root)
        seen: set[int] = set()
        while stack or node is not None:
            while node is not None:
                if node in seen or budget[0] <= 0:
                    problems.append(f"/proc tree loops or is larger than {MAX_PROC_ENTRIES} entries at {node:#x}")
                    return out
                seen.add(node)
                budget[0] -= 1
                stack.append(node)
                node = r.pointer(node + left)
            node = stack.pop()
            out.append(node)
            node = r.pointer(node + right)
        return out

    def proc(self, out: CallbackSweep, text: list[TextRange]) -> None:
        r = self.r
        if not (r.has_symbol("proc_root") and r.has("proc_dir_entry", "subdir")):
            return
        roots = [("/proc", r.symbol("proc_root"))]
        if r.has("net", "proc_net"):
            for net, inum in self._namespaces:
                pde = r.pointer(net + r.off("net", "proc_net"))
                if pde is not None:
                    roots.append((f"/proc/net (netns {inum})", pde))
        budget = [MAX_PROC_ENTRIES]
        for path, root in roots:
            self._proc_tree(out, text, path, root, 0, budget)

    def _proc_tree(self, out: CallbackSweep, text: list[TextRange], path: str, pde: int, depth: int, budget: list[int]) -> None:
        r = self.r
        if depth > MAX_PROC_DEPTH:
            out.problems.append(f"{path}: deeper than {MAX_PROC_DEPTH}")
            return
        subdir, node_off = r.off("proc_dir_entry", "subdir"), r.off("proc_dir_entry", "subdir_node")
        name_off = r.off("proc_dir_entry", "name")
        ops_off, mode_off = r.off("proc_dir_entry", "proc_ops"), r.off("proc_dir_entry", "mode")
        seq_off = r.off("proc_dir_entry", "seq_ops") if r.has("proc_dir_entry", "seq_ops") else None
        try:
            children = self._rb_nodes(pde + subdir, out.problems, budget)
        except VmSentinelError as exc:
            out.problems.append(f"{path}: {exc}")
            return
        for node in children:
            child = node - node_off
            try:
                name = r.cstring(r.u64(child + name_off), 64)
                child_path = f"{path}/{name}"
                mode = int.from_bytes(r.read(child + mode_off, 2), "little")
                if mode & S_IFMT == S_IFDIR:
                    self._proc_tree(out, text, child_path, child, depth + 1, budget)
                    continue
                if mode & S_IFMT != S_IFREG:
                    continue  # a symbolic link: its union holds its target, not operations
                ops = r.pointer(child + ops_off)
                if ops is not None:
                    self._ops(out, "proc", child_path, ops, "proc_ops", PROC_OPS, text)
                seq = r.pointer(child + seq_off) if seq_off is not None else None
                if seq is None:
                    continue
                if self.resolver.in_core_text(seq) or self.resolver.owner(seq, text).startswith("module:"):
                    self._add(out, "proc", f"{child_path} single_show", seq, text)  # the union holds a function
                else:  # or a table of them
                    self._ops(out, "proc", child_path, seq, "seq_operations", SEQ_OPS, text)
            except VmSentinelError as exc:
                out.problems.append(f"{path} entry {child:#x}: {exc}")

    # -- kernel threads -----------------------------------------------------------------------------

    def kthreads(self, out: CallbackSweep, text: list[TextRange], kthreads: list[tuple[int, str, int]]) -> None:
        """The function each kernel thread runs (``struct kthread.threadfn``, found through
        ``task_struct.worker_private`` on 5.17+, ``set_child_tid`` before)."""
        r = self.r
        if not r.has("kthread", "threadfn"):
            return
        link = "worker_private" if r.has("task_struct", "worker_private") else "set_child_tid"
        link_off, fn_off = r.off("task_struct", link), r.off("kthread", "threadfn")
        for pid, name, task in kthreads:
            try:
                kthread = r.pointer(task + link_off)
                if kthread is None:
                    continue  # kthreadd and the idle tasks are kernel threads without one
                fn = r.u64(kthread + fn_off)
            except VmSentinelError as exc:
                out.problems.append(f"kernel thread {pid} ({name}): {exc}")
                continue
            if fn:
                self._add(out, "kthread", f"{name} (pid {pid})", fn, text)
