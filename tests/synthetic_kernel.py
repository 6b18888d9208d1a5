"""Builders of synthetic kernel artefacts for unit tests: BTF blobs and kallsyms tables."""

from __future__ import annotations

import struct

from vmsentinel.os.linux.profile.btf import Kind


class BtfBuilder:
    """Writes BTF the way pahole does: header, type records, string section."""

    def __init__(self) -> None:
        self.strings = bytearray(b"\0")
        self.records: list[bytes] = []

    def s(self, name: str) -> int:
        if not name:
            return 0
        key = name.encode() + b"\0"
        pos = self.strings.find(b"\0" + key)
        if pos >= 0:
            return pos + 1
        off = len(self.strings)
        self.strings += key
        return off

    def _add(self, name: str, kind: Kind, vlen: int, size_or_type: int, extra: bytes = b"", kind_flag: bool = False) -> int:
        info = (int(kind) << 24) | vlen | (1 << 31 if kind_flag else 0)
        self.records.append(struct.pack("<III", self.s(name), info, size_or_type) + extra)
        return len(self.records)

    def int_(self, name: str, size: int, signed: bool = False) -> int:
        return self._add(name, Kind.INT, 0, size, struct.pack("<I", (1 << 24 if signed else 0) | size * 8))

    def ptr(self, target: int) -> int:
        return self._add("", Kind.PTR, 0, target)

    def typedef(self, name: str, target: int) -> int:
        return self._add(name, Kind.TYPEDEF, 0, target)

    def const(self, target: int) -> int:
        return self._add("", Kind.CONST, 0, target)

    def array(self, elem: int, count: int, index_type: int) -> int:
        return self._add("", Kind.ARRAY, 0, 0, struct.pack("<III", elem, index_type, count))

    def struct(self, name: str, size: int, members: list[tuple[str, int, int, int]], union: bool = False) -> int:
        """members: (name, type id, bit offset, bitfield size)."""
        bitfields = any(m[3] for m in members)
        extra = b"".join(
            struct.pack("<III", self.s(n), t, (bits << 24 | off) if bitfields else off) for n, t, off, bits in members
        )
        return self._add(name, Kind.UNION if union else Kind.STRUCT, len(members), size, extra, kind_flag=bitfields)

    def enum(self, name: str, values: dict[str, int], size: int = 4) -> int:
        extra = b"".join(struct.pack("<Ii", self.s(k), v) for k, v in values.items())
        return self._add(name, Kind.ENUM, len(values), size, extra)

    def func_proto(self, ret: int, params: list[int]) -> int:
        return self._add("", Kind.FUNC_PROTO, len(params), ret, b"".join(struct.pack("<II", 0, p) for p in params))

    def var(self, name: str, type_id: int) -> int:
        return self._add(name, Kind.VAR, 0, type_id, struct.pack("<I", 1))

    def patch(self, type_id: int, size_or_type: int) -> None:
        rec = bytearray(self.records[type_id - 1])
        struct.pack_into("<I", rec, 8, size_or_type)
        self.records[type_id - 1] = bytes(rec)

    def build(self) -> bytes:
        types = b"".join(self.records)
        header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(self.strings))
        return header + types + bytes(self.strings)


