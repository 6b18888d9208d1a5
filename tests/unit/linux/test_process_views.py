"""The process-side views on synthetic memory: environments read through a process's own page tables,
ptrace links, the mounts of a namespace (list and red-black tree), and code pages compared between
processes; each also against hostile memory (loops, huge lengths, pointers to nowhere)."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest
from tests.synthetic import DIRECT_MAP, PageTableBuilder, new_memory, synthetic_kernel_reader
from tests.synthetic_kernel import BtfBuilder

from vmsentinel.arch.x86_64 import PagingAddressSpace
from vmsentinel.memory.buffer import BufferMemory
from vmsentinel.os.linux.views import environ as environ_view
from vmsentinel.os.linux.views import mounts as mounts_view
from vmsentinel.os.linux.views import page_diffs as page_diffs_view
from vmsentinel.os.linux.views import ptrace as ptrace_view
from vmsentinel.os.linux.views.environ import MAX_ENVIRON, EnvironReader
from vmsentinel.os.linux.views.files import FileNamer
from vmsentinel.os.linux.views.memory_maps import MapEntry
from vmsentinel.os.linux.views.mounts import MountReader
from vmsentinel.os.linux.views.page_diffs import FrameKinds, code_page_diffs
from vmsentinel.os.linux.views.ptrace import PT_SEIZED, PtraceReader
from vmsentinel.os.linux.views.tasks import PF_KTHREAD
from vmsentinel.os.records import Task

DIRECT = DIRECT_MAP
UNMAPPED = DIRECT + 0x7FFF000  # a kernel address past the synthetic direct map


def task(pid: int, address: int, name: str = "sleep", flags: int = 0, start: int = 0) -> Task:
    return Task(
        pid=pid,
        ppid=1,
        tgid=pid,
        name=name,
        comm=name,
        state="S",
        kernel_thread=bool(flags & PF_KTHREAD),
        flags=flags,
        uid=0,
        gid=0,
        euid=0,
        egid=0,
        suid=0,
        fsuid=0,
        cap_effective=0,
        start_time_ns=start,
        threads=(pid,),
        exe="/bin/busybox",
        cmdline=(name,),
        sources=("task_list",),
        address=address,
    )


class Heap:
    """Kernel objects laid out in the synthetic direct map."""

    def __init__(self, mem: BufferMemory, start: int = 0x10000) -> None:
        self.mem = mem
        self.next = start

    def alloc(self, size: int = 0x80) -> int:
        addr = DIRECT + self.next
        self.next += (size + 0x3F) & ~0x3F
        return addr

    def put(self, vaddr: int, value: int) -> None:
        self.mem.write_u64(vaddr - DIRECT, value)

    def put32(self, vaddr: int, value: int) -> None:
        self.mem.write(vaddr - DIRECT, value.to_bytes(4, "little", signed=value < 0))

    def string(self, text: str) -> int:
        addr = self.alloc(len(text) + 1)
        self.mem.write(addr - DIRECT, text.encode() + b"\0")
        return addr


# -- environments ----------------------------------------------------------------------------------


def environ_btf() -> bytes:
    b = BtfBuilder()
    u64 = b.int_("long unsigned int", 8)
    vptr = b.ptr(0)
    b.struct("task_struct", 64, [("mm", vptr, 0, 0)])
    b.struct("mm_struct", 64, [("env_start", u64, 64, 0), ("env_end", u64, 128, 0)])
    return b.build()


USER = 0x7FFF0000  # where the synthetic process keeps its environment


class EnvWorld:
    def __init__(self) -> None:
        self.mem, self.reader = synthetic_kernel_reader(environ_btf())
        self.heap = Heap(self.mem)
        self.pt = PageTableBuilder(self.mem, pool_start=0x800000, pool_end=0x900000)
        self.space = PagingAddressSpace(self.mem, self.pt.root)
        self.frames = 0x600000
        self.envs = EnvironReader(self)  # type: ignore[arg-type]  # needs only .r and .user_space
        self.spaces_made = 0

    @property
    def r(self) -> Any:
        return self.reader

    def user_space(self, mm: int) -> PagingAddressSpace:
        self.spaces_made += 1
        return self.space

    def page(self, vaddr: int, data: bytes = b"") -> None:
        self.pt.map(vaddr, self.frames, user=True)
        self.mem.write(self.frames, data.ljust(4096, b"\0"))
        self.frames += 0x1000

    def process(self, pid: int, start: int, end: int, flags: int = 0, mm: int | None = None) -> Task:
        t = self.heap.alloc()
        if mm is None:
            mm = self.heap.alloc()
            self.heap.put(mm + 8, start)
            self.heap.put(mm + 16, end)
        self.heap.put(t, mm)
        return task(pid, t, flags=flags)


def test_an_environment_is_read_through_the_process_page_tables() -> None:
    w = EnvWorld()
    data = b"HOME=/\0LD_PRELOAD=/tmp/x.so\0TERM=linux\0junk written by setproctitle\0"
    w.page(USER, data)
    t = w.process(10, USER, USER + len(data))
    kthread = w.process(2, USER, USER + len(data), flags=PF_KTHREAD)
    sweep = w.envs.sweep([t, kthread])
    assert not sweep.problems and list(sweep.environ) == [10]
    env = sweep.environ[10]
    assert env.complete and env.variables == ("HOME=/", "LD_PRELOAD=/tmp/x.so", "TERM=linux", "junk written by setproctitle")
    assert env.values("LD_PRELOAD") == ["/tmp/x.so"] and ("junk written by setproctitle", "") in env.pairs()
    assert [(r.pid, r.key) for r in sweep.records()][:2] == [(10, "HOME"), (10, "LD_PRELOAD")]


def test_a_page_not_present_leaves_a_gap_and_the_environment_incomplete() -> None:
    w = EnvWorld()
    w.page(USER, b"\0" * 4091 + b"A=1\0B")  # B=2 runs on into the next page, which is not present
    w.page(USER + 0x2000, b"C=3\0")
    t = w.process(11, USER + 4091, USER + 0x2000 + 4)
    env = w.envs.sweep([t]).environ[11]
    assert not env.complete and env.variables == ("A=1", "B", "C=3")


def test_hostile_areas_are_bounded_and_reported_never_raised() -> None:
    w = EnvWorld()
    w.page(USER, b"X=1\0")
    backwards = w.process(12, USER + 100, USER)
    huge = w.process(13, USER, USER + (1 << 35))  # 32 GiB "environment": only the first MiB is looked at
    kernel_half = w.process(14, DIRECT, DIRECT + 16)
    lost_mm = w.process(15, 0, 0, mm=UNMAPPED)
    no_mm = w.process(16, 0, 0, mm=0)
    sweep = w.envs.sweep([backwards, huge, kernel_half, lost_mm, no_mm])
    assert list(sweep.environ) == [13]
    assert sweep.environ[13].variables == ("X=1",) and not sweep.environ[13].complete
    text = " ".join(sweep.problems)
    assert "pid 12: implausible" in text and "pid 14: implausible" in text and "pid 15: environment area unreadable" in text
    assert f"only the first {MAX_ENVIRON} read" in text and "pid 16" not in text  # a zombie has no mm: nothing to say


def test_too_many_entries_are_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(environ_view, "MAX_VARIABLES", 3)
    w = EnvWorld()
    data = b"".join(f"V{i}={i}\0".encode() for i in range(10))
    w.page(USER, data)
    sweep = w.envs.sweep([w.process(17, USER, USER + len(data))])
    assert sweep.environ[17].variables == ("V0=0", "V1=1", "V2=2") and "more than 3" in sweep.problems[0]


def test_an_unmoved_environment_is_not_read_again_until_a_full_sweep() -> None:
    w = EnvWorld()
    w.page(USER, b"A=1\0")
    t = w.process(18, USER, USER + 4)
    assert w.envs.sweep([t]).environ[18].variables == ("A=1",)
    w.mem.write(w.frames - 0x1000, b"B=2\0")
    assert w.envs.sweep([t], everything=False).environ[18].variables == ("A=1",) and w.spaces_made == 1
    assert w.envs.sweep([t], everything=True).environ[18].variables == ("B=2",) and w.spaces_made == 2


# -- ptrace ------------------------------------------------------------------------------------------


def ptrace_btf() -> bytes:
    b = BtfBuilder()
    i32, u32 = b.int_("int", 4, signed=True), b.int_("unsigned int", 4)
    char = b.int_("char", 1, signed=True)
    vptr = b.ptr(0)
    comm = b.array(char, 16, i32)
    b.struct(
        "task_struct",
        64,
        [
            ("pid", i32, 0, 0),
            ("tgid", i32, 32, 0),
            ("ptrace", u32, 64, 0),
            ("comm", comm, 128, 0),
            ("parent", vptr, 256, 0),
            ("real_parent", vptr, 320, 0),
        ],
    )
    return b.build()


class PtraceWorld:
    def __init__(self) -> None:
        self.mem, reader = synthetic_kernel_reader(ptrace_btf())
        self.heap = Heap(self.mem)
        self.reader = PtraceReader(reader)

    def task(self, pid: int, tgid: int, name: str, ptrace: int = 0, parent: int = 0, real: int = 0) -> int:
        t = self.heap.alloc(64)
        self.heap.put32(t, pid)
        self.heap.put32(t + 4, tgid)
        self.heap.put32(t + 8, ptrace)
        self.mem.write(t + 16 - DIRECT, name.encode()[:15] + b"\0")
        self.heap.put(t + 32, parent)
        self.heap.put(t + 40, real or parent)
        return t


def test_traced_threads_and_their_tracers() -> None:
    w = PtraceWorld()
    init = w.task(1, 1, "init")
    tracer = w.task(50, 50, "gdb", parent=init)
    plain = w.task(60, 60, "sleep", parent=init)
    leader = w.task(70, 70, "victim", ptrace=1, parent=tracer, real=init)
    thread = w.task(71, 70, "victim", ptrace=1 | PT_SEIZED, parent=tracer, real=init)
    sweep = w.reader.sweep([init, tracer, plain, thread, leader])
    assert not sweep.problems
    assert [(x.tracee, x.tracee_tgid, x.tracer, x.tracer_name, x.real_parent, x.seized) for x in sweep.links] == [
        (70, 70, 50, "gdb", 1, False),
        (71, 70, 50, "gdb", 1, True),
    ]


def test_unreadable_tasks_and_tracers_are_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    w = PtraceWorld()
    no_tracer = w.task(80, 80, "a", ptrace=1, parent=0)
    stray_tracer = w.task(81, 81, "b", ptrace=1, parent=UNMAPPED)
    sweep = w.reader.sweep([no_tracer, stray_tracer, UNMAPPED])
    assert sweep.links == [] and len(sweep.problems) == 3
    assert "thread 80 is traced" in sweep.problems[0]
    monkeypatch.setattr(ptrace_view, "MAX_THREADS", 1)
    assert "more than 1 threads" in w.reader.sweep([no_tracer, stray_tracer]).problems[-1]


# -- mounts ------------------------------------------------------------------------------------------


def mounts_btf(tree: bool) -> bytes:
    """FileNamer's types, and the mount namespace as 6.1 (a list) or 6.8+ (a red-black tree) keep it."""
    b = BtfBuilder()
    i32, u32 = b.int_("int", 4, signed=True), b.int_("unsigned int", 4)
    u64 = b.int_("long long unsigned int", 8)
    vptr = b.ptr(0)
    path = b.struct("path", 16, [("mnt", vptr, 0, 0), ("dentry", vptr, 64, 0)])
    b.struct("file", 64, [("f_path", path, 128, 0), ("f_inode", vptr, 320, 0)])
    node = b.struct("hlist_bl_node", 16, [("next", vptr, 0, 0), ("pprev", vptr, 64, 0)])
    qstr = b.struct("qstr", 16, [("hash_len", u64, 0, 0), ("name", vptr, 64, 0)])
    b.struct("dentry", 64, [("d_hash", node, 64, 0), ("d_parent", vptr, 192, 0), ("d_name", qstr, 256, 0)])
    vfsmount = b.struct("vfsmount", 24, [("mnt_root", vptr, 0, 0), ("mnt_sb", vptr, 64, 0), ("mnt_flags", i32, 128, 0)])
    b.struct("inode", 72, [("i_sb", vptr, 320, 0), ("i_ino", u64, 512, 0)])
    b.struct("super_block", 48, [("s_dev", u32, 128, 0), ("s_flags", u64, 192, 0), ("s_type", vptr, 320, 0)])
    b.struct("file_system_type", 8, [("name", vptr, 0, 0)])
    list_head = b.struct("list_head", 16, [("next", vptr, 0, 0), ("prev", vptr, 64, 0)])
    rb_node = b.struct("rb_node", 24, [("__rb_parent_color", u64, 0, 0), ("rb_right", vptr, 64, 0), ("rb_left", vptr, 128, 0)])
    rb_root = b.struct("rb_root", 8, [("rb_node", vptr, 0, 0)])
    link = ("mnt_node", rb_node, 512, 0) if tree else ("mnt_list", list_head, 512, 0)
    b.struct(
        "mount",
        128,
        [
            ("mnt_parent", vptr, 128, 0),
            ("mnt_mountpoint", vptr, 192, 0),
            ("mnt", vfsmount, 256, 0),
            link,
            ("mnt_id", i32, 768, 0),
            ("mnt_group_id", i32, 800, 0),
            ("mnt_devname", vptr, 832, 0),
            ("mnt_ns", vptr, 896, 0),
            ("mnt_master", vptr, 960, 0),
        ],
    )
    ns_common = b.struct("ns_common", 16, [("stashed", u64, 0, 0), ("inum", u32, 64, 0)])
    head = ("mounts", rb_root, 256, 0) if tree else ("list", list_head, 256, 0)
    b.struct("mnt_namespace", 64, [("ns", ns_common, 64, 0), head])
    b.struct("nsproxy", 40, [("mnt_ns", vptr, 192, 0)])
    b.struct("task_struct", 64, [("nsproxy", vptr, 0, 0)])
    return b.build()


