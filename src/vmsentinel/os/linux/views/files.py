"""Open files of a process (``/proc/PID/fd`` from outside), and the naming of a
``struct file`` the way the kernel shows it: a path for files on a mounted
filesystem (dentries and mounts walked, bounded), ``socket:[INODE]``,
``pipe:[INODE]`` and ``anon_inode:NAME`` for the pseudo filesystems.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from vmsentinel.errors import ReadError
from vmsentinel.os.declare import column
from vmsentinel.os.linux.reader import KernelReader

MAX_FDS = 1 << 16
MAX_PATH_DEPTH = 64


@dataclass(frozen=True, slots=True)
class FileName:
    path: str
    dev: str
    inode: int
    fs: str
    #: the inode's mode (type and permission bits, set-uid 0o4000) and owner
    mode: int = 0
    owner: int = -1


@dataclass(frozen=True, slots=True)
class OpenFile:
    pid: int = column("PID", table=False)
    fd: int = column("FD")
    path: str = column("PATH")
    fs: str = column("FS")
    inode: int = column("INODE")
    file: int = column("FILE", hex=True, table=False)


@dataclass
class FileSweep:
    files: list[OpenFile] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class FileNamer:
    """Names ``struct file``s and walks dentry paths across mounts."""

    def __init__(self, r: KernelReader) -> None:
        self.r = r
        self.f_path = r.off("file", "f_path")
        self.f_inode = r.off("file", "f_inode")
        self.path_mnt, self.path_dentry = r.off("path", "mnt"), r.off("path", "dentry")
        self.d_parent = r.off("dentry", "d_parent")
        self.d_name = r.off("dentry", "d_name") + r.off("qstr", "name")
        self.d_hash_pprev = r.off("dentry", "d_hash") + 8
        self.mnt_root = r.off("vfsmount", "mnt_root")
        self.mount_mnt = r.off("mount", "mnt")
        self.mnt_parent = r.off("mount", "mnt_parent")
        self.mnt_mountpoint = r.off("mount", "mnt_mountpoint")
        self.i_ino, self.i_sb = r.off("inode", "i_ino"), r.off("inode", "i_sb")
        # mode and owner say whether an executable is set-uid root (a profile without them: not known)
        self.i_mode = r.off("inode", "i_mode") if r.has("inode", "i_mode") else None
        self.i_uid = (
            r.off("inode", "i_uid.val")
            if r.has("inode", "i_uid.val")
            else r.off("inode", "i_uid")
            if r.has("inode", "i_uid")
            else None
        )
        self.s_dev, self.s_type = r.off("super_block", "s_dev"), r.off("super_block", "s_type")
        self.fs_name = r.off("file_system_type", "name")
        self._fs_names: dict[int, str] = {}
        self._names: dict[int, FileName] = {}
        self._paths: dict[tuple[int, int], str] = {}
        self._inodes: dict[int, tuple[int, str, str, int, int]] = {}

    def new_sweep(self) -> None:
        """Forget names of struct files and paths of dentries: between sweeps a file may be freed and
        its memory reused, a dentry renamed."""
        self._names.clear()
        self._paths.clear()
        self._inodes.clear()

    def name(self, file: int) -> FileName:
        """How the kernel names this open file (cached per sweep: forked processes share struct files)."""
        cached = self._names.get(file)
        if cached is None:
            cached = self._names[file] = self._name(file)
        return cached

    def _inode(self, inode: int) -> tuple[int, str, str, int, int]:
        """(inode number, device as MAJ:MIN, filesystem type, mode, owner) of an inode (cached per sweep)."""
        cached = self._inodes.get(inode)
        if cached is None:
            ino = self.r.u64(inode + self.i_ino)
            sb = self.r.u64(inode + self.i_sb)
            dev = self.r.u32(sb + self.s_dev)
            fs_type = self.r.u64(sb + self.s_type)
            if fs_type not in self._fs_names:
                self._fs_names[fs_type] = self.r.cstring(self.r.u64(fs_type + self.fs_name), 64)
            mode = int.from_bytes(self.r.read(inode + self.i_mode, 2), "little") if self.i_mode is not None else 0
            owner = self.r.u32(inode + self.i_uid) if self.i_uid is not None else -1
            cached = self._inodes[inode] = (ino, f"{dev >> 20:02x}:{dev & 0xFFFFF:02x}", self._fs_names[fs_type], mode, owner)
        return cached

    def _name(self, file: int) -> FileName:
        ino, dev_text, fs, mode, owner = self._inode(self.r.u64(file + self.f_inode))
        dentry = self.r.u64(file + self.f_path + self.path_dentry)
        if fs == "sockfs":
            return FileName(f"socket:[{ino}]", dev_text, ino, fs)
        if fs == "pipefs":
            return FileName(f"pipe:[{ino}]", dev_text, ino, fs)
        if fs == "anon_inodefs":
            return FileName("anon_inode:" + self.r.cstring(self.r.u64(dentry + self.d_name), 256), dev_text, ino, fs)
        vfsmnt = self.r.u64(file + self.f_path + self.path_mnt)
        return FileName(self.path(vfsmnt, dentry), dev_text, ino, fs, mode, owner)

    def path(self, vfsmnt: int, dentry: int) -> str:
        """The path of ``dentry`` under mount ``vfsmnt`` (cached per sweep: two hundred processes of one
        program have two hundred struct files but one dentry)."""
        cached = self._paths.get((vfsmnt, dentry))
        if cached is None:
            cached = self._paths[(vfsmnt, dentry)] = self._path(vfsmnt, dentry)
        return cached

    def _path(self, vfsmnt: int, dentry: int) -> str:
        parts: list[str] = []
        deleted = False
        first = True
        mount = vfsmnt - self.mount_mnt if vfsmnt else 0
        for _ in range(MAX_PATH_DEPTH * 2):
            if not self.r.is_kernel_pointer(dentry):
                raise ReadError(f"bad dentry pointer {dentry:#x}")
            parent = self.r.u64(dentry + self.d_parent)
            root_of_mount = bool(vfsmnt) and dentry == self.r.u64(vfsmnt + self.mnt_root)
            if root_of_mount or parent == dentry:
                if root_of_mount and mount:
                    parent_mount = self.r.u64(mount + self.mnt_parent)
                    if parent_mount and parent_mount != mount:
                        dentry = self.r.u64(mount + self.mnt_mountpoint)
                        mount = parent_mount
                        vfsmnt = mount + self.mount_mnt
                        first = False
                        continue
                break
            if first and self.r.u64(dentry + self.d_hash_pprev) == 0:
                deleted = True
            first = False
            parts.append(self.r.cstring(self.r.u64(dentry + self.d_name), 256))
            dentry = parent
        else:
            raise ReadError("path deeper than the limit (a dentry loop?)")
        path = "/" + "/".join(reversed(parts))
        return path + " (deleted)" if deleted else path


class FileReader:
    def __init__(self, reader: KernelReader, namer: FileNamer) -> None:
        r = self.r = reader
        self.namer = namer
        self.files = r.off("task_struct", "files")
        self.fdt = r.off("files_struct", "fdt")
        self.fd = r.off("fdtable", "fd")
        self.max_fds = r.off("fdtable", "max_fds")

    def open_files(self, pid: int, task: int) -> FileSweep:
        sweep = FileSweep()
        try:
            files = self.r.pointer(task + self.files)
            if files is None:
                return sweep
            fdt = self.r.u64(files + self.fdt)
            count = min(self.r.u32(fdt + self.max_fds), MAX_FDS)
            array = self.r.u64(fdt + self.fd)
            slots = struct.unpack(f"<{count}Q", self.r.read(array, count * 8)) if count else ()
        except ReadError as exc:
            sweep.problems.append(f"pid {pid}: file table: {exc}")
            return sweep
        for fd, file in enumerate(slots):
            if not file:
                continue
            if not self.r.is_kernel_pointer(file):
                sweep.problems.append(f"pid {pid}: fd {fd} holds a bad pointer {file:#x}")
                continue
            try:
                named = self.namer.name(file)
            except ReadError as exc:
                sweep.problems.append(f"pid {pid}: fd {fd}: {exc}")
                continue
            sweep.files.append(OpenFile(pid, fd, named.path, named.fs, named.inode, file))
        return sweep