def sample_btf() -> bytes:
    """A small kernel-like type graph: task_struct with an anonymous union, cred, bitfields, enums."""
    b = BtfBuilder()
    u32 = b.int_("unsigned int", 4)
    i32 = b.int_("int", 4, signed=True)
    char = b.int_("char", 1, signed=True)
    u64 = b.int_("long long unsigned int", 8)
    uid_t = b.typedef("uid_t", u32)
    kuid = b.struct("", 4, [("val", uid_t, 0, 0)])
    kuid_t = b.typedef("kuid_t", kuid)
    cred = b.struct("cred", 24, [("usage", i32, 0, 0), ("uid", kuid_t, 64, 0), ("euid", kuid_t, 96, 0)])
    cred_ptr = b.ptr(b.const(cred))
    comm = b.array(char, 16, i32)
    list_head = b.struct("list_head", 16, [])
    lh_ptr = b.ptr(list_head)
    b.records[list_head - 1] = b"".join(
        [
            struct.pack("<III", b.s("list_head"), (int(Kind.STRUCT) << 24) | 2, 16),
            struct.pack("<III", b.s("next"), lh_ptr, 0),
            struct.pack("<III", b.s("prev"), lh_ptr, 64),
        ]
    )
    anon = b.struct("", 8, [("mm", u64, 0, 0), ("active_mm", u64, 0, 0)], union=True)
    flags = b.struct("", 4, [("in_execve", u32, 0, 1), ("in_iowait", u32, 1, 1), ("pf_io", u32, 5, 3)])
    b.struct(
        "task_struct",
        96,
        [
            ("pid", i32, 0, 0),
            ("tgid", i32, 32, 0),
            ("tasks", list_head, 64, 0),
            ("", anon, 192, 0),
            ("cred", cred_ptr, 256, 0),
            ("comm", comm, 320, 0),
            ("", flags, 448, 0),
        ],
    )
    b.enum("pid_type", {"PIDTYPE_PID": 0, "PIDTYPE_TGID": 1, "PIDTYPE_MAX": 4})
    b.func_proto(i32, [u32, cred_ptr])
    b.var("runqueues", u64)
    u8 = b.int_("unsigned char", 1)
    slots = b.array(b.ptr(0), 64, u64)
    b.struct("xa_node", 576, [("shift", u8, 0, 0), ("slots", slots, 320, 0)])
    return b.build()


def build_kallsyms(
    symbols: list[tuple[str, str, int]],
    relative_base: int,
    order: str = "names-first",
    seqs: bool = True,
    prefix: bytes = b"\xaa" * 64,
) -> tuple[bytes, int]:
    """kallsyms tables in a buffer, like scripts/kallsyms.c; returns (buffer, offset of relative_base).

    symbols: (type letter, name, address), sorted by address; addresses below
    relative_base are stored as absolute (per-CPU) values.
    """
    used = sorted({c for t, n, _ in symbols for c in (t + n).encode()} | set(b"0123456789"))
    tokens: list[bytes] = [bytes([i]) if i in used else b"" for i in range(256)]
    free = [i for i in range(256) if not tokens[i]]
    multi = [b"_t", b"in", b"it", b"ask", b"_s", b"ys_", b"ca", b"ll"]
    for i, tok in zip(free, multi, strict=False):
        tokens[i] = tok
    for i in free[len(multi) :]:
        tokens[i] = bytes([used[0], used[0]])  # never used to compress, like rarely useful tokens

    def compress(text: bytes) -> bytes:
        out, pos = bytearray(), 0
        while pos < len(text):
            for i, tok in enumerate(tokens):
                if len(tok) > 1 and tok in multi and text.startswith(tok, pos):
                    out.append(i)
                    pos += len(tok)
                    break
            else:
                out.append(text[pos])
                pos += 1
        return bytes(out)

    names = bytearray()
    markers = []
    for i, (t, n, _) in enumerate(symbols):
        if i % 256 == 0:
            markers.append(len(names))
        data = compress((t + n).encode())
        names += (bytes([len(data)]) if len(data) < 0x80 else bytes([(len(data) & 0x7F) | 0x80, len(data) >> 7])) + data
    offsets = [a if a < relative_base else -(a - relative_base) - 1 for _, _, a in symbols]
    n = len(symbols)
    token_table = b"".join(t + b"\0" for t in tokens)
    index, acc = [], 0
    for t in tokens:
        index.append(acc)
        acc += len(t) + 1
    token_index = struct.pack("<256H", *index)
    order_seq = sorted(range(n), key=lambda i: symbols[i][1])
    seqs_blob = b"".join(struct.pack("<I", i)[:3] for i in order_seq)

    buf = bytearray(prefix)

    def align(k: int) -> None:
        buf.extend(b"\0" * (-len(buf) % k))

    if order == "offsets-first":
        align(8)
        buf += struct.pack(f"<{n}i", *offsets)
        align(8)
        rb_at = len(buf)
        buf += struct.pack("<Q", relative_base)
        buf += struct.pack("<I", n)
        align(8)
        buf += names
        align(8)
        buf += struct.pack(f"<{len(markers)}I", *markers)
        if seqs:
            align(8)
            buf += seqs_blob
        align(8)
        buf += token_table
        align(8)
        buf += token_index
    else:
        align(8)
        buf += struct.pack("<I", n)
        align(8)
        buf += names
        align(8)
        buf += struct.pack(f"<{len(markers)}I", *markers)
        align(8)
        buf += token_table
        align(8)
        buf += token_index
        align(8)
        buf += struct.pack(f"<{n}i", *offsets)
        align(8)
        rb_at = len(buf)
        buf += struct.pack("<Q", relative_base)
        if seqs:
            buf += seqs_blob
    buf += b"\xbb" * 64
    return bytes(buf), rb_at