class MountWorld:
    """rootfs at /, procfs at /proc, tmpfs at /tmp, and /tmp/empty bound over /proc/123."""

    def __init__(self, tree: bool) -> None:
        self.tree = tree
        self.mem, reader = synthetic_kernel_reader(mounts_btf(tree), ram=0x800000)
        self.heap = Heap(self.mem, 0x1000)
        self.reader = MountReader(reader, FileNamer(reader))
        self.ns = self.namespace(4026531841)
        rootfs, proc, tmpfs = self.sb("rootfs", 2), self.sb("proc", 0x16), self.sb("tmpfs", 8 << 20 | 1, readonly=True)
        root = self.dentry("/", None)
        proc_root, tmp_root = self.dentry("/", None), self.dentry("/", None)
        self.root = self.mount(1, root, None, None, rootfs, "rootfs", flags=0x1000)  # shared, peer group 1
        self.heap.put32(self.root + 100, 1)
        self.proc = self.mount(22, proc_root, self.root, self.dentry("proc", root), proc, "proc", flags=0x27)
        self.tmp = self.mount(27, tmp_root, self.root, self.dentry("tmp", root), tmpfs, "tmpfs")
        self.bind = self.mount(28, self.dentry("empty", tmp_root), self.proc, self.dentry("123", proc_root), tmpfs, "tmpfs")
        self.heap.put(self.bind + 120, self.root)  # a slave of the root's peer group
        self.link(self.ns, [self.root, self.proc, self.tmp, self.bind])

    def namespace(self, inum: int) -> int:
        ns = self.heap.alloc(64)
        self.heap.put32(ns + 16, inum)
        return ns

    def sb(self, fs: str, dev: int, readonly: bool = False) -> int:
        sb, fstype = self.heap.alloc(48), self.heap.alloc(8)
        self.heap.put32(sb + 16, dev)
        self.heap.put(sb + 24, 1 if readonly else 0)
        self.heap.put(fstype, self.heap.string(fs))
        self.heap.put(sb + 40, fstype)
        return sb

    def dentry(self, name: str, parent: int | None) -> int:
        d = self.heap.alloc(64)
        self.heap.put(d + 24, parent if parent is not None else d)
        self.heap.put(d + 16, d)  # hashed
        self.heap.put(d + 40, self.heap.string(name))
        return d

    def mount(
        self, mount_id: int, root: int, parent: int | None, mountpoint: int | None, sb: int, source: str, flags: int = 0
    ) -> int:
        m = self.heap.alloc(128)
        self.heap.put32(m + 48, flags)
        self.heap.put(m + 16, parent if parent is not None else m)
        self.heap.put(m + 24, mountpoint or root)
        self.heap.put(m + 32, root)
        self.heap.put(m + 40, sb)
        self.heap.put32(m + 96, mount_id)
        self.heap.put(m + 104, self.heap.string(source))
        self.heap.put(m + 112, self.ns)
        return m

    def link(self, ns: int, mounts: list[int]) -> None:
        if self.tree:  # root in the middle, the others down the left and right
            middle = len(mounts) // 2
            self.heap.put(ns + 32, mounts[middle] + 64)
            for left, parent in pairwise(mounts[: middle + 1]):
                self.heap.put(parent + 64 + 16, left + 64)
            for parent, right in pairwise(mounts[middle:]):
                self.heap.put(parent + 64 + 8, right + 64)
        else:
            nodes = [ns + 32, *(m + 64 for m in mounts)]
            for a, b in zip(nodes, [*nodes[1:], nodes[0]], strict=True):
                self.heap.put(a, b)
                self.heap.put(b + 8, a)

    def process(self, pid: int, ns: int | None) -> Task:
        t, nsproxy = self.heap.alloc(64), self.heap.alloc(40)
        self.heap.put(t, nsproxy if ns is not None else 0)
        self.heap.put(nsproxy + 24, ns or 0)
        return task(pid, t)


