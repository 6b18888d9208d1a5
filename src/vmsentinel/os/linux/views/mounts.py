"""Mounts of every mount namespace in use (``/proc/PID/mountinfo`` from outside).

The namespaces are the ones the processes live in (``task->nsproxy->mnt_ns``). Linux up to 6.7 keeps
a namespace's mounts on a list (``mnt_namespace.list`` of ``mount.mnt_list``), 6.8 and later in a
red-black tree (``mnt_namespace.mounts`` of ``mount.mnt_node``): the types say which. A mount's
mountpoint is the path of its ``mnt_mountpoint`` dentry under its parent mount, walked up across
mounts to the namespace's root; its root is the path of ``mnt.mnt_root`` inside its own filesystem
(not ``/`` for a bind mount of a folder). Walks are bounded and stop on loops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vmsentinel.errors import ReadError
from vmsentinel.os.declare import column
from vmsentinel.os.linux.reader import KernelReader, Walk
from vmsentinel.os.linux.views.files import FileNamer
from vmsentinel.os.records import Task

MAX_NAMESPACES = 1024
#: vfsmount.mnt_flags (include/linux/mount.h, the same from 3.x to 6.12) as mountinfo names them
MNT_READONLY, MNT_SHARED, MNT_UNBINDABLE = 0x40, 0x1000, 0x2000
MNT_OPTIONS: tuple[tuple[int, str], ...] = (
    (0x1, "nosuid"),
    (0x2, "nodev"),
    (0x4, "noexec"),
    (0x8, "noatime"),
    (0x10, "nodiratime"),
    (0x20, "relatime"),
    (0x80, "nosymfollow"),
)
SB_RDONLY = 0x1
#: super_block.s_flags as show_sb_opts() names them (after rw/ro; a filesystem's own options are its code's)
SB_OPTIONS: tuple[tuple[int, str], ...] = ((0x10, "sync"), (0x80, "dirsync"), (0x40, "mand"), (1 << 25, "lazytime"))
#: mounts per namespace at most
MAX_MOUNTS = 1 << 14


@dataclass(frozen=True, slots=True)
class Mount:
    #: the namespace's inode number (what ``readlink /proc/PID/ns/mnt`` shows)
    namespace: int = column("NS")
    mount_id: int = column("ID")
    parent_id: int = column("PARENT")
    mountpoint: str = column("MOUNTPOINT")
    #: the mount's root inside its filesystem: ``/`` unless it is a bind mount of a folder or file
    root: str = column("ROOT")
    fs: str = column("FS")
    source: str = column("SOURCE")
    address: int = column("MOUNT", hex=True, table=False)
    #: the mount options as mountinfo shows them (``rw,nosuid,relatime``)
    options: str = column("OPTIONS", default="")
    #: the filesystem's device, MAJ:MIN
    dev: str = column("DEV", table=False, default="")
    #: mount propagation (``shared:N``, ``master:N``, ``unbindable``), as mountinfo's optional fields
    propagation: str = column("PROPAGATION", table=False, default="")
    #: the superblock's generic options (``rw``, ``sync``, ``lazytime``...): not the filesystem's own
    sb_options: str = column("SB_OPTIONS", table=False, default="")


@dataclass
class MountSweep:
    mounts: list[Mount] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class MountReader:
    def __init__(self, reader: KernelReader, namer: FileNamer) -> None:
        r = self.r = reader
        self.namer = namer
        self.nsproxy = r.off("task_struct", "nsproxy")
        self.mnt_ns = r.off("nsproxy", "mnt_ns")
        self.ns_inum = r.off("mnt_namespace", "ns.inum")
        # 6.8+: a red-black tree of mounts; before: a list (6.1's mnt_namespace.mounts is a counter)
        self.tree = r.has("mount", "mnt_node") and not r.has("mnt_namespace", "list")
        if self.tree:
            self.head = r.off("mnt_namespace", "mounts")
            self.node = r.off("mount", "mnt_node")
            self.rb_left, self.rb_right = r.off("rb_node", "rb_left"), r.off("rb_node", "rb_right")
        else:
            self.head = r.off("mnt_namespace", "list")
        m = "mount"
        self.mount_mnt = r.off(m, "mnt")
        self.mnt_parent, self.mnt_mountpoint = r.off(m, "mnt_parent"), r.off(m, "mnt_mountpoint")
        self.mnt_id, self.mnt_devname, self.mount_ns = r.off(m, "mnt_id"), r.off(m, "mnt_devname"), r.off(m, "mnt_ns")
        self.mnt_root, self.mnt_sb = r.off("vfsmount", "mnt_root"), r.off("vfsmount", "mnt_sb")
        # options, device and propagation: shown when the profile has them
        self.mnt_flags = r.off("vfsmount", "mnt_flags") if r.has("vfsmount", "mnt_flags") else None
        self.s_dev = r.off("super_block", "s_dev") if r.has("super_block", "s_dev") else None
        self.s_flags = r.off("super_block", "s_flags") if r.has("super_block", "s_flags") else None
        self.group_id = r.off(m, "mnt_group_id") if r.has(m, "mnt_group_id") else None
        self.master = r.off(m, "mnt_master") if r.has(m, "mnt_master") else None
        self.s_type, self.fs_name = r.off("super_block", "s_type"), r.off("file_system_type", "name")
        self._fs_names: dict[int, str] = {}

    def namespaces(self, tasks: list[Task], problems: list[str]) -> list[int]:
        """The mount namespaces ``tasks`` live in, in the order first met."""
        found: dict[int, None] = {}
        for t in tasks:
            try:
                nsproxy = self.r.pointer(t.address + self.nsproxy)
                ns = self.r.pointer(nsproxy + self.mnt_ns) if nsproxy is not None else None
            except ReadError as exc:
                problems.append(f"pid {t.pid}: mount namespace unreadable: {exc}")
                continue
            if ns is not None and ns not in found:
                if len(found) >= MAX_NAMESPACES:
                    problems.append(f"more than {MAX_NAMESPACES} mount namespaces: the rest not read")
                    break
                found[ns] = None
        return list(found)

    def sweep(self, tasks: list[Task]) -> MountSweep:
        sweep = MountSweep()
        for ns in self.namespaces(tasks, sweep.problems):
            sweep.mounts.extend(self.mounts(ns, sweep.problems))
        return sweep

    def mounts(self, ns: int, problems: list[str]) -> list[Mount]:
        """The mounts of the namespace at ``ns``, by mount id."""
        try:
            inum = self.r.u32(ns + self.ns_inum)
            walk = (
                self._tree_walk(ns + self.head)
                if self.tree
                else self.r.list_walk(ns + self.head, "mount", "mnt_list", MAX_MOUNTS)
            )
        except ReadError as exc:
            problems.append(f"mount namespace {ns:#x}: {exc}")
            return []
        problems.extend(f"mount namespace {inum}: {p}" for p in walk.problems)
        ids: dict[int, int] = {}
        raw = []
        for mount in walk.items:
            try:
                if self.r.u64(mount + self.mount_ns) != ns:
                    problems.append(f"mount namespace {inum}: mount {mount:#x} belongs to another namespace; skipped")
                    continue
                ids[mount] = self.r.s32(mount + self.mnt_id)
                raw.append(mount)
            except ReadError as exc:
                problems.append(f"mount namespace {inum}: mount {mount:#x}: {exc}")
        out = []
        for mount in raw:
            try:
                out.append(self._mount(inum, mount, ids))
            except ReadError as exc:
                problems.append(f"mount namespace {inum}: mount {ids[mount]}: {exc}")
        out.sort(key=lambda m: m.mount_id)
        return out

    def _mount(self, inum: int, mount: int, ids: dict[int, int]) -> Mount:
        parent = self.r.u64(mount + self.mnt_parent)
        vfsmnt = mount + self.mount_mnt
        root = self.r.u64(vfsmnt + self.mnt_root)
        if parent == mount or not parent:
            mountpoint = "/"  # the namespace's root mount
        else:
            if not self.r.is_kernel_pointer(parent):
                raise ReadError(f"bad parent mount pointer {parent:#x}")
            mountpoint = self.namer.path(parent + self.mount_mnt, self.r.u64(mount + self.mnt_mountpoint))
        devname = self.r.pointer(mount + self.mnt_devname)
        source = self.r.cstring(devname, 256) if devname is not None else ""
        sb = self.r.pointer(vfsmnt + self.mnt_sb)
        fs = self._fs(sb) if sb is not None else ""
        try:
            options, dev, propagation, sb_options = self._details(mount, sb)
        except ReadError:  # the mount itself stands: only what it shows besides is not known
            options = dev = propagation = sb_options = ""
        return Mount(
            namespace=inum,
            mount_id=ids[mount],
            parent_id=ids.get(parent, ids[mount] if parent == mount else -1),
            mountpoint=mountpoint,
            root=self.namer.path(0, root),  # up its own filesystem's dentries, not across mounts
            fs=fs,
            source=source,
            address=mount,
            options=options,
            dev=dev,
            propagation=propagation,
            sb_options=sb_options,
        )

    def _details(self, mount: int, sb: int | None) -> tuple[str, str, str, str]:
        """(options, MAJ:MIN, propagation, superblock options) as show_mountinfo() writes them; "" for what
        the profile lacks."""
        options = dev = sb_options = ""
        flags = self.r.u32(mount + self.mount_mnt + self.mnt_flags) if self.mnt_flags is not None else None
        sb_flags = self.r.u64(sb + self.s_flags) if sb is not None and self.s_flags is not None else None
        if sb_flags is not None:
            sb_options = ",".join(["ro" if sb_flags & SB_RDONLY else "rw", *(name for bit, name in SB_OPTIONS if sb_flags & bit)])
        if flags is not None:
            readonly = flags & MNT_READONLY or (sb_flags is not None and sb_flags & SB_RDONLY)
            options = ",".join(["ro" if readonly else "rw", *(name for bit, name in MNT_OPTIONS if flags & bit)])
        if sb is not None and self.s_dev is not None:
            number = self.r.u32(sb + self.s_dev)
            dev = f"{number >> 20}:{number & 0xFFFFF}"
        fields = []
        if flags is not None and flags & MNT_SHARED and self.group_id is not None:
            fields.append(f"shared:{self.r.s32(mount + self.group_id)}")
        master = self.r.pointer(mount + self.master) if self.master is not None else None
        if master is not None and self.group_id is not None:
            fields.append(f"master:{self.r.s32(master + self.group_id)}")
        if flags is not None and flags & MNT_UNBINDABLE:
            fields.append("unbindable")
        return options, dev, " ".join(fields), sb_options

    def _fs(self, sb: int) -> str:
        fs_type = self.r.u64(sb + self.s_type)
        if fs_type not in self._fs_names:
            self._fs_names[fs_type] = self.r.cstring(self.r.u64(fs_type + self.fs_name), 64)
        return self._fs_names[fs_type]

    def _tree_walk(self, root_at: int) -> Walk:
        """Mounts of a red-black tree in key order (in-order, with a stack of its own), bounded; a node
        met twice (a loop) or unreadable ends its branch with a problem."""
        walk = Walk()
        seen: set[int] = set()
        stack: list[int] = []
        node = self.r.u64(root_at)
        while node or stack:
            while node:
                if not self.r.is_kernel_pointer(node) or node & 7 or node in seen:
                    walk.problems.append(f"mount tree: bad or looping node {node:#x}")
                    node = 0
                    break
                if len(seen) >= MAX_MOUNTS:
                    walk.truncated = True
                    walk.problems.append(f"mount tree holds more than {MAX_MOUNTS} mounts: stopped")
                    return walk
                seen.add(node)
                stack.append(node)
                try:
                    node = self.r.u64(node + self.rb_left)
                except ReadError as exc:
                    walk.problems.append(f"mount tree: {exc}")
                    node = 0
            if not stack:
                break
            current = stack.pop()
            walk.items.append(current - self.node)
            try:
                node = self.r.u64(current + self.rb_right)
            except ReadError as exc:
                walk.problems.append(f"mount tree: {exc}")
                node = 0
        return walk