def sample_symbols(count: int = 700, base: int = 0xFFFFFFFFA1000000) -> list[tuple[str, str, int]]:
    syms = [("A", "fixed_percpu_data", 0), ("A", "cpu_number", 0x1000)]
    kinds = "TtDdRrBb"
    for i in range(count):
        syms.append((kinds[i % len(kinds)], f"sys_call_{i}_init_task" if i % 3 == 0 else f"fn{i}", base + i * 16))
    syms.append(("T", "x" * 200, base + count * 16))  # a name long enough for the two-byte length
    return syms


def maple_btf() -> bytes:
    """Types the memory-maps walker needs: maple tree nodes, vm_area_struct, mm_struct."""
    b = BtfBuilder()
    u32 = b.int_("unsigned int", 4)
    ulong = b.int_("long unsigned int", 8)
    vptr = b.ptr(0)
    pivots15, slots16 = b.array(ulong, 15, ulong), b.array(vptr, 16, ulong)
    pivots9, slots10 = b.array(ulong, 9, ulong), b.array(vptr, 10, ulong)
    slots31 = b.array(vptr, 31, ulong)
    r64 = b.struct("maple_range_64", 256, [("parent", vptr, 0, 0), ("pivot", pivots15, 64, 0), ("slot", slots16, 1024, 0)])
    a64 = b.struct("maple_arange_64", 248, [("parent", vptr, 0, 0), ("pivot", pivots9, 64, 0), ("slot", slots10, 640, 0)])
    b.struct("maple_node", 256, [("mr64", r64, 0, 0), ("ma64", a64, 0, 0), ("slot", slots31, 64, 0)], union=True)
    tree = b.struct("maple_tree", 16, [("ma_lock", u32, 0, 0), ("ma_flags", u32, 32, 0), ("ma_root", vptr, 64, 0)])
    mm_ptr = b.ptr(0)
    b.struct(
        "vm_area_struct",
        176,
        [
            ("vm_start", ulong, 0, 0),
            ("vm_end", ulong, 64, 0),
            ("vm_mm", mm_ptr, 128, 0),
            ("vm_flags", ulong, 256, 0),
            ("vm_ops", vptr, 896, 0),
            ("vm_pgoff", ulong, 960, 0),
            ("vm_file", vptr, 1024, 0),
            ("vm_private_data", vptr, 1088, 0),
        ],
    )
    b.struct(
        "mm_struct",
        512,
        [("mm_mt", tree, 512, 0), ("start_brk", ulong, 2816, 0), ("brk", ulong, 2880, 0), ("start_stack", ulong, 2944, 0)],
    )
    return b.build()