@pytest.mark.parametrize("tree", [False, True], ids=["list-6.1", "rbtree-6.8"])
def test_mounts_with_their_mountpoints_roots_and_filesystems(tree: bool) -> None:
    w = MountWorld(tree)
    sweep = w.reader.sweep([w.process(1, w.ns), w.process(2, w.ns), w.process(3, None)])
    assert not sweep.problems
    assert [(m.namespace, m.mount_id, m.parent_id, m.mountpoint, m.root, m.fs, m.source) for m in sweep.mounts] == [
        (4026531841, 1, 1, "/", "/", "rootfs", "rootfs"),
        (4026531841, 22, 1, "/proc", "/", "proc", "proc"),
        (4026531841, 27, 1, "/tmp", "/", "tmpfs", "tmpfs"),
        (4026531841, 28, 22, "/proc/123", "/empty", "tmpfs", "tmpfs"),
    ]
    assert [(m.options, m.dev, m.propagation, m.sb_options) for m in sweep.mounts] == [
        ("rw", "0:2", "shared:1", "rw"),
        ("rw,nosuid,nodev,noexec,relatime", "0:22", "", "rw"),
        ("ro", "8:1", "", "ro"),  # its filesystem is read-only
        ("ro", "8:1", "master:1", "ro"),
    ]


