"""Naming files the way the kernel does, on synthetic dentries and mounts:
paths across mounts, deleted files, pseudo filesystems, and dentry loops."""

from __future__ import annotations

import pytest
from tests.synthetic import DIRECT_MAP, synthetic_kernel_reader
from tests.synthetic_kernel import vfs_btf

from vmsentinel.errors import ReadError
from vmsentinel.os.linux.views.files import FileNamer

DIRECT = DIRECT_MAP


class Vfs:
    def __init__(self) -> None:
        self.mem, reader = synthetic_kernel_reader(vfs_btf(), ram=0x800000)
        self.namer = FileNamer(reader)
        self.next = 0x1000

    def alloc(self, size: int = 0x80) -> int:
        addr = DIRECT + self.next
        self.next += (size + 0x3F) & ~0x3F
        return addr

    def put(self, vaddr: int, value: int) -> None:
        self.mem.write_u64(vaddr - DIRECT, value)

    def string(self, text: str) -> int:
        addr = self.alloc(len(text) + 1)
        self.mem.write(addr - DIRECT, text.encode() + b"\0")
        return addr

    def dentry(self, name: str, parent: int | None, hashed: bool = True) -> int:
        d = self.alloc()
        self.put(d + 24, parent if parent is not None else d)
        self.put(d + 16, d if hashed else 0)  # d_hash.pprev: NULL once unhashed (deleted)
        self.put(d + 40, self.string(name))
        return d

    def mount(self, root: int, parent: int | None, mountpoint: int | None) -> int:
        m = self.alloc()
        self.put(m + 16, parent if parent is not None else m)
        self.put(m + 24, mountpoint or root)
        self.put(m + 32, root)  # mnt.mnt_root
        return m

    def file(self, mount: int, dentry: int, fs: str, ino: int, mode: int = 0o100755, owner: int = 0) -> int:
        sb, fstype, inode = self.alloc(), self.alloc(), self.alloc()
        self.put(fstype, self.string(fs))
        self.put(sb + 40, fstype)
        self.put(inode, mode | owner << 32)  # i_mode, then i_uid
        self.put(inode + 40, sb)
        self.put(inode + 64, ino)
        f = self.alloc()
        self.put(f + 16, mount + 32)  # f_path.mnt -> the vfsmount inside struct mount
        self.put(f + 24, dentry)
        self.put(f + 40, inode)
        return f


def test_paths_across_mounts_deleted_files_and_pseudo_filesystems() -> None:
    v = Vfs()
    root = v.dentry("/", None)
    root_mnt = v.mount(root, None, None)
    bin_d = v.dentry("root", root)
    prog = v.dentry("programs", bin_d)
    threads = v.dentry("threads", prog)
    assert v.namer.name(v.file(root_mnt, threads, "rootfs", 12)).path == "/root/programs/threads"
    dev_d = v.dentry("dev", root)
    dev_root = v.dentry("/", None)
    dev_mnt = v.mount(dev_root, root_mnt, dev_d)
    null = v.dentry("null", dev_root)
    named = v.namer.name(v.file(dev_mnt, null, "devtmpfs", 4))
    assert named.path == "/dev/null" and named.fs == "devtmpfs" and named.inode == 4
    gone = v.dentry("payload", v.dentry("tmp", root), hashed=False)
    assert v.namer.name(v.file(root_mnt, gone, "tmpfs", 99)).path == "/tmp/payload (deleted)"
    assert v.namer.name(v.file(root_mnt, root, "sockfs", 1234)).path == "socket:[1234]"
    assert v.namer.name(v.file(root_mnt, root, "pipefs", 77)).path == "pipe:[77]"
    ev = v.dentry("[eventfd]", root)
    assert v.namer.name(v.file(root_mnt, ev, "anon_inodefs", 5)).path == "anon_inode:[eventfd]"


def test_dentry_loops_and_bad_pointers_stop_with_an_error() -> None:
    v = Vfs()
    root = v.dentry("/", None)
    mnt = v.mount(root, None, None)
    a = v.dentry("a", root)
    b = v.dentry("b", a)
    v.put(a + 24, b)  # a's parent is b, b's parent is a: never reaches the root
    with pytest.raises(ReadError, match="deeper than the limit"):
        v.namer.name(v.file(mnt, b, "rootfs", 1))
    stray = v.dentry("x", root)
    v.put(stray + 24, 0x4141414141414141)
    with pytest.raises(ReadError):
        v.namer.name(v.file(mnt, stray, "rootfs", 2))


def test_a_files_mode_and_owner_say_whether_it_is_set_uid_root() -> None:
    v = Vfs()
    root = v.dentry("/", None)
    mnt = v.mount(root, None, None)
    su = v.namer.name(v.file(mnt, v.dentry("su", root), "ext4", 20, mode=0o104755, owner=0))
    sh = v.namer.name(v.file(mnt, v.dentry("sh", root), "ext4", 21, mode=0o100755, owner=0))
    mine = v.namer.name(v.file(mnt, v.dentry("mine", root), "ext4", 22, mode=0o104755, owner=1000))
    assert [(f.path, f.mode & 0o7777, f.owner) for f in (su, sh, mine)] == [
        ("/su", 0o4755, 0),
        ("/sh", 0o755, 0),
        ("/mine", 0o4755, 1000),
    ]