def vfs_btf() -> bytes:
    """Types the file-naming walker needs: file, path, dentry, qstr, mounts, inode, super_block."""
    b = BtfBuilder()
    u32 = b.int_("unsigned int", 4)
    u64 = b.int_("long long unsigned int", 8)
    vptr = b.ptr(0)
    path = b.struct("path", 16, [("mnt", vptr, 0, 0), ("dentry", vptr, 64, 0)])
    b.struct("file", 64, [("f_path", path, 128, 0), ("private_data", vptr, 256, 0), ("f_inode", vptr, 320, 0)])
    node = b.struct("hlist_bl_node", 16, [("next", vptr, 0, 0), ("pprev", vptr, 64, 0)])
    qstr = b.struct("qstr", 16, [("hash_len", u64, 0, 0), ("name", vptr, 64, 0)])
    b.struct("dentry", 64, [("d_hash", node, 64, 0), ("d_parent", vptr, 192, 0), ("d_name", qstr, 256, 0)])
    vfsmount = b.struct("vfsmount", 8, [("mnt_root", vptr, 0, 0)])
    b.struct("mount", 48, [("mnt_parent", vptr, 128, 0), ("mnt_mountpoint", vptr, 192, 0), ("mnt", vfsmount, 256, 0)])
    b.struct("inode", 72, [("i_mode", u32, 0, 0), ("i_uid", u32, 32, 0), ("i_sb", vptr, 320, 0), ("i_ino", u64, 512, 0)])
    b.struct("super_block", 48, [("s_dev", u32, 128, 0), ("s_type", vptr, 320, 0)])
    b.struct("file_system_type", 8, [("name", vptr, 0, 0)])
    return b.build()


def bpf_btf() -> bytes:
    """Types the eBPF and kprobe walkers need: prog_idr's XArray, bpf_prog(_aux), kprobes and the
    perf kprobe event chain (trace_kprobe -> trace_probe_event -> trace_event_call -> bpf_prog_array)."""
    b = BtfBuilder()
    u8 = b.int_("unsigned char", 1)
    u32 = b.int_("unsigned int", 4)
    u64 = b.int_("long long unsigned int", 8)
    char = b.int_("char", 1, signed=True)
    vptr = b.ptr(0)
    xarray = b.struct("xarray", 16, [("xa_lock", u32, 0, 0), ("xa_head", vptr, 64, 0)])
    b.struct("idr", 24, [("idr_rt", xarray, 0, 0), ("idr_base", u32, 128, 0)])
    b.struct("xa_node", 576, [("shift", u8, 0, 0), ("slots", b.array(vptr, 64, u64), 320, 0)])
    b.enum("bpf_prog_type", {"BPF_PROG_TYPE_UNSPEC": 0, "BPF_PROG_TYPE_SOCKET_FILTER": 1, "BPF_PROG_TYPE_KPROBE": 2})
    b.struct(
        "bpf_prog",
        64,
        [("type", u32, 32, 0), ("len", u32, 64, 0), ("tag", b.array(u8, 8, u32), 128, 0), ("aux", vptr, 256, 0)],
    )
    b.struct(
        "bpf_prog_aux",
        64,
        [
            ("id", u32, 0, 0),
            ("name", b.array(char, 16, u32), 64, 0),
            ("attach_func_name", vptr, 192, 0),
            ("load_time", u64, 256, 0),
        ],
    )
    node = b.struct("hlist_node", 16, [("next", vptr, 0, 0), ("pprev", vptr, 64, 0)])
    list_head = b.struct("list_head", 16, [("next", vptr, 0, 0), ("prev", vptr, 64, 0)])
    kprobe = b.struct(
        "kprobe",
        64,
        [
            ("hlist", node, 0, 0),
            ("list", list_head, 128, 0),
            ("addr", vptr, 256, 0),
            ("pre_handler", vptr, 320, 0),
            ("post_handler", vptr, 384, 0),
        ],
    )
    kretprobe = b.struct("kretprobe", 80, [("kp", kprobe, 0, 0)])
    probe = b.struct("trace_probe", 32, [("event", vptr, 64, 0)])
    b.struct("trace_kprobe", 256, [("rp", kretprobe, 512, 0), ("symbol", vptr, 1280, 0), ("tp", probe, 1536, 0)])
    call = b.struct("trace_event_call", 64, [("prog_array", vptr, 256, 0)])
    b.struct("trace_probe_event", 128, [("call", call, 128, 0)])
    item = b.struct("bpf_prog_array_item", 16, [("prog", vptr, 0, 0)])
    b.struct("bpf_prog_array", 16, [("items", b.array(item, 0, u32), 128, 0)])
    return b.build()