@pytest.mark.parametrize("tree", [False, True], ids=["list-6.1", "rbtree-6.8"])
def test_loops_foreign_mounts_and_stray_pointers_are_problems(tree: bool) -> None:
    w = MountWorld(tree)
    if tree:  # the rightmost node's left child is the root of the tree: a loop
        w.heap.put(w.bind + 64 + 16, w.tmp + 64)
    else:  # the last mount's next is the second: round and round without the head
        w.heap.put(w.bind + 64, w.proc + 64)
    other = w.namespace(99)
    w.heap.put(w.tmp + 112, other)  # a mount of another namespace on this one's list
    w.heap.put(w.bind + 16, UNMAPPED)  # its parent is nowhere
    w.heap.put(w.proc + 120, UNMAPPED)  # its master too: the mount stands, its propagation is not known
    problems: list[str] = []
    mounts = w.reader.mounts(w.ns, problems)
    assert [(m.mount_id, m.options) for m in mounts] == [(1, "rw"), (22, "")]
    text = " ".join(problems)
    assert ("looping node" in text) if tree else ("loops back" in text)
    assert "belongs to another namespace" in text and "mount 28" in text
    assert w.reader.mounts(UNMAPPED, problems) == [] and "mount namespace" in problems[-1]


def test_a_tree_larger_than_the_bound_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mounts_view, "MAX_MOUNTS", 2)
    w = MountWorld(True)
    problems: list[str] = []
    assert len(w.reader.mounts(w.ns, problems)) <= 2 and "more than 2 mounts" in problems[0]


