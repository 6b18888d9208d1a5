"""Fuzz targets over every parser and walker, and the engine that runs them.

Shared by ``benchmarks/fuzz.py`` (the million-case run) and ``tests/unit/test_fuzz_short.py`` (a few
thousand cases in the suite), so both exercise the same code the same way. Each target starts from
*valid* seed inputs, so that mutations reach deep code instead of stopping at a magic number::

    stats = fuzz(TARGETS["btf"], cases=1000, seed=1, timeout=2.0)
    stats.crashes, stats.hangs, stats.failures      # any exception that is no VmSentinelError is a crash

A case is ``(target, seed, index)``: its input is a pure function of those three, so any failure
replays alone (``benchmarks/fuzz.py --target NAME --seed S --case I``).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import lzma
import os
import random
import signal
import struct
import tarfile
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.synthetic import DIRECT_MAP, PageTableBuilder, synthetic_kernel_reader, write_elf_core
from tests.synthetic_kernel import BtfBuilder, bpf_btf, build_kallsyms, maple_btf, sample_btf, sample_symbols, vfs_btf
from vmsentinel.errors import VmSentinelError

MASK64 = (1 << 64) - 1

# ------------------------------------------------------------------------------------------------
# inputs and mutation


@dataclass
class Seed:
    """One valid input, and what the mutator may know about it to make hostile variants of it.

    ``fixed_size``: the bytes are a region of memory (their length cannot change).
    ``pointer_slots``: offsets of 8-byte pointers in ``data``, to redirect; ``pointer_targets``: addresses
    worth pointing them at (objects, tables); ``self_base``: the address of ``data[0]`` (a pointer may be
    turned back on its own slot); ``tag_mask``: bits of a pointer that are flags, kept when redirecting.
    ``values``: small numbers that mean something here (type ids, string offsets, table offsets).
    """

    data: bytes
    fixed_size: bool = False
    pointer_slots: list[int] = field(default_factory=list)
    pointer_targets: list[int] = field(default_factory=list)
    self_base: int = 0
    tag_mask: int = 0
    values: list[int] = field(default_factory=list)
    label: str = ""


_INTERESTING8 = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x10, 0x20, 0x30, 0x40]
_INTERESTING = [
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    0x10,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x1000,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x10000,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFE,
    0xFFFFFFFF,
    1 << 32,
    1 << 40,
    1 << 62,
    1 << 63,
    MASK64,
    MASK64 - 1,
    0xFFFFFFFFFFFFF000,
    0xFFFF800000000000,
    0x0000800000000000,
    0x00007FFFFFFFF000,
    0xFFFFFFFF81000000,
    DIRECT_MAP,
]


def _u(data: bytearray | bytes, pos: int, width: int) -> int:
    return int.from_bytes(data[pos : pos + width], "little")


def _put(buf: bytearray, pos: int, width: int, value: int, big: bool = False) -> None:
    buf[pos : pos + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "big" if big else "little")


#: share of mutations of page tables that fill a whole table with one entry (costly cases: a walk then
#: meets 512-fold sharing and runs into its budgets)
FILL_TABLE_SHARE = 0.1


def _put_word(value: int) -> bytes:
    return (value & MASK64).to_bytes(8, "little")


class Mutator:
    """Byte-level mutations of a seed: bit flips, interesting bytes and words, numbers written as text,
    truncation, deletion, insertion, copies and splices, and pointers redirected to themselves, to other
    objects, to the middle of things, out of RAM or out of the address space."""

    def __init__(self, seeds: list[Seed]) -> None:
        self.seeds = seeds

    def mutate(self, rng: random.Random, seed: Seed) -> bytes:
        buf = bytearray(seed.data)
        size = len(buf)
        rounds = 1 + min(int(rng.expovariate(0.8)), 9)
        for _ in range(rounds):
            if not buf:
                buf += bytes([rng.randrange(256)])
            op = rng.random()
            if seed.tag_mask > 0xFFF and rng.random() < FILL_TABLE_SHARE:  # page tables: whole tables shared by every entry
                self._fill_table(rng, buf, seed)
            elif seed.pointer_slots and op < 0.35:
                self._pointer(rng, buf, seed)
            elif op < 0.5:
                self._word(rng, buf, seed)
            elif op < 0.6:
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            elif op < 0.68:
                buf[rng.randrange(len(buf))] = rng.choice(_INTERESTING8) if rng.random() < 0.7 else rng.randrange(256)
            elif op < 0.74:
                self._text_number(rng, buf)
            elif op < 0.8:
                self._copy(rng, buf)
            elif op < 0.84:
                self._repeat_word(rng, buf)
            elif not seed.fixed_size and op < 0.89:
                del buf[rng.randrange(len(buf)) :]
            elif not seed.fixed_size and op < 0.93:
                at = rng.randrange(len(buf))
                del buf[at : at + 1 + int(rng.expovariate(1 / 16))]
            elif not seed.fixed_size and op < 0.97:
                at = rng.randrange(len(buf) + 1)
                if rng.random() < 0.5:
                    src = rng.randrange(len(buf))
                    chunk = bytes(buf[src : src + 1 + int(rng.expovariate(1 / 32))])
                else:
                    chunk = bytes(rng.choice(_INTERESTING8) for _ in range(1 + int(rng.expovariate(1 / 8))))
                buf[at:at] = chunk
            elif not seed.fixed_size:
                other = rng.choice(self.seeds).data
                if other:
                    buf[rng.randrange(len(buf) + 1) :] = other[rng.randrange(len(other)) :]
            else:
                self._word(rng, buf, seed)
        if seed.fixed_size and len(buf) != size:
            buf = buf[:size] + bytes(max(0, size - len(buf)))
        return bytes(buf)

    @staticmethod
    def _word(rng: random.Random, buf: bytearray, seed: Seed) -> None:
        width = rng.choice((2, 4, 4, 8, 8))
        if len(buf) < width:
            return
        pos = rng.randrange(len(buf) - width + 1)
        if rng.random() < 0.75:
            pos -= pos % width
        old = _u(buf, pos, width)
        pick = rng.random()
        if pick < 0.4:
            value = rng.choice(_INTERESTING)
        elif pick < 0.55 and seed.values:
            value = rng.choice(seed.values)
        elif pick < 0.7:
            value = rng.choice((len(buf), len(buf) - 1, len(buf) + 1, pos, rng.randrange(len(buf) + 1), len(buf) * 2))
        elif pick < 0.85:
            value = rng.choice(
                (old + 1, old - 1, old * 2, old >> 1, old + rng.randrange(1, 64), -old, old ^ (1 << (8 * width - 1)))
            )
        else:
            value = rng.getrandbits(8 * width)
        _put(buf, pos, width, value, big=rng.random() < 0.08)

    @staticmethod
    def _text_number(rng: random.Random, buf: bytearray) -> None:
        """A number in text (tar octal, cpio hex, ar and JSON decimal), where a number may be."""
        value = rng.choice(_INTERESTING) if rng.random() < 0.6 else rng.randrange(1 << 20)
        text = rng.choice((b"%d", b"%o", b"%08X", b"%x", b"-%d", b"%d.5", b"%de400")) % value
        pos = rng.randrange(len(buf))
        digits = b"0123456789abcdefABCDEF"
        # land on a run of digits when one is near: that is where the format keeps its numbers
        for probe in range(pos, min(len(buf), pos + 64)):
            if buf[probe] in digits:
                pos = probe
                break
        buf[pos : pos + len(text)] = text

    @staticmethod
    def _copy(rng: random.Random, buf: bytearray) -> None:
        n = 1 + int(rng.expovariate(1 / 24))
        src, dst = rng.randrange(len(buf)), rng.randrange(len(buf))
        chunk = buf[src : src + n]
        buf[dst : dst + len(chunk)] = chunk[: max(0, len(buf) - dst)]

    @staticmethod
    def _repeat_word(rng: random.Random, buf: bytearray) -> None:
        """One 8-byte word copied over the next ones: tables whose entries all point at one place."""
        if len(buf) < 16:
            return
        pos = rng.randrange(len(buf) - 8) & ~7
        word = bytes(buf[pos : pos + 8])
        count = min(1 + int(rng.expovariate(1 / 32)), (len(buf) - pos) // 8 - 1)
        buf[pos + 8 : pos + 8 + 8 * count] = word * count

    @staticmethod
    def _fill_table(rng: random.Random, buf: bytearray, seed: Seed) -> None:
        """Every entry of one page table set to one entry (of any table, or pointing at a table): a table
        shared by all 512 slots of its parent, a fan-out that multiplies what a walk must visit."""
        table = rng.randrange(max(1, len(buf) // 0x1000)) * 0x1000
        if rng.random() < 0.5 and seed.pointer_targets:
            word = (rng.choice(seed.pointer_targets) & ~seed.tag_mask) | 0x7
        else:
            word = _u(buf, rng.choice(seed.pointer_slots), 8) if seed.pointer_slots else 0x7
        end = min(len(buf), table + 0x1000)
        buf[table:end] = _put_word(word) * ((end - table) // 8)

    @staticmethod
    def _pointer(rng: random.Random, buf: bytearray, seed: Seed) -> None:
        slot = rng.choice(seed.pointer_slots)
        if slot + 8 > len(buf):
            return
        old = _u(buf, slot, 8)
        here = seed.self_base + slot
        pick = rng.random()
        if pick < 0.2:
            target = here  # a pointer to itself: the shortest loop
        elif pick < 0.35:
            target = _u(buf, rng.choice(seed.pointer_slots), 8) & ~seed.tag_mask  # where another pointer goes
        elif pick < 0.55 and seed.pointer_targets:
            target = rng.choice(seed.pointer_targets)
        elif pick < 0.65:
            target = (seed.self_base + rng.randrange(max(1, len(buf)))) & ~7  # into the middle of something
        elif pick < 0.72:
            target = here - rng.randrange(0, 0x200, 8)  # its own container
        elif pick < 0.8:
            target = 0
        else:
            target = rng.choice(
                (
                    0x0000800000000000 | rng.getrandbits(40),  # not canonical
                    0x00007FFF00000000 + rng.getrandbits(20),  # user space
                    (old & ~seed.tag_mask) + (1 << 30),  # past the end of RAM
                    MASK64 & ~7,
                    old ^ (1 << rng.randrange(64)),
                    old + rng.choice((1, 2, 4, 8, -8)),
                )
            )
        keep = old & seed.tag_mask if rng.random() < 0.85 else rng.getrandbits(12) & seed.tag_mask
        _put(buf, slot, 8, (target & ~seed.tag_mask) | keep)


# ------------------------------------------------------------------------------------------------
# targets


Run = Callable[[bytes], object]


@dataclass
class Built:
    """What a target needs at run time, built once per process: seeds, the function that parses one
    input, and (optionally) a structure-aware mutator used for part of the cases."""

    seeds: list[Seed]
    run: Run
    mutate: Callable[[random.Random, Seed], bytes] | None = None
    structured_share: float = 0.5


@dataclass(frozen=True)
class Target:
    name: str
    what: str  # the code under test
    build: Callable[[], Built]
    weight: float = 1.0  # share of the cases in a run over every target


def tolerate() -> contextlib.suppress:
    """Go on past a project error: one call that refuses its input must not hide the next one's crash."""
    return contextlib.suppress(VmSentinelError)