def callbacks_btf() -> bytes:
    """Types the callback walkers need: network namespaces and their netfilter hook arrays, tracepoints
    and their probes, notifier chains, tty line disciplines, the /proc tree (an rb-tree of
    proc_dir_entry), kernel threads' struct kthread, and ftrace's filter hash."""
    b = BtfBuilder()
    u16 = b.int_("short unsigned int", 2)
    u32 = b.int_("unsigned int", 4)
    u64 = b.int_("long long unsigned int", 8)
    vptr = b.ptr(0)
    list_head = b.struct("list_head", 16, [("next", vptr, 0, 0), ("prev", vptr, 64, 0)])
    ns = b.struct("ns_common", 24, [("inum", u32, 128, 0)])
    nf = b.struct(
        "netns_nf",
        104,
        [("hooks_ipv4", b.array(vptr, 5, u32), 0, 0), ("hooks_ipv6", b.array(vptr, 5, u32), 320, 0),
         ("hooks_arp", b.array(vptr, 3, u32), 640, 0)],
    )  # fmt: skip
    b.struct("net", 200, [("list", list_head, 0, 0), ("ns", ns, 256, 0), ("nf", nf, 512, 0), ("proc_net", vptr, 1536, 0)])
    entry = b.struct("nf_hook_entry", 16, [("hook", vptr, 0, 0), ("priv", vptr, 64, 0)])
    b.struct("nf_hook_entries", 8, [("num_hook_entries", u16, 0, 0), ("hooks", b.array(entry, 0, u32), 64, 0)])
    b.struct("tracepoint", 80, [("name", vptr, 0, 0), ("funcs", vptr, 512, 0)])
    b.struct("tracepoint_func", 24, [("func", vptr, 0, 0), ("data", vptr, 64, 0), ("prio", u32, 128, 0)])
    b.struct("notifier_block", 24, [("notifier_call", vptr, 0, 0), ("next", vptr, 64, 0), ("priority", u32, 128, 0)])
    b.struct("atomic_notifier_head", 16, [("lock", u32, 0, 0), ("head", vptr, 64, 0)])
    b.struct(
        "tty_ldisc_ops",
        40,
        [
            ("name", vptr, 0, 0),
            ("num", u32, 64, 0),
            ("open", vptr, 128, 0),
            ("close", vptr, 192, 0),
            ("receive_buf", vptr, 256, 0),
        ],
    )
    rb_node = b.struct("rb_node", 24, [("__rb_parent_color", u64, 0, 0), ("rb_right", vptr, 64, 0), ("rb_left", vptr, 128, 0)])
    rb_root = b.struct("rb_root", 8, [("rb_node", vptr, 0, 0)])
    b.struct(
        "proc_dir_entry",
        64,
        [("subdir", rb_root, 0, 0), ("subdir_node", rb_node, 64, 0), ("name", vptr, 256, 0), ("mode", u16, 320, 0),
         ("proc_ops", vptr, 384, 0), ("seq_ops", vptr, 448, 0)],
    )  # fmt: skip
    b.struct("proc_ops", 24, [("proc_flags", u32, 0, 0), ("proc_open", vptr, 64, 0), ("proc_read", vptr, 128, 0)])
    b.struct("seq_operations", 32, [("start", vptr, 0, 0), ("stop", vptr, 64, 0), ("next", vptr, 128, 0), ("show", vptr, 192, 0)])
    b.struct("task_struct", 64, [("worker_private", vptr, 256, 0)])
    b.struct("kthread", 32, [("flags", u64, 0, 0), ("threadfn", vptr, 128, 0)])
    hlist_node = b.struct("hlist_node", 16, [("next", vptr, 0, 0), ("pprev", vptr, 64, 0)])
    b.struct("ftrace_ops", 32, [("func", vptr, 0, 0), ("next", vptr, 64, 0), ("func_hash", vptr, 128, 0)])
    b.struct("ftrace_ops_hash", 16, [("notrace_hash", vptr, 0, 0), ("filter_hash", vptr, 64, 0)])
    b.struct("ftrace_hash", 24, [("size_bits", u64, 0, 0), ("buckets", vptr, 64, 0), ("count", u64, 128, 0)])
    b.struct("ftrace_func_entry", 32, [("hlist", hlist_node, 0, 0), ("ip", u64, 128, 0)])
    return b.build()