def test_namespaces_are_met_once_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    w = MountWorld(False)
    second = w.namespace(4026532000)
    problems: list[str] = []
    procs = [w.process(1, w.ns), w.process(2, second), w.process(3, w.ns), task(4, UNMAPPED)]
    assert w.reader.namespaces(procs, problems) == [w.ns, second] and "pid 4" in problems[0]
    monkeypatch.setattr(mounts_view, "MAX_NAMESPACES", 1)
    assert w.reader.namespaces(procs, []) == [w.ns]


# -- code pages compared between processes -----------------------------------------------------------

CODE = 0x400000
ORIGINAL, PATCHED, SAME_AGAIN, OTHER_FILE = 0x500000, 0x501000, 0x502000, 0x503000


def code_world() -> BufferMemory:
    mem = new_memory()
    code = bytes(range(256)) * 16
    mem.write(ORIGINAL, code)
    mem.write(PATCHED, b"\xcc" + code[1:3] + b"\x90" + code[4:])
    mem.write(SAME_AGAIN, code)
    mem.write(OTHER_FILE, b"\x00" * 4096)
    return mem


class Processes:
    def __init__(self) -> None:
        self.mem = code_world()
        self.pool = 0x200000
        self.spaces: dict[int, PagingAddressSpace] = {}
        self.maps: dict[int, list[MapEntry]] = {}

    def add(self, pid: int, frames: list[int | None], path: str = "/lib/libc.so", inode: int = 7, perms: str = "r-xp") -> None:
        pt = PageTableBuilder(self.mem, pool_start=self.pool, pool_end=self.pool + 0x10000)
        self.pool += 0x10000
        for i, frame in enumerate(frames):
            if frame is not None:
                pt.map(CODE + i * 4096, frame, user=True, writable=False)
        self.spaces[pid] = PagingAddressSpace(self.mem, pt.root)
        end = CODE + len(frames) * 4096
        self.maps[pid] = [MapEntry(pid, CODE, end, perms, 0x1000, "08:01", inode, path)]