_SCRATCH: list[Path] = []  # the folder of this run (made by the first process that needs it; forks share it)


def scratch_file(name: str) -> Path:
    """A file of this process in tmpfs (where there is one) for parsers that take a path. The folder
    outlives every case and chunk of a run (the built targets keep the path); ``remove_scratch`` ends it."""
    if not _SCRATCH:
        base = Path("/dev/shm") if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())
        _SCRATCH.append(Path(tempfile.mkdtemp(prefix="vmsentinel-fuzz-", dir=base)))
    _SCRATCH[0].mkdir(exist_ok=True)
    return _SCRATCH[0] / f"{os.getpid()}-{name}"


def remove_scratch() -> None:
    """Remove the run's folder and every process's files in it (at the end of a run)."""
    import shutil

    for folder in _SCRATCH:
        shutil.rmtree(folder, ignore_errors=True)
    _SCRATCH.clear()
    _built.clear()  # their paths are gone with the folder


def _seed_values(seed: Seed, values: list[int]) -> Seed:
    seed.values = sorted(set(values))[:4096]
    return seed


# -- BTF ---------------------------------------------------------------------------------------


def views_btf() -> bytes:
    """Every type the task, file, socket, module and memory-map views and the walkers read. Only the
    offsets matter to them (and the few array lengths and sizes they ask for), so members are mostly
    plain 64-bit integers."""
    b = BtfBuilder()
    u8 = b.int_("unsigned char", 1)
    u16 = b.int_("short unsigned int", 2)
    u32 = b.int_("unsigned int", 4)
    u64 = b.int_("long long unsigned int", 8)
    char = b.int_("char", 1, signed=True)
    vptr = b.ptr(0)

    def struct(name: str, size: int, members: dict[str, int | tuple[int, int]], union: bool = False) -> int:
        out = []
        for member, spec in members.items():
            off, tid = (spec, u64) if isinstance(spec, int) else spec
            out.append((member, tid, off * 8, 0))
        return b.struct(name, size, out, union=union)

    list_head = struct("list_head", 16, {"next": (0, vptr), "prev": (8, vptr)})
    hlist_node = struct("hlist_node", 16, {"next": (0, vptr), "pprev": (8, vptr)})
    comm = b.array(char, 16, u32)
    struct(
        "task_struct",
        0x200,
        {
            "pid": (0x00, u32),
            "tgid": (0x04, u32),
            "flags": (0x08, u32),
            "__state": (0x0C, u32),
            "exit_state": (0x10, u32),
            "tasks": (0x18, list_head),
            "real_parent": 0x28,
            "group_leader": 0x30,
            "real_cred": 0x38,
            "mm": 0x40,
            "start_boottime": 0x48,
            "signal": 0x50,
            "thread_node": (0x58, list_head),
            "pid_links": (0x68, hlist_node),
            "files": 0x78,
            "comm": (0x80, comm),
            "worker_private": 0x90,
        },
    )
    struct("kthread", 0x20, {"full_name": 0x8})
    struct(
        "cred",
        0x60,
        {
            **{k: (4 + 4 * i, u32) for i, k in enumerate(("uid", "gid", "suid", "sgid", "euid", "egid", "fsuid", "fsgid"))},
            "cap_effective": 0x28,
        },
    )
    tree = struct("maple_tree", 16, {"ma_lock": (0, u32), "ma_flags": (4, u32), "ma_root": 8})
    struct(
        "mm_struct",
        0x100,
        {
            "mm_mt": (0x40, tree),
            "pgd": 0x50,
            "start_brk": 0x60,
            "brk": 0x68,
            "start_stack": 0x70,
            "arg_start": 0x78,
            "arg_end": 0x80,
            "exe_file": 0x88,
        },
    )
    xarray = struct("xarray", 16, {"xa_lock": (0, u32), "xa_head": 8})
    idr = struct("idr", 24, {"idr_rt": (0, xarray), "idr_base": (16, u32)})
    struct("pid_namespace", 0x40, {"idr": (0x10, idr)})
    struct("pid", 0x40, {"tasks": (0x10, b.array(vptr, 4, u32))})
    struct("signal_struct", 0x40, {"thread_head": (0x10, list_head)})
    struct("xa_node", 576, {"shift": (0, u8), "slots": (40, b.array(vptr, 64, u32))})
    struct("rq", 0x40, {"curr": 0x8})
    path = struct("path", 16, {"mnt": 0, "dentry": 8})
    struct("file", 0x60, {"f_path": (0x10, path), "private_data": 0x20, "f_inode": 0x28})
    bl_node = struct("hlist_bl_node", 16, {"next": 0, "pprev": 8})
    qstr = struct("qstr", 16, {"hash_len": 0, "name": 8})
    struct("dentry", 0x60, {"d_hash": (0x8, bl_node), "d_parent": 0x18, "d_name": (0x20, qstr)})
    vfsmount = struct("vfsmount", 16, {"mnt_root": 0})
    struct("mount", 0x40, {"mnt_parent": 0x10, "mnt_mountpoint": 0x18, "mnt": (0x20, vfsmount)})
    struct("inode", 0x60, {"i_mode": (0, u16), "i_uid": (4, u32), "i_sb": 0x28, "i_ino": 0x40})
    struct("super_block", 0x40, {"s_dev": (0x10, u32), "s_type": 0x28})
    struct("file_system_type", 0x10, {"name": 0})
    struct("files_struct", 0x40, {"fdt": 0x20})
    struct("fdtable", 0x10, {"max_fds": (0, u32), "fd": 8})
    struct("socket", 0x30, {"sk": 0x18})
    common = struct(
        "sock_common",
        0x88,
        {
            "skc_daddr": (0, u32),
            "skc_rcv_saddr": (4, u32),
            "skc_dport": (0xC, u16),
            "skc_num": (0xE, u16),
            "skc_family": (0x10, u16),
            "skc_state": (0x12, u8),
            "skc_v6_daddr": 0x38,
            "skc_v6_rcv_saddr": 0x48,
        },
    )
    struct("sock", 0x300, {"__sk_common": (0, common), "sk_type": (0x100, u16), "sk_protocol": (0x102, u16)})
    struct("unix_sock", 0x340, {"addr": 0x300})
    struct("unix_address", 0x80, {"len": (4, u32), "name": 8})
    memory = struct("module_memory", 0x20, {"base": 0, "size": (8, u32)})
    struct(
        "module",
        0x200,
        {
            "state": (0, u32),
            "list": (0x8, list_head),
            "name": (0x18, b.array(char, 56, u32)),
            "taints": 0x60,
            "sig_ok": (0x68, u8),
            "refcnt": (0x70, u32),
            "source_list": (0x78, list_head),
            "mem": (0x100, b.array(memory, 7, u32)),
        },
    )
    b.enum("mod_mem_type", {"MOD_TEXT": 0, "MOD_DATA": 1, "MOD_MEM_NUM_TYPES": 7})
    kobject = struct("kobject", 0x20, {"entry": (0x8, list_head)})
    struct("module_kobject", 0x40, {"kobj": (0, kobject), "mod": 0x28})
    struct("kset", 0x40, {"list": (0, list_head)})
    struct("module_use", 0x30, {"source_list": (0, list_head), "target_list": (0x10, list_head), "source": 0x20})
    r64 = struct("maple_range_64", 256, {"parent": 0, "pivot": (8, b.array(u64, 15, u32)), "slot": (128, b.array(vptr, 16, u32))})
    a64 = struct("maple_arange_64", 248, {"parent": 0, "pivot": (8, b.array(u64, 9, u32)), "slot": (80, b.array(vptr, 10, u32))})
    struct("maple_node", 256, {"mr64": (0, r64), "ma64": (0, a64), "slot": (8, b.array(vptr, 31, u32))}, union=True)
    struct(
        "vm_area_struct",
        176,
        {
            "vm_start": 0,
            "vm_end": 8,
            "vm_mm": 16,
            "vm_flags": 32,
            "vm_ops": 112,
            "vm_pgoff": 120,
            "vm_file": 128,
            "vm_private_data": 136,
        },
    )
    b.enum("pid_type", {"PIDTYPE_PID": 0, "PIDTYPE_TGID": 1, "PIDTYPE_MAX": 4})
    b.var("runqueues", b.struct("", 0x40, []))
    return b.build()