def sockets_btf() -> bytes:
    """Types the socket view reads, with the namespace, packet-socket list and packet-filter members."""
    b = BtfBuilder()
    u16 = b.int_("short unsigned int", 2)
    u32 = b.int_("unsigned int", 4)
    u8 = b.int_("unsigned char", 1)
    vptr = b.ptr(0)
    b.struct("file", 0x100, [("private_data", vptr, 0xC8 * 8, 0)])
    b.struct("socket", 0x30, [("sk", vptr, 0x18 * 8, 0)])
    node = b.struct("hlist_node", 16, [("next", vptr, 0, 0), ("pprev", vptr, 64, 0)])
    common = b.struct(
        "sock_common",
        0x88,
        [("skc_daddr", u32, 0, 0), ("skc_rcv_saddr", u32, 32, 0), ("skc_dport", u16, 96, 0), ("skc_num", u16, 112, 0),
         ("skc_family", u16, 128, 0), ("skc_state", u8, 144, 0), ("skc_net", vptr, 0x30 * 8, 0),
         ("skc_node", node, 0x38 * 8, 0), ("skc_v6_daddr", b.array(u8, 16, u32), 0x48 * 8, 0),
         ("skc_v6_rcv_saddr", b.array(u8, 16, u32), 0x58 * 8, 0)],
    )  # fmt: skip
    b.struct(
        "sock",
        0x300,
        [("__sk_common", common, 0, 0), ("sk_type", u16, 0x100 * 8, 0), ("sk_protocol", u16, 0x102 * 8, 0),
         ("sk_filter", vptr, 0x108 * 8, 0)],
    )  # fmt: skip
    b.struct("unix_sock", 0x340, [("addr", vptr, 0x300 * 8, 0)])
    b.struct("unix_address", 0x80, [("len", u32, 32, 0), ("name", b.array(u8, 110, u32), 64, 0)])
    b.struct("packet_sock", 0x400, [("num", u16, 0x310 * 8, 0)])
    b.struct("sk_filter", 0x20, [("prog", vptr, 0x10 * 8, 0)])
    b.struct("bpf_prog", 0x40, [("aux", vptr, 0x20 * 8, 0), ("orig_prog", vptr, 0x28 * 8, 0)])
    b.struct("bpf_prog_aux", 0x40, [("id", u32, 0, 0)])
    b.struct("sock_fprog_kern", 0x10, [("len", u16, 0, 0)])
    ns = b.struct("ns_common", 24, [("inum", u32, 128, 0)])
    packet = b.struct("netns_packet", 0x30, [("sklist", vptr, 0x28 * 8, 0)])
    list_head = b.struct("list_head", 16, [("next", vptr, 0, 0), ("prev", vptr, 64, 0)])
    b.struct("net", 0x200, [("list", list_head, 0, 0), ("ns", ns, 0x20 * 8, 0), ("packet", packet, 0x100 * 8, 0)])
    return b.build()