def test_one_frame_for_everyone_is_never_read() -> None:
    p = Processes()
    for pid in (1, 2, 3):
        p.add(pid, [ORIGINAL, None])
    sweep = code_page_diffs(p.spaces, p.maps)
    assert sweep.diffs == [] and sweep.frames_read == 0 and sweep.shared_pages == 1


def test_a_patched_private_copy_is_told_from_the_file_page() -> None:
    p = Processes()
    p.add(1, [ORIGINAL])
    p.add(2, [PATCHED])
    p.add(3, [SAME_AGAIN])  # its own frame, same bytes: no difference
    p.add(4, [ORIGINAL], perms="r--p")  # not code
    p.add(5, [OTHER_FILE], inode=8)  # another file (same path, replaced): never compared with inode 7
    sweep = code_page_diffs(p.spaces, p.maps, anonymous=lambda frame: frame == PATCHED)
    assert not sweep.problems and sweep.frames_read == 3
    [diff] = sweep.diffs
    assert (diff.path, diff.inode, diff.file_offset) == ("/lib/libc.so", 7, 0x1000)
    original, patched = diff.copies
    assert original.pids == (1, 3) and original.private is False and original.first_difference == -1
    assert patched.pids == (2,) and patched.addresses == (CODE,) and patched.private is True
    assert (patched.first_difference, patched.bytes_changed, patched.observed[:4]) == (0, 2, b"\xcc\x01\x02\x90")
    assert diff.expected[:4] == bytes(range(4))