_BTF_QUERIES = [
    ("task_struct", "pid"),
    ("task_struct", "tasks.prev"),
    ("task_struct", "mm"),
    ("task_struct", "cred"),
    ("task_struct", "comm"),
    ("cred", "uid.val"),
    ("maple_node", "slot"),
    ("module", "mem"),
    ("xa_node", "slots"),
    ("file", "f_path.dentry"),
    ("mm_struct", "mm_mt.ma_root"),
]


def _btf_values(blob: bytes) -> list[int]:
    from vmsentinel.os.linux.profile.btf import Btf

    btf = Btf(blob)
    hdr_len, type_len = struct.unpack_from("<I", blob, 4)[0], struct.unpack_from("<I", blob, 12)[0]
    string_offsets = [i + 1 for i, c in enumerate(blob[hdr_len + type_len :]) if c == 0][:64]
    record_offsets = [int(o) for o in btf._offsets][:256]
    return list(range(len(btf) + 2)) + string_offsets + record_offsets + [1 << 24, (4 << 24) | 0xFFFF, 8 << 24, 31 << 24]


def _build_btf() -> Built:
    from vmsentinel.os.linux.profile import isf
    from vmsentinel.os.linux.profile.btf import Btf, Kind, find_btf_blobs

    seeds = [
        _seed_values(Seed(blob, label=label), _btf_values(blob))
        for label, blob in (
            ("sample", sample_btf()),
            ("maple", maple_btf()),
            ("vfs", vfs_btf()),
            ("bpf", bpf_btf()),
            ("views", views_btf()),
        )
    ]

    def run(data: bytes) -> None:
        find_btf_blobs(data)
        btf = Btf(data)
        for type_id in range(min(len(btf) + 1, 300)):
            with tolerate():
                t = btf.type(type_id)
                btf.type_name(type_id)
                btf.size_of(type_id)
            with tolerate():
                t = btf.resolve(type_id)
                if t.kind in (Kind.STRUCT, Kind.UNION):
                    for m in btf.members(type_id)[:64]:
                        with tolerate():
                            btf.member(type_id, m.name or "x")
                elif t.kind == Kind.ARRAY:
                    btf.array_info(type_id)
                elif t.kind == Kind.INT:
                    btf.int_info(type_id)
                elif t.kind in (Kind.ENUM, Kind.ENUM64):
                    btf.enum_values(type_id)
        for struct_name, member in _BTF_QUERIES:
            with tolerate():
                btf.member_offset(struct_name, member)
        for name in ("pid_type", "mod_mem_type"):
            with tolerate():
                btf.enum_values(name)
        btf.count((Kind.STRUCT, Kind.UNION))
        Btf(data, btf.index_bytes())
        with tolerate():
            isf._Exporter(btf).run()  # the ISF export walks every struct and enum

    return Built(seeds, run)


# -- kallsyms ------------------------------------------------------------------------------------

_KALLSYMS_BASE = 0xFFFFFFFFA1000000


def _build_kallsyms() -> Built:
    from vmsentinel.os.linux.profile import kallsyms
    from vmsentinel.os.linux.profile.profile import SymbolTable

    seeds = []
    syms = sample_symbols(300)
    for order, seqs in (("offsets-first", True), ("offsets-first", False), ("names-first", True)):
        buf, _ = build_kallsyms(syms, _KALLSYMS_BASE, order=order, seqs=seqs, prefix=b"\xaa" * 16)
        layout = kallsyms.locate(buf)
        values = [
            layout.token_table,
            layout.token_index,
            layout.markers,
            layout.names,
            layout.names_end,
            layout.num_syms,
            layout.num_syms_at,
            layout.offsets,
            layout.relative_base_at,
            len(syms) + 1,
            256,
            257,
            0x8100,
        ]
        seeds.append(_seed_values(Seed(buf, label=f"{order}{'' if seqs else ' no seqs'}"), values))

    def run(data: bytes) -> None:
        layout = kallsyms.locate(data)
        syms = kallsyms.decode(data, layout)
        syms.as_dict()
        syms.shifted(-0x20000000)
        table = SymbolTable.from_kallsyms(syms)
        for name in ("fn5", "fixed_percpu_data", "nope"):
            with tolerate():
                table.address(name)
        table.by_address(1 << 63)

    return Built(seeds, run)


# -- ELF core and LiME ------------------------------------------------------------------------------