def test_the_file_page_comes_first_even_when_most_processes_hold_the_copy() -> None:
    p = Processes()
    p.add(1, [ORIGINAL])
    p.add(2, [PATCHED])
    p.add(3, [PATCHED])
    [diff] = code_page_diffs(p.spaces, p.maps, anonymous=lambda frame: frame == PATCHED).diffs
    assert [c.pids for c in diff.copies] == [(1,), (2, 3)]
    [unknown] = code_page_diffs(p.spaces, p.maps).diffs  # without struct pages: the most shared first
    assert [c.pids for c in unknown.copies] == [(2, 3), (1,)] and unknown.copies[0].private is None


def test_frames_outside_ram_and_the_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    p = Processes()
    p.add(1, [ORIGINAL, ORIGINAL])
    p.add(2, [0x40000000, PATCHED])  # its first page maps outside RAM: nothing to compare there
    monkeypatch.setattr(page_diffs_view, "MAX_FRAMES", 2)
    sweep = code_page_diffs(p.spaces, p.maps)
    assert sweep.diffs == [] and "more than 2 code frames" in sweep.problems[0]
    monkeypatch.setattr(page_diffs_view, "MAX_FRAMES", 8)
    monkeypatch.setattr(page_diffs_view, "MAX_PAGES_PER_PROCESS", 1)
    sweep = code_page_diffs(p.spaces, p.maps)
    assert sweep.diffs == [] and "more than 1 code pages" in sweep.problems[0]


def test_struct_pages_say_which_frames_are_anonymous() -> None:
    b = BtfBuilder()
    u64 = b.int_("long unsigned int", 8)
    b.struct("page", 64, [("flags", u64, 0, 0), ("compound_head", u64, 64, 0), ("mapping", u64, 192, 0)])
    mem, reader = synthetic_kernel_reader(b.build())
    vmemmap = DIRECT + 0x400000  # struct pages of the synthetic RAM, in the direct map for the test
    kinds = FrameKinds(reader)
    assert kinds.anonymous(0x1000) is None  # no vmemmap base known: no claim
    reader.location.vmemmap_base = vmemmap
    kinds = FrameKinds(reader)
    mem.write_u64(0x400000 + 1 * 64 + 24, 0xFFFF888000123401)  # pfn 1: mapping | PAGE_MAPPING_ANON
    mem.write_u64(0x400000 + 2 * 64 + 24, 0xFFFF888000123400)  # pfn 2: a file's address_space
    mem.write_u64(0x400000 + 3 * 64 + 8, vmemmap + 1 * 64 + 1)  # pfn 3: a tail page of pfn 1's folio
    assert [kinds.anonymous(f) for f in (0x1000, 0x2000, 0x3000)] == [True, False, True]
    reader.location.vmemmap_base = UNMAPPED
    assert FrameKinds(reader).anonymous(0x1000) is None