def _read_some(mem: Any) -> None:
    """What a sweep asks of a memory source first: its ranges, and reads at their edges."""
    for rng in mem.ranges()[:8]:
        for address, length in ((rng.start, 16), (rng.end - 8, 8), (rng.end - 4, 16), (rng.start + rng.length // 2, 64)):
            with tolerate():
                mem.read(address, length)
        with tolerate():
            mem.read_u64(rng.start)
        with tolerate():
            bytes(mem.view(rng.start, min(rng.length, 32)))
    list(zip(range(4), mem.scan(b"\x7fELF"), strict=False))


def _build_elf_core() -> Built:
    from vmsentinel.memory import elf_core
    from vmsentinel.memory.mapped_file import MappedFileMemory

    path = scratch_file("guest.core")
    seeds = []
    for loads, cpus in (([(0, bytes(range(256)) * 16), (0x100000, b"\x7fELF" + bytes(0x7FC))], 2), ([(0x1000, bytes(0x200))], 1)):
        write_elf_core(str(path), loads, cr3=0x1234000 | 5, cr4=1 << 12, cpus=cpus)
        data = path.read_bytes()
        values = [64, 56, 0x20, len(data), 0x100000, 5, 4, 1, 0x18]
        seeds.append(_seed_values(Seed(data, label=f"{len(loads)} loads, {cpus} cpus"), values))

    def run(data: bytes) -> None:
        path.write_bytes(data)
        elf_core.is_elf_core(data[:64])
        # ElfCoreMemory parses through a per-file cache of the layout (a JSON file per dump): the fuzz
        # parses each case itself, with the same code, so a million cases leave no million cache files
        segments, _cpus = elf_core._parse(path)
        mem = MappedFileMemory(path, segments, "elf-core")
        try:
            _read_some(mem)
        finally:
            mem.close()

    return Built(seeds, run)


def _build_lime() -> Built:
    from vmsentinel.memory.lime import open_lime, write_lime

    path = scratch_file("guest.lime")
    seeds = []
    for ranges in (
        [(0x1000, bytes(range(256))), (0x100000, b"x" * 0x100)],
        [(0, bytes(0x40)), (0x40, bytes(0x40)), (1 << 32, b"hi")],
    ):
        write_lime(path, ranges)
        data = path.read_bytes()
        seeds.append(_seed_values(Seed(data, label=f"{len(ranges)} ranges"), [0x4C694D45, 1, len(data), 0x1000, 0x10FF]))

    def run(data: bytes) -> None:
        path.write_bytes(data)
        mem = open_lime(path)
        try:
            _read_some(mem)
        finally:
            mem.close()

    return Built(seeds, run)


# -- page tables ---------------------------------------------------------------------------------

_PT_RAM = 0x200000
_PT_POOL = 0x100000


def _build_nt_views() -> Built:
    """The synthetic NT kernel of tests/unit/windows (a process list, a client-ID table, a module list,
    a service table, one CPU's IDT), its kernel data mutated."""
    from tests.unit.windows.test_nt_memory import BASE, HEAD_RVA, KPHYS, OFF, PD, isf, nt_memory, put
    from vmsentinel.arch.x86_32 import PagingAddressSpace32
    from vmsentinel.memory.buffer import BufferMemory
    from vmsentinel.os.types import IsfTypes
    from vmsentinel.os.windows.profile.profile import ImageIdentity, NtProfile
    from vmsentinel.os.windows.views.cid_table import cid_table
    from vmsentinel.os.windows.views.idt import read_idt
    from vmsentinel.os.windows.views.modules import list_modules
    from vmsentinel.os.windows.views.processes import list_processes, unlisted_processes
    from vmsentinel.os.windows.views.services import service_table

    ram, eprocs = nt_memory([(4, 0, "System"), (80, 4, "smss.exe"), (140, 80, "winlogon.exe")])
    k = lambda va: va - BASE + KPHYS  # noqa: E731
    for e in eprocs:
        ram[k(e)] = 3
    table, leaf = BASE + 0xA000, BASE + 0xB000
    put(ram, k(BASE + 0x9800), "<I", table)
    put(ram, k(table), "<I", leaf)
    for pid, e in zip((4, 80, 140), eprocs, strict=True):
        put(ram, k(leaf) + (pid // 4) * 8, "<II", e | 1, 0)
    head, record = BASE + 0x3000, BASE + 0x3100
    put(ram, k(head), "<I", record)
    put(ram, k(record), "<I", head)
    put(ram, k(record) + 24, "<III", BASE, BASE + 0x1000, 0x200000)
    put(ram, k(record) + 44, "<HHI", 24, 24, record + 0x80)
    ram[k(record) + 0x80 : k(record) + 0x98] = "ntoskrnl.exe".encode("utf-16-le")
    put(ram, k(BASE + 0x4000), "<IIII", BASE + 0x5000, 0, 2, 0)
    put(ram, k(BASE + 0x5000), "<II", BASE + 0x2000, BASE + 0x2100)
    pcr, idt = BASE + 0x6000, BASE + 0x7000
    put(ram, k(BASE + 0x8000), "<II", pcr + 0x120, 0)
    put(ram, k(pcr) + 0x1C, "<I", pcr)
    put(ram, k(pcr) + 0x38, "<I", idt)
    put(ram, k(idt) + 0x0E * 8, "<HHHH", 0x2200, 8, 0x8E00, BASE >> 16)
    doc = isf()
    plain = {"kind": "base", "name": "unsigned long"}

    def struct_of(size: int, **offsets: int) -> dict:
        return {"kind": "struct", "size": size, "fields": {n: {"offset": o, "type": plain} for n, o in offsets.items()}}

    doc["user_types"]["_EPROCESS"]["fields"]["ExitTime"] = {"offset": 0x78, "type": plain}
    doc["user_types"]["_HANDLE_TABLE"] = struct_of(0x44, TableCode=0)
    doc["user_types"]["_LDR_DATA_TABLE_ENTRY"] = struct_of(
        0x50, InLoadOrderLinks=0, DllBase=24, EntryPoint=28, SizeOfImage=32, FullDllName=36, BaseDllName=44
    )
    doc["user_types"]["_KSERVICE_TABLE_DESCRIPTOR"] = struct_of(16, Base=0, Count=4, Limit=8)
    doc["user_types"]["_KPCR"] = struct_of(0x200, SelfPcr=0x1C, IDT=0x38, PrcbData=0x120)
    doc["user_types"]["_KINTERRUPT"] = struct_of(0x1E4, ServiceRoutine=12, DispatchCode=60)
    symbols = {
        "PsActiveProcessHead": HEAD_RVA,
        "PspCidTable": 0x9800,
        "PsLoadedModuleList": 0x3000,
        "KeServiceDescriptorTable": 0x4000,
        "KiProcessorBlock": 0x8000,
        "NtClose": 0x2000,
        "KiTrap0E": 0x2200,
    }
    profile = NtProfile(IsfTypes(doc, "fuzz"), symbols, ImageIdentity("ntoskrnl.exe", 0, 0), "fuzz")
    lo, hi = KPHYS + 0x1000, KPHYS + 0xC000  # the list head, modules, services, PCR, IDT, CID table and processes
    base = bytes(ram)
    seed = Seed(bytes(ram[lo:hi]), fixed_size=True, values=[3, 6, 22, 0x8E00, 0x8500, OFF["links"], 0xFFFFFFFF], label="nt")
    mem = BufferMemory({0: ram})

    def run(data: bytes) -> None:
        ram[:] = base
        ram[lo : lo + len(data)] = data
        space = PagingAddressSpace32(mem, PD)
        procs, _ = list_processes(space, mem, profile, BASE)
        cids, _ = cid_table(space, profile, BASE)
        unlisted_processes(space, mem, profile, procs, cids.processes)
        modules, _ = list_modules(space, profile, BASE)
        service_table(space, profile, BASE, modules)
        read_idt(space, profile, BASE, modules)

    return Built([seed], run)


def _build_nt_guest() -> Built:
    """The synthetic NT guest of tests/unit/windows/test_windows_guest.py (processes on the list, in the
    client-ID table and in RAM, the object manager's driver folders, the module list and service table)
    read whole through WindowsGuest, its kernel data mutated."""
    from types import SimpleNamespace

    from tests.unit.windows.test_nt_memory import BASE, KPHYS, PD
    from tests.unit.windows.test_windows_guest import add_object_directory, guest_memory
    from vmsentinel.memory.buffer import BufferMemory
    from vmsentinel.os.types import IsfTypes
    from vmsentinel.os.windows.guest import WindowsGuest
    from vmsentinel.os.windows.locate import NtKernel, PeHeader
    from vmsentinel.os.windows.profile.profile import ImageIdentity, NtProfile

    ram, eprocs, parts = guest_memory()
    add_object_directory(ram, parts["doc"], parts["symbols"])
    parts["doc"]["user_types"]["_DISPATCHER_HEADER"] = {
        "kind": "struct",
        "size": 16,
        "fields": {"SignalState": {"offset": 4, "type": {}}},
    }
    header = bytes([3, 0, parts["doc"]["user_types"]["_KPROCESS"]["size"] // 4, 0])
    for e in eprocs:
        ram[e - BASE + KPHYS : e - BASE + KPHYS + 4] = header
    profile = NtProfile(IsfTypes(parts["doc"], "fuzz"), parts["symbols"], ImageIdentity("ntoskrnl.exe", 0, 0), "fuzz")
    kernel = NtKernel(BASE, PD, False, PeHeader(BASE, 0, 0x200000, 0x14C, "", "ntoskrnl.exe"))
    lo, hi = KPHYS + 0x3000, KPHYS + 0x28000  # modules, services, CID table, processes, the object directory
    base = bytes(ram)
    seed = Seed(bytes(ram[lo:hi]), fixed_size=True, values=[3, 6, 0x1B, 24, 0xFFFFFFFF], label="nt-guest")
    mem = BufferMemory({0: ram})
    connector: Any = SimpleNamespace(memory=mem, spec="fuzz", live=False, layout_source="none", close=lambda: None)

    def run(data: bytes) -> None:
        ram[:] = base
        ram[lo : lo + len(data)] = data
        guest = WindowsGuest(connector, kernel, profile, None)
        guest.snapshot(scan=True, with_code=True, regions=True)

    return Built([seed], run)


def _build_paging32(pae: bool) -> Callable[[], Built]:
    """32-bit tables: a directory with 4 KiB pages, a large page and NT's self-map (two levels), or a
    PDPT, two directories and a table (PAE)."""

    def build() -> Built:
        from vmsentinel.arch.x86_32 import NX, PS, RW, US, P, PagingAddressSpace32
        from vmsentinel.memory.buffer import BufferMemory

        ram = bytearray(0x200000)
        mem = BufferMemory({0: ram})
        lo, root = 0x1000, 0x1000
        if pae:
            pd0, pd2, pt = 0x2000, 0x3000, 0x4000
            ram[root : root + 32] = struct.pack("<4Q", pd0 | P, 0, pd2 | P, 0)
            ram[pd0 + 2 * 8 : pd0 + 3 * 8] = struct.pack("<Q", pt | P | RW | US)
            ram[pt : pt + 24] = struct.pack("<3Q", 0x10000 | P | RW | US, 0x11000 | P | US | NX, 0x12000 | P)
            ram[pd2 + 8 : pd2 + 16] = struct.pack("<Q", 0x200000 | P | PS | RW)  # 2 MiB, mostly outside RAM
            ram[pd2 + 0x1F8 : pd2 + 0x200] = struct.pack("<Q", pd2 | P | RW)  # a directory that maps itself
            hi, width = 0x5000, 8
        else:
            pd, pt = 0x2000, 0x3000
            ram[pd + 4 : pd + 8] = struct.pack("<I", pt | P | RW | US)  # 0x00400000
            ram[pt : pt + 12] = struct.pack("<3I", 0x10000 | P | RW | US, 0x11000 | P | US, 0x12000 | P)
            ram[pd + 0x200 * 4 : pd + 0x201 * 4] = struct.pack("<I", 0x00400000 | P | PS | RW)  # 4 MiB at 0x80000000
            ram[pd + 0x300 * 4 : pd + 0x301 * 4] = struct.pack("<I", pd | P | RW)  # the self-map
            root, lo, hi, width = pd, pd, 0x4000, 4
        ram[0x10000:0x10010] = b"hello, nt kernel"
        base = bytes(ram)
        slots = [off for off in range(0, hi - lo, 8) if _u(ram, lo + off, width) & P] if pae else []
        probes = [0x00400000, 0x00401FFD, 0x00402000, 0x80000000, 0x80201234, 0xC0000000, 0xC0300C00, 0xFFFFFFF8]
        seed = Seed(
            bytes(ram[lo:hi]),
            fixed_size=True,
            pointer_slots=slots,
            pointer_targets=[*range(0x1000, hi, 0x1000), 0x10000, 0x1FF000, 0x200000, 1 << 36],
            self_base=lo,
            tag_mask=0xFFF | NX,
            values=[P | RW | US, P | PS, 0x87, 1 << 63, 1 << 5],
            label="PAE" if pae else "two-level",
        )

        def run(data: bytes) -> None:
            ram[:] = base
            ram[lo : lo + len(data)] = data
            space = PagingAddressSpace32(mem, root, pae=pae)
            for va in probes:
                with tolerate():
                    space.translation(va)
                with tolerate():
                    space.read(va - 3, 7)
                with tolerate():
                    space.read_u32(va)
                with tolerate():
                    space.read_cstring(va, 64)
                space.is_mapped(va, 0x1800)
            space.walk_mappings()
            space.walk_mappings(0x00400000, 0x80400000, merge=False)
            space.read_present(0x00400000, 0x4000)

        return Built([seed], run)

    return build


def _build_paging(levels: int) -> Callable[[], Built]:
    def build() -> Built:
        from vmsentinel.arch.x86_64 import ADDR_MASK, P, PagingAddressSpace, coalesce_by_rights
        from vmsentinel.memory.buffer import BufferMemory

        ram = bytearray(_PT_RAM)
        mem = BufferMemory({0: ram})
        pt = PageTableBuilder(mem, levels, pool_start=_PT_POOL, pool_end=_PT_POOL + 0x40000)
        kernel = 0xFFFFFFFF81000000 if levels == 4 else 0xFF11000000000000
        direct = 0xFFFF888000000000 if levels == 4 else 0xFF11100000000000
        probes = [kernel, kernel + 0x1FFD, kernel + 0x5000, direct, direct + 0x1FFFF8, 0x400000, 0x401FFF, 0x7FFFFFFFE000]
        for i in range(4):
            pt.map(kernel + i * 0x1000, 0x10000 + i * 0x3000, nx=i == 3, writable=i == 2)
        pt.map(kernel + 0x200000, 0x0, size=1 << 21)
        pt.map(direct, 0x0, size=1 << 21)
        pt.map(direct + (1 << 30), 0x40000000, size=1 << 30)  # a 1 GiB page, mostly outside RAM
        pt.map(0x400000, 0x20000, user=True)
        pt.map(0x401000, 0x21000, user=True, nx=True)
        pt.map(0x7FFFFFFFE000, 0x22000, user=True)
        ram[0x10000:0x10010] = b"hello, kernel\0\0\0"
        lo, hi = _PT_POOL, pt.next_free
        base = bytes(ram)
        tables = list(range(lo, hi, 0x1000))
        slots = [off for off in range(0, hi - lo, 8) if _u(ram, lo + off, 8) & P]
        seed = Seed(
            bytes(ram[lo:hi]),
            fixed_size=True,
            pointer_slots=slots,
            pointer_targets=[*tables, 0x10000, 0x0, _PT_RAM - 0x1000, _PT_RAM, 1 << 40],
            self_base=lo,
            tag_mask=MASK64 ^ ADDR_MASK,
            values=[P | 2 | 4, 0x80 | 1, 0x87, 1 << 63],
            label=f"{levels}-level",
        )

        def run(data: bytes) -> None:
            ram[:] = base
            ram[lo : lo + len(data)] = data
            space = PagingAddressSpace(mem, pt.root, levels)
            for va in probes:
                with tolerate():
                    space.translation(va)
                with tolerate():
                    space.read(va - 3, 7)
                with tolerate():
                    space.read_u64(va)
                with tolerate():
                    space.read_cstring(va, 64)
                with tolerate():
                    space.pieces(va, 0x2000)
                space.is_mapped(va, 0x1800)
            walk = space.walk_mappings()
            list(coalesce_by_rights(walk.mappings, with_nx=True))
            space.walk_mappings(kernel, kernel + 0x400000, merge=False)
            space.read_present(kernel, 0x6000)
            space.physical_runs(0x400000, 0x3000).read(0x800, 0x1000)

        return Built([seed], run)

    return build


# -- a synthetic kernel for the walkers and views ---------------------------------------------------------

_KRAM = 0x400000
_WORLD = 0x10000  # physical start of the kernel objects the views read (everything the fuzz mutates)


class World:
    """A small running kernel in memory: four processes (threads, credentials, executables, command
    lines, open files and sockets), the PID table, three modules with their sysfs kobjects, a process's
    maple tree of VMAs. Objects are grouped, so a walker's target can mutate just what it reads."""

    def __init__(self) -> None:
        self.symbols = {
            "init_task": DIRECT_MAP + _WORLD,
            "init_pid_ns": DIRECT_MAP + _WORLD + 0x200,
            "modules": DIRECT_MAP + _WORLD + 0x240,
            "module_kset": DIRECT_MAP + _WORLD + 0x250,
            "runqueues": DIRECT_MAP + _WORLD + 0x280,
            "__per_cpu_offset": DIRECT_MAP + _WORLD + 0x2C0,
            "nr_cpu_ids": DIRECT_MAP + _WORLD + 0x2D0,
            "linux_banner": DIRECT_MAP + _WORLD + 0x2E0,
        }
        self.mem, self.reader = synthetic_kernel_reader(views_btf(), ram=_KRAM, symbols=dict(self.symbols))
        self.ram: bytearray = self.mem._bufs[0]
        self.next = _WORLD + 0x300
        self.groups: dict[str, tuple[int, int]] = {}
        self.objects: list[int] = list(self.symbols.values())
        self._build()
        self.end = self.next
        self.base = bytes(self.ram)

    # -- building
    def alloc(self, size: int, align: int = 0x40) -> int:
        self.next = (self.next + align - 1) & ~(align - 1)
        addr = DIRECT_MAP + self.next
        self.next += (size + 0x3F) & ~0x3F
        self.objects.append(addr)
        return addr

    def put(self, vaddr: int, value: int, width: int = 8) -> None:
        _put(self.ram, vaddr - DIRECT_MAP, width, value)

    def write(self, vaddr: int, data: bytes) -> None:
        self.ram[vaddr - DIRECT_MAP : vaddr - DIRECT_MAP + len(data)] = data

    def string(self, text: bytes) -> int:
        at = self.alloc(len(text) + 1)
        self.write(at, text + b"\0")
        return at

    def group(self, name: str, build: Callable[[], None]) -> None:
        start = self.next
        build()
        self.groups[name] = (start, self.next)

    def _link(self, nodes: list[int]) -> None:
        """A circular list_head list through ``nodes`` (the first is the head)."""
        for a, b in zip(nodes, nodes[1:] + nodes[:1], strict=True):
            self.put(a, b)
            self.put(b + 8, a)

    def _build(self) -> None:
        self.write(self.symbols["linux_banner"], b"Linux version 9.9\0")
        self.put(self.symbols["__per_cpu_offset"], 0)
        self.put(self.symbols["nr_cpu_ids"], 1, 4)
        self.group("files", self._files)
        self.group("tasks", self._tasks)
        self.group("pids", self._pids)
        self.group("maple", self._maple)
        self.group("modules", self._modules)

    def _files(self) -> None:
        fs_names = {name: self.string(name.encode()) for name in ("ext4", "sockfs", "pipefs", "anon_inodefs")}
        self.fs: dict[str, int] = {}
        self.sbs: dict[str, int] = {}
        for name, text in fs_names.items():
            fs = self.fs[name] = self.alloc(0x10)
            self.put(fs, text)
            sb = self.sbs[name] = self.alloc(0x40)
            self.put(sb + 0x10, 0x800001, 4)
            self.put(sb + 0x28, fs)
        root = self.alloc(0x60)
        self.put(root + 0x18, root)
        self.put(root + 0x28, self.string(b"/"))
        mount = self.alloc(0x40)
        self.put(mount + 0x10, mount)
        self.put(mount + 0x20, root)  # mnt.mnt_root
        self.vfsmount = mount + 0x20
        parent = root
        for part in (b"usr", b"bin"):
            d = self.alloc(0x60)
            self.put(d + 0x8 + 8, d + 0x100)  # hashed: not deleted
            self.put(d + 0x18, parent)
            self.put(d + 0x28, self.string(part))
            parent = d
        self.bin_dir = parent
        self.sock_files: list[int] = []

    def file(self, fs: str, name: bytes, ino: int, mode: int = 0o100755, private: int = 0) -> int:
        inode = self.alloc(0x60)
        self.put(inode, mode, 2)
        self.put(inode + 4, 0, 4)
        self.put(inode + 0x28, self.sbs[fs])
        self.put(inode + 0x40, ino)
        dentry = self.alloc(0x60)
        self.put(dentry + 0x10, dentry + 0x200)
        self.put(dentry + 0x18, self.bin_dir if fs == "ext4" else dentry)
        self.put(dentry + 0x28, self.string(name))
        f = self.alloc(0x60)
        self.put(f + 0x10, self.vfsmount)
        self.put(f + 0x18, dentry)
        self.put(f + 0x20, private)
        self.put(f + 0x28, inode)
        return f

    def _socket(self, family: int, unix_path: bytes | None = None) -> int:
        sk = self.alloc(0x340)
        self.put(sk + 0x10, family, 2)
        self.put(sk + 0x12, 10 if family != 1 else 1, 1)
        self.put(sk + 0x100, 1, 2)
        self.put(sk + 0x102, 6, 2)
        self.put(sk + 0x0, 0x0100007F, 4)
        self.put(sk + 0x4, 0x0200007F, 4)
        self.put(sk + 0xC, 0x5000, 2)
        self.put(sk + 0xE, 8080, 2)
        self.put(sk + 0x48, 1 << 56)
        if unix_path is not None:
            addr = self.alloc(0x80)
            self.put(addr + 4, len(unix_path) + 2, 4)
            self.write(addr + 10, unix_path)
            self.put(sk + 0x300, addr)
        socket = self.alloc(0x30)
        self.put(socket + 0x18, sk)
        return socket

    def _tasks(self) -> None:
        init = self.symbols["init_task"]
        self.tasks = [init] + [self.alloc(0x200) for _ in range(3)]
        self.threads = [self.alloc(0x200) for _ in range(2)]
        self._link([init + 0x18] + [t + 0x18 for t in self.tasks[1:]])
        exe = self.file("ext4", b"sh", 100, mode=0o104755)
        names = [b"swapper/0", b"init", b"kworker/0:1", b"sshd"]
        for i, task in enumerate(self.tasks):
            pid = i
            self.put(task, pid, 4)
            self.put(task + 4, pid, 4)
            self.put(task + 0x08, 0x00200000 if i == 2 else 0x400000, 4)
            self.put(task + 0x0C, 1 if i else 0x402, 4)
            self.put(task + 0x28, self.tasks[max(0, i - 1)])
            self.put(task + 0x30, task)
            self.put(task + 0x48, 1000 * i)
            self.write(task + 0x80, names[i][:15])
            cred = self.alloc(0x60)
            for k in range(8):
                self.put(cred + 4 + 4 * k, 1000 * (i == 3), 4)
            self.put(cred + 0x28, 0x1FFFFFFFFFF)
            self.put(task + 0x38, cred)
            signal = self.alloc(0x40)
            self.put(task + 0x50, signal)
            members = [task] + (self.threads if i == 3 else [])
            self._link([signal + 0x10] + [t + 0x58 for t in members])
            if i == 2:
                kthread = self.alloc(0x20)
                self.put(kthread + 8, self.string(b"kworker/0:1-events_power_efficient"))
                self.put(task + 0x90, kthread)
            if i in (1, 3):
                mm = self.alloc(0x100)
                self.put(task + 0x40, mm)
                args = self.string(b"/bin/sh\0-c\0echo hi")
                self.put(mm + 0x50, DIRECT_MAP + self.reader.location.page_table_root)
                self.put(mm + 0x78, args)
                self.put(mm + 0x80, args + 19)
                self.put(mm + 0x88, exe)
                self.mm = mm
            if i == 3:
                fdt = self.alloc(0x10)
                files = self.alloc(0x40)
                self.put(files + 0x20, fdt)
                fds = self.alloc(8 * 6)
                self.put(fdt, 6, 4)
                self.put(fdt + 8, fds)
                slots = [
                    exe,
                    self.file("sockfs", b"", 7001, 0o140777, self._socket(2)),
                    self.file("sockfs", b"", 7002, 0o140777, self._socket(1, b"/run/x.sock")),
                    self.file("sockfs", b"", 7003, 0o140777, self._socket(10)),
                    self.file("pipefs", b"", 7004, 0o10600),
                    self.file("anon_inodefs", b"[eventfd]", 7005),
                ]
                for n, f in enumerate(slots):
                    self.put(fds + 8 * n, f)
                self.put(task + 0x78, files)
        for n, thread in enumerate(self.threads):
            self.put(thread, 10 + n, 4)
            self.put(thread + 4, 3, 4)
            self.put(thread + 0x28, self.tasks[1])
            self.write(thread + 0x80, b"worker")
        self.put(self.symbols["runqueues"] + 8, self.threads[0])

    def _pids(self) -> None:
        ns = self.symbols["init_pid_ns"]
        leaf = self.alloc(576)
        top = self.alloc(576)
        self.put(leaf, 0, 1)
        self.put(top, 6, 1)
        self.put(top + 40, leaf | 2)
        self.xa_head_at = ns + 0x10 + 8
        self.put(self.xa_head_at, top | 2)
        for task in self.tasks[1:] + self.threads:
            pid_nr = _u(self.ram, task - DIRECT_MAP, 4)
            pid = self.alloc(0x40)
            self.put(pid + 0x10, task + 0x68)
            self.put(task + 0x68 + 8, pid + 0x10)
            self.put(leaf + 40 + 8 * (pid_nr % 64), pid)
        self.put(top + 40 + 8 * 5, (9 << 2) | 2)  # a sibling entry
        self.put(top + 40 + 8 * 6, 0x11)  # a value entry

    def _maple(self) -> None:
        mm = self.mm
        vmas = []
        for i in range(12):
            v = self.alloc(176)
            self.put(v, 0x400000 + i * 0x1000)
            self.put(v + 8, 0x401000 + i * 0x1000)
            self.put(v + 16, mm)
            self.put(v + 32, (0x1, 0x5, 0x3, 0x80 | 0x3)[i % 4])
            if i == 0:
                self.put(v + 128, _u(self.ram, mm - DIRECT_MAP + 0x88, 8))
            vmas.append(v)
        self.put(mm + 0x60, 0x404000)
        self.put(mm + 0x68, 0x406000)
        self.put(mm + 0x70, 0x40B800)

        def node(ntype: int, slots: list[int]) -> int:
            n = self.alloc(256, align=256)  # maple nodes are 256-aligned: the low byte holds the type
            base = 128 if ntype in (1, 2) else 80
            for k, s in enumerate(slots):
                self.put(n + base + 8 * k, s)
            return n | ntype << 3 | 4

        leaves = [node(1, vmas[:5]), node(1, vmas[5:9]), node(0, vmas[9:])]
        self.put(mm + 0x40 + 8, node(3, leaves) | 2)

    def _modules(self) -> None:
        head = self.symbols["modules"]
        mods = [self.alloc(0x200) for _ in range(3)]
        self._link([head] + [m + 0x8 for m in mods])
        kset = self.alloc(0x40)
        self.put(self.symbols["module_kset"], kset)
        kobjs = []
        for i, m in enumerate(mods):
            self.put(m, i % 3, 4)
            self.write(m + 0x18, b"mod%d" % i)
            self.put(m + 0x60, (1 << 12) | (1 << 13) if i == 2 else 0)
            self.put(m + 0x68, 1, 1)
            self.put(m + 0x70, 2, 4)
            for k in range(7):
                self.put(m + 0x100 + 0x20 * k, 0xFFFFFFFFC0000000 + i * 0x100000 + k * 0x10000)
                self.put(m + 0x100 + 0x20 * k + 8, 0x1000 * (k + 1), 4)
            mkobj = self.alloc(0x40)
            self.put(mkobj + 0x28, m)
            kobjs.append(mkobj + 0x8)
        builtin = self.alloc(0x40)  # a built-in module's kobject: no struct module
        kobjs.append(builtin + 0x8)
        self._link([kset, *kobjs])
        use = self.alloc(0x30)
        self._link([mods[0] + 0x78, use])
        self.put(use + 0x20, mods[1])
        self._link([mods[1] + 0x78])
        self._link([mods[2] + 0x78])

    # -- fuzzing
    def seed(self, label: str, groups: tuple[str, ...] = ()) -> Seed:
        """The bytes of some groups (all of them by default) as a fixed-size region to mutate."""
        spans = [self.groups[g] for g in groups] if groups else [(_WORLD, self.end)]
        lo, hi = min(s for s, _ in spans), max(e for _, e in spans)
        slots = [off for off in range(0, hi - lo, 8) if DIRECT_MAP <= _u(self.ram, lo + off, 8) < DIRECT_MAP + _KRAM]
        ints = [_u(self.ram, lo + off, 4) for off in range(0, hi - lo, 4)]
        return Seed(
            bytes(self.ram[lo:hi]),
            fixed_size=True,
            pointer_slots=slots,
            pointer_targets=self.objects,
            self_base=DIRECT_MAP + lo,
            tag_mask=0x7,
            values=[v for v in set(ints) if 0 < v < 0x10000][:256],
            label=label,
        )

    def load(self, seed: Seed, data: bytes) -> None:
        """Memory as built, with the seed's region replaced by ``data``; nothing cached from the last case."""
        lo = seed.self_base - DIRECT_MAP
        self.ram[:] = self.base
        self.ram[lo : lo + len(data)] = data
        self.reader.space.new_sweep()


def _world_target(groups: tuple[str, ...], body: Callable[[World], None]) -> Callable[[], Built]:
    def build() -> Built:
        world = World()
        seed = world.seed("+".join(groups) or "all", groups)

        def run(data: bytes) -> None:
            world.load(seed, data)
            body(world)

        return Built([seed], run)

    return build


def _list_walks(w: World) -> None:
    r = w.reader
    head = w.symbols["init_task"] + 0x18
    r.list_walk(head, "task_struct", "tasks", limit=64)
    r.list_walk(head, "task_struct", "tasks", limit=3, include_head=True)
    for task in w.tasks:
        with tolerate():
            signal = r.pointer(task + 0x50)
            if signal is not None:
                r.list_walk(signal + 0x10, "task_struct", "thread_node", limit=64)


def _hlist_walks(w: World) -> None:
    r = w.reader
    for task in w.tasks[1:] + w.threads:
        with tolerate():
            pid_struct = r.u64(task + 0x68 + 8) - 0x10
            r.hlist_walk(pid_struct + 0x10, "task_struct", "pid_links", limit=64)


def _xarray_walks(w: World) -> None:
    with tolerate():
        w.reader.xarray_entries(w.xa_head_at, limit=1 << 12)


def _maple_walks(w: World) -> None:
    from vmsentinel.os.linux.views.files import FileNamer
    from vmsentinel.os.linux.views.memory_maps import MapReader

    maps = MapReader(w.reader, FileNamer(w.reader))
    maps.vma_addresses(w.mm, [])
    maps.maps(3, w.mm)


def _tasks_view(w: World) -> None:
    from vmsentinel.os.linux.views.tasks import TaskReader

    reader = TaskReader(w.reader)
    sweep = reader.sweep(with_paths=True)
    reader.sweep(with_paths=False)  # the quick sweep, which keeps what the full one read
    for task in sweep.tasks[:8]:
        with tolerate():
            mm = w.reader.u64(task.address + 0x40)
            if mm:
                reader.user_space(mm).read(0x400000, 16)


def _sockets_view(w: World) -> None:
    from vmsentinel.os.linux.views.files import FileNamer, FileReader
    from vmsentinel.os.linux.views.sockets import SocketReader

    files = FileReader(w.reader, FileNamer(w.reader))
    open_files = [files.open_files(i, task) for i, task in enumerate(w.tasks)]
    SocketReader(w.reader).sockets(open_files)


def _modules_view(w: World) -> None:
    from vmsentinel.os.linux.views.modules import ModuleReader

    reader = ModuleReader(w.reader)
    for module in reader.sweep().modules[:16]:
        with tolerate():
            reader.memory_ranges(module.address)


# -- ISF ---------------------------------------------------------------------------------------------

_HOSTILE_JSON: list[Any] = [
    None,
    True,
    0,
    -1,
    1 << 70,
    -(1 << 70),
    1.5,
    float("nan"),
    "",
    "x",
    "0x10",
    "Linux version 1 2",
    [],
    [1, "a"],
    {},
    {"address": "12"},
    {"kind": "struct", "name": "task_struct"},
    {"offset": "8", "type": {}},
]


def _hostile(rng: random.Random) -> Any:
    """A fresh copy of a hostile value (a shared one, mutated later, would make the tree a cycle)."""
    return json.loads(json.dumps(rng.choice(_HOSTILE_JSON)))


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def _json_mutate(rng: random.Random, doc: Any) -> Any:
    """Replace, delete or rename one node somewhere in a JSON tree; return the (new) root."""
    if not isinstance(doc, dict | list) or not doc or rng.random() < 0.1:
        return _hostile(rng)
    parent: Any = doc
    key: Any = None
    node: Any = doc
    for _ in range(1 + int(rng.expovariate(0.3))):
        if not isinstance(node, dict | list) or not node:
            break
        parent = node
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        node = node[key]
    if key is None:
        return _hostile(rng)
    pick = rng.random()
    if pick < 0.55:
        parent[key] = _hostile(rng)
    elif pick < 0.7 and isinstance(parent, dict):
        del parent[key]
    elif pick < 0.8 and isinstance(parent, dict):
        parent[str(key) + rng.choice(("", "x", "."))] = parent.pop(key)
    elif pick < 0.9 and isinstance(node, int | float) and not isinstance(node, bool):
        parent[key] = rng.choice((-node, node + 1, node * 4096, -1, 1 << 64, str(node)))
    else:
        parent[key] = json.loads(_deep(rng.choice((2, 16, 64))))
    return doc


def _isf_doc() -> dict[str, Any]:
    from vmsentinel.os.linux.profile.btf import Btf
    from vmsentinel.os.linux.profile.isf import to_isf
    from vmsentinel.os.linux.profile.profile import KernelIdentity, KernelProfile, SymbolTable
    from vmsentinel.os.linux.profile.types import BtfTypes

    symbols = {"linux_banner": 0xFFFFFFFF82000000, "init_task": 0xFFFFFFFF82400000, "modules": 0xFFFFFFFF82500000}
    profile = KernelProfile(
        KernelIdentity("Linux version 9.9.9-fuzz (gcc) #1 SMP", "9.9.9-fuzz", None),
        BtfTypes(Btf(views_btf()), "synthetic"),
        SymbolTable(list(symbols), "DDD", list(symbols.values())),
        {"symbols": "kallsyms", "types": "BTF"},
    )
    doc = to_isf(profile)
    doc["metadata"]["producer"]["datetime"] = "2025-01-01T00:00:00"
    return doc


def _build_isf() -> Built:
    from vmsentinel.os.linux.profile.isf import profile_from_isf

    doc = _isf_doc()
    plain = json.dumps(doc, separators=(",", ":")).encode()
    seeds = [Seed(plain, label="json"), Seed(lzma.compress(plain, preset=0), label="json.xz")]
    queries = [(s, f) for s in ("task_struct", "mm_struct", "module", "cred", "sock") for f in doc["user_types"][s]["fields"]]
    queries += [("task_struct", "tasks.next"), ("mm_struct", "mm_mt.ma_root"), ("nope", "x")]
    path = scratch_file("profile.json")
    xz_path = scratch_file("profile.json.xz")

    def run(data: bytes) -> None:
        target = xz_path if data[:6] == b"\xfd7zXZ\x00" else path
        target.write_bytes(data)
        profile = profile_from_isf(target)
        types = profile.types
        assert types is not None
        for struct_name, member in queries:
            with tolerate():
                types.member_offset(struct_name, member)
            types.has_member(struct_name, member)
        for struct_name in ("task_struct", "module", "maple_node", "nope"):
            with tolerate():
                types.struct_size(struct_name)
            types.has_struct(struct_name)
        for enum in ("pid_type", "mod_mem_type", "nope"):
            with tolerate():
                types.enum_values(enum)
        types.count()
        for name in ("init_task", "linux_banner", "nope"):
            with tolerate():
                profile.symbol(name)
        profile.symbols.by_address(1 << 63)
        profile.identity.key  # noqa: B018 - the banner's hash names the profile

    def structured(rng: random.Random, seed: Seed) -> bytes:
        mutated = _json_mutate(rng, json.loads(plain))
        for _ in range(int(rng.expovariate(1.5))):
            mutated = _json_mutate(rng, mutated)
        text = json.dumps(mutated, separators=(",", ":")).encode()
        if rng.random() < 0.03:
            text = _deep(rng.choice((1000, 5000, 100_000))).encode()
        return lzma.compress(text, preset=0) if seed.label == "json.xz" else text

    return Built(seeds, run, structured, structured_share=0.6)


# -- bundle tar ----------------------------------------------------------------------------------------

_POLICY_FILES = {
    "policy.toml": b'detectors = ["hidden_process"]\n[yara]\nrules = ["rules/a.yar"]\n',
    "rules/a.yar": b'rule a { strings: $a = "evil" condition: $a }\n',
    "keys/signer.pub": b"untrusted comment: x\nRWQ...\n",
}


def _bundle_bytes(
    files: dict[str, bytes], manifest: Any, kinds: dict[str, bytes] | None = None, fmt: int = tarfile.PAX_FORMAT
) -> bytes:
    import hashlib

    from vmsentinel.trust.bundle import MANIFEST

    if manifest is None:
        manifest = {
            "kind": "vmsentinel-policy",
            "version": 1,
            "files": {n: hashlib.sha256(d).hexdigest() for n, d in files.items()},
        }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for name, data in [(MANIFEST, json.dumps(manifest).encode()), *files.items()]:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            kind = (kinds or {}).get(name)
            if kind is not None:
                info.type, info.size, info.linkname = kind, 0, "policy.toml"
            tar.addfile(info, io.BytesIO(data) if info.size else None)
    return buffer.getvalue()


def _build_bundle() -> Built:
    import hashlib

    from vmsentinel.trust.bundle import read_bundle

    seeds = [
        Seed(_bundle_bytes(_POLICY_FILES, None), label="pax"),
        Seed(_bundle_bytes(_POLICY_FILES, None, fmt=tarfile.GNU_FORMAT), label="gnu"),
    ]

    def run(data: bytes) -> None:
        read_bundle(data, "fuzz.vmspolicy")

    def structured(rng: random.Random, seed: Seed) -> bytes:
        files = dict(_POLICY_FILES)
        kinds: dict[str, bytes] = {}
        manifest: Any = None
        pick = rng.random()
        if pick < 0.3:
            good = {
                "kind": "vmsentinel-policy",
                "version": 1,
                "files": {n: hashlib.sha256(d).hexdigest() for n, d in files.items()},
            }
            manifest = _json_mutate(rng, good)
        elif pick < 0.5:
            name = rng.choice(
                (
                    "../escape",
                    "/abs",
                    "a/../../b",
                    "policy.toml",
                    "x" * 300,
                    "dir/",
                    "é\udcff".encode("utf-8", "surrogateescape").decode("latin-1"),
                )
            )
            files[name] = b"data"
        elif pick < 0.7:
            kinds[rng.choice(list(files))] = rng.choice(
                (tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE, b"Z")
            )
        elif pick < 0.8:
            files.pop("policy.toml")
        else:
            files = {f"f{i}": b"" for i in range(rng.choice((10, 200)))}
        fmt = tarfile.GNU_FORMAT if seed.label == "gnu" else tarfile.PAX_FORMAT
        return (
            Mutator([seed]).mutate(rng, Seed(_bundle_bytes(files, manifest, kinds, fmt)))
            if rng.random() < 0.3
            else _bundle_bytes(files, manifest, kinds, fmt)
        )

    return Built(seeds, run, structured, structured_share=0.3)


# -- allowlist archives ------------------------------------------------------------------------------


def tiny_elf(etype: int = 2, interp: bool = True) -> bytes:
    """A small ELF64 executable (or ET_REL object): a header, program headers, some code."""
    phdrs = [(1, 5, 0, 0x400000, 0x300, 0x400)] + ([(3, 4, 0x200, 0x400200, 0x10, 0x10)] if interp else [])
    if etype == 1:
        phdrs = []
    header = struct.pack(
        "<16sHHIQQQIHHHHHH",
        b"\x7fELF\x02\x01\x01",
        etype,
        62,
        1,
        0x400100,
        64 if phdrs else 0,
        0,
        0,
        64,
        56,
        len(phdrs),
        64,
        0,
        0,
    )
    body = header + b"".join(struct.pack("<IIQQQQQQ", t, f, o, v, v, fs, ms, 0x1000) for t, f, o, v, fs, ms in phdrs)
    body += bytes(0x200 - len(body)) + b"/lib/ld.so\0".ljust(0x10, b"\0")
    return body + bytes(range(256))[: 0x300 - len(body)]


def _newc(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """A newc cpio archive: (name, mode, data, nlink) entries, then the trailer."""
    out = bytearray()
    for ino, (name, mode, data, nlink) in enumerate([*entries, ("TRAILER!!!", 0, b"", 1)], 1):
        namez = name.encode() + b"\0"
        fields = [ino if nlink < 2 else 99, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(namez), 0]
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + namez
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def _tar_bytes(fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data in (
            ("./usr/bin/sh", tiny_elf()),
            ("./usr/lib/" + "l" * 120 + ".so", tiny_elf(3, False)),
            ("./etc/motd", b"hi\n"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            if fmt == tarfile.PAX_FORMAT:
                info.pax_headers = {"comment": "fuzz", "mtime": "1.5"}
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("./usr/bin/sh2")
        link.type, link.linkname = tarfile.LNKTYPE, "./usr/bin/sh"
        tf.addfile(link)
        d = tarfile.TarInfo("./usr/share")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
    return buf.getvalue()


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data
        out += b"\n" if len(data) % 2 else b""
    return out


def _collector() -> Any:
    from vmsentinel.trust.allowlist_build import MAX_ENTRIES, _Collector

    return _Collector("fuzz", lambda _message: None, MAX_ENTRIES)


def _build_cpio() -> Built:
    from vmsentinel.trust.archives import read_initramfs
    from vmsentinel.trust.streams import BufferSource

    reg = 0o100755
    module = gzip.compress(tiny_elf(1), mtime=0)
    archive = _newc(
        [
            ("usr", 0o40755, b"", 1),
            ("usr/bin/sh", reg, tiny_elf(), 1),
            ("usr/bin/link1", reg, b"", 2),
            ("usr/bin/link2", reg, tiny_elf(3, False), 2),
            ("lib/modules/9.9/kernel/fuzz.ko.gz", reg, module, 1),
            ("../../etc/passwd", reg, b"root:x:0:0\n", 1),
            ("dev/null", 0o20666, b"", 1),
        ]
    )
    seeds = [
        Seed(archive, label="newc"),
        Seed(_newc([("early", reg, b"microcode", 1)]) + bytes(512) + gzip.compress(archive, mtime=0), label="newc + gzip"),
        Seed(lzma.compress(archive, preset=0), label="xz"),
    ]

    def run(data: bytes) -> None:
        read_initramfs(BufferSource(data), _collector())

    return Built(seeds, run)


def _build_deb() -> Built:
    from vmsentinel.trust.archives import read_deb
    from vmsentinel.trust.streams import BufferSource

    pax, gnu = _tar_bytes(tarfile.PAX_FORMAT), _tar_bytes(tarfile.GNU_FORMAT)
    control = gzip.compress(b"Package: fuzz\n", mtime=0)

    def deb(name: str, data: bytes) -> bytes:
        return _ar([("debian-binary", b"2.0\n"), ("control.tar.gz", control), (name, data)])

    seeds = [
        Seed(deb("data.tar", pax), label="data.tar pax"),
        Seed(deb("data.tar", gnu), label="data.tar gnu"),
        Seed(deb("data.tar.gz", gzip.compress(gnu, mtime=0)), label="data.tar.gz"),
    ]

    def run(data: bytes) -> None:
        read_deb(BufferSource(data), _collector())

    return Built(seeds, run)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("btf", "os/linux/profile/btf.py: Btf, its queries, the ISF export of it", _build_btf, 1.0),
        Target("kallsyms", "os/linux/profile/kallsyms.py: locate, decode; SymbolTable", _build_kallsyms, 0.5),
        Target("elf-core", "memory/elf_core.py: _parse (pyelftools); MappedFileMemory reads", _build_elf_core, 0.7),
        Target("lime", "memory/lime.py: open_lime; MappedFileMemory reads", _build_lime, 1.0),
        Target("paging-4", "arch/x86_64.py: translate, read, walk_mappings (4-level)", _build_paging(4), 0.4),
        Target("paging-5", "arch/x86_64.py: translate, read, walk_mappings (5-level)", _build_paging(5), 0.4),
        Target("paging-32", "arch/x86_32.py: translate, read, walk_mappings (two levels, PSE)", _build_paging32(False), 0.3),
        Target("paging-pae", "arch/x86_32.py: translate, read, walk_mappings (PAE)", _build_paging32(True), 0.3),
        Target(
            "nt-views", "os/windows/views: processes, client-ID table, cross-view, modules, services, IDT", _build_nt_views, 0.5
        ),
        Target(
            "nt-guest",
            "os/windows/guest.py: WindowsGuest's snapshot (driver objects, the process scan, code pages, regions)",
            _build_nt_guest,
            0.5,
        ),
        Target("walk-list", "os/linux/reader.py: list_walk", _world_target(("tasks",), _list_walks), 1.0),
        Target("walk-hlist", "os/linux/reader.py: hlist_walk", _world_target(("tasks", "pids"), _hlist_walks), 1.0),
        Target("walk-xarray", "os/linux/reader.py: xarray_entries", _world_target(("pids",), _xarray_walks), 1.0),
        Target(
            "walk-maple", "os/linux/views/memory_maps.py: the maple-tree walk, maps", _world_target(("maple",), _maple_walks), 1.0
        ),
        Target("view-tasks", "os/linux/views/tasks.py: TaskReader.sweep", _world_target((), _tasks_view), 0.8),
        Target("view-modules", "os/linux/views/modules.py: ModuleReader.sweep", _world_target(("modules",), _modules_view), 1.0),
        Target(
            "view-sockets",
            "os/linux/views/files.py, sockets.py: open files, sockets",
            _world_target(("files", "tasks"), _sockets_view),
            1.0,
        ),
        Target("isf", "os/linux/profile/isf.py: profile_from_isf; IsfTypes queries", _build_isf, 0.8),
        Target("bundle", "trust/bundle.py: read_bundle (tar, manifest)", _build_bundle, 1.0),
        Target("allowlist-cpio", "trust/archives.py: read_initramfs (newc, compressed); ELF pages", _build_cpio, 1.0),
        Target("allowlist-deb", "trust/archives.py: read_deb (ar, tar, pax, gzip); ELF pages", _build_deb, 1.0),
    )
}


# ------------------------------------------------------------------------------------------------
# the engine


class CaseTimeout(BaseException):
    """Raised by the per-case timer. A BaseException, so that no parser's ``except Exception`` (pyelftools
    wrappers catch broadly) can swallow it and make a hang look like a refusal."""


@dataclass
class Failure:
    kind: str  # "crash" or "hang"
    target: str
    case: int
    error: str  # type and message
    where: str  # the innermost frame in vmsentinel (or the last frame)
    trace: str
    data: bytes = field(repr=False)


@dataclass
class Stats:
    target: str
    cases: int = 0
    ok: int = 0
    rejected: int = 0
    crashes: int = 0
    hangs: int = 0
    seconds: float = 0.0
    slowest: float = 0.0
    failures: list[Failure] = field(default_factory=list)  # the first of each distinct kind
    seed_problems: list[str] = field(default_factory=list)  # a seed that does not parse: the target is broken
    rejected_by: dict[str, int] = field(default_factory=dict)

    def merge(self, other: Stats) -> None:
        self.cases += other.cases
        self.ok += other.ok
        self.rejected += other.rejected
        self.crashes += other.crashes
        self.hangs += other.hangs
        self.seconds += other.seconds
        self.slowest = max(self.slowest, other.slowest)
        known = {(f.kind, f.error.split(":")[0], f.where) for f in self.failures}
        for f in other.failures:
            if (f.kind, f.error.split(":")[0], f.where) not in known and len(self.failures) < 10:
                self.failures.append(f)
        self.seed_problems.extend(other.seed_problems)
        for k, v in other.rejected_by.items():
            self.rejected_by[k] = self.rejected_by.get(k, 0) + v


def _where(tb: Any) -> str:
    frames = traceback.extract_tb(tb)
    ours = [f for f in frames if "vmsentinel" in f.filename and "fuzz" not in f.filename] or frames
    f = ours[-1]
    return f"{f.filename.split('/src/')[-1]}:{f.lineno} ({f.name})"


_built: dict[str, Built] = {}


def built(target: Target) -> Built:
    if target.name not in _built:
        _built[target.name] = target.build()
    return _built[target.name]


def case_input(target: Target, seed: int, case: int) -> bytes:
    """The input of case ``case``: the seeds themselves first, then mutants, each from its own generator."""
    b = built(target)
    if case < len(b.seeds):
        return b.seeds[case].data
    rng = random.Random(f"{seed}/{target.name}/{case}")
    chosen = rng.choice(b.seeds)
    if b.mutate is not None and rng.random() < b.structured_share:
        return b.mutate(rng, chosen)
    return _mutators(target.name, b).mutate(rng, chosen)


_mutator_cache: dict[str, Mutator] = {}


def _mutators(name: str, b: Built) -> Mutator:
    if name not in _mutator_cache:
        _mutator_cache[name] = Mutator(b.seeds)
    return _mutator_cache[name]


@contextlib.contextmanager
def _alarm() -> Iterator[bool]:
    """SIGALRM raising CaseTimeout while in the block (only the main thread can take signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return

    def fire(_signum: int, _frame: Any) -> None:
        raise CaseTimeout

    old = signal.signal(signal.SIGALRM, fire)
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def fuzz(
    target: Target,
    cases: int,
    seed: int = 0,
    timeout: float = 2.0,
    first_case: int = 0,
    max_failures: int = 5,
) -> Stats:
    """Run cases ``first_case .. first_case + cases - 1`` of ``target``; classify each outcome."""
    b = built(target)
    stats = Stats(target.name)
    distinct: set[tuple[str, str, str]] = set()
    started = time.perf_counter()
    with _alarm() as timed:
        for case in range(first_case, first_case + cases):
            data = case_input(target, seed, case)
            outcome, error, tb = "ok", "", None
            t0 = time.perf_counter()
            try:
                if timed:
                    signal.setitimer(signal.ITIMER_REAL, timeout)
                try:
                    b.run(data)
                finally:
                    if timed:
                        signal.setitimer(signal.ITIMER_REAL, 0)
            except CaseTimeout as exc:
                outcome, error, tb = "hang", f"no answer within {timeout} s", exc.__traceback__
            except VmSentinelError as exc:
                outcome = "rejected"
                name = type(exc).__name__
                stats.rejected_by[name] = stats.rejected_by.get(name, 0) + 1
                if case < len(b.seeds):
                    stats.seed_problems.append(f"seed {case} ({b.seeds[case].label}) is refused: {exc}")
            except (Exception, RecursionError) as exc:
                outcome, error, tb = "crash", f"{type(exc).__name__}: {str(exc)[:300]}", exc.__traceback__
            took = time.perf_counter() - t0
            stats.slowest = max(stats.slowest, took)
            if outcome != "hang" and took > timeout:
                outcome, error = "hang", f"took {took:.2f} s (bound {timeout} s)"
            stats.cases += 1
            if outcome == "ok":
                stats.ok += 1
            elif outcome == "rejected":
                stats.rejected += 1
            else:
                if outcome == "crash":
                    stats.crashes += 1
                else:
                    stats.hangs += 1
                where = _where(tb) if tb is not None else "?"
                key = (outcome, error.split(":")[0], where)
                if key not in distinct and len(stats.failures) < max_failures:
                    distinct.add(key)
                    trace = "".join(traceback.format_tb(tb)) if tb is not None else ""
                    stats.failures.append(Failure(outcome, target.name, case, error, where, trace, data))
    stats.seconds = time.perf_counter() - started
    return stats
