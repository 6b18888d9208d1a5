"""Guest RAM read out of a running process's address space (a QEMU whose RAM is anonymous memory,
libvirt's default) with ``process_vm_readv``: one system call for many pieces, no ptrace stop, and
the process never notices.

The segments map guest-physical runs to host virtual addresses of the process. The views read
many small pieces (page-table entries, structures), so whole 4 KiB pages are fetched and kept for
the sweep: :meth:`ProcessMemory.new_sweep` (called by the paging layer at each sweep) and a short
age limit forget them, so a running guest is never seen older than that. Large reads go straight
to the process, many iovecs a call::

    with ProcessMemory(4242, [Segment(0, 0x7F61_43E0_0000, 512 << 20)]) as ram:
        ram.read_u64(0x1000)

A hole of the guest raises :class:`~vmsentinel.errors.UnmappedPhysicalAddress`; a read the process
cannot serve (it unmapped its RAM, or exited) raises :class:`~vmsentinel.errors.ProcessMemoryError`;
bytes are never made up. The process is held by a pidfd, so a reused PID is never read as the guest.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from vmsentinel.errors import AccessDenied, ProcessMemoryError, UnmappedPhysicalAddress
from vmsentinel.memory.base import PhysicalMemory, PhysRange
from vmsentinel.memory.mapped_file import MappedFileMemory
from vmsentinel.memory.privileges import ptrace_refusal
from vmsentinel.memory.segments import Segment, SegmentMap

PAGE = 4096
_PAGE_SHIFT = 12
_OFFSET = PAGE - 1
#: the kernel's limit on iovecs per call (UIO_MAXIOV)
IOV_MAX = 1024
#: reads up to this size are served from cached pages; larger ones go straight to the process
CACHED_READ_MAX = 4 * PAGE

_unpack_u64 = struct.Struct("<Q").unpack_from
_monotonic = time.monotonic


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_readv_fn: Any = None


def _process_vm_readv() -> Any:
    """libc's process_vm_readv (loaded once). It is called with ctypes objects only (c_int, c_ulong,
    iovec pointers), so no argtypes are needed, and none are set: converting arguments would cost
    a fifth of a page read."""
    global _readv_fn
    if _readv_fn is None:
        fn = ctypes.CDLL(None, use_errno=True).process_vm_readv
        fn.restype = ctypes.c_ssize_t
        _readv_fn = fn
    return _readv_fn


class ProcessGuard:
    """A process held by a pidfd: whether it is still the one we opened (a PID can be reused)."""

    def __init__(self, pid: int, what: str) -> None:
        self.pid = pid
        self.what = what
        try:
            self._fd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            raise ProcessMemoryError(f"{what} does not exist") from None
        except OSError:  # a kernel before 5.3: no pidfd; the reads still fail once it is gone
            self._fd = None

    def alive(self) -> bool:
        if self._fd is None:
            return os.path.exists(f"/proc/{self.pid}")
        poller = select.poll()  # not select(): a watcher's descriptors may number more than 1024
        poller.register(self._fd, select.POLLIN)
        return not poller.poll(0)  # a pidfd turns readable when the process exits

    def check(self) -> None:
        if not self.alive():
            raise ProcessMemoryError(f"{self.what} has exited")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ProcessMemory(PhysicalMemory):
    """Guest-physical memory read from another process's address space with process_vm_readv.

    ``segments`` map guest-physical runs to host virtual addresses (``Segment.file_offset``)."""

    kind = "process_vm_readv"

    def __init__(
        self,
        pid: int,
        segments: Iterable[Segment],
        what: str = "",
        *,
        max_age: float = 0.2,
        max_pages: int = 8192,
        cache: bool = True,
    ) -> None:
        self.pid = pid
        self.what = what or f"pid {pid}"
        self.layout = SegmentMap(segments, self.what)
        self.segments = self.layout.segments
        self.max_age = max_age
        self.max_pages = max_pages
        self._readv = _process_vm_readv()
        self._guard = ProcessGuard(pid, self.what)
        # pages are cached only when every segment is whole pages (QEMU's always are)
        self._cacheable = cache and all(not (s.phys_start | s.file_offset | s.length) & _OFFSET for s in self.segments)
        self._cache: dict[int, bytes] = {}
        self._expires = _monotonic() + max_age
        self._page = ctypes.create_string_buffer(PAGE)
        self._page_lock = threading.Lock()
        self._local = _Iovec(ctypes.addressof(self._page), PAGE)
        self._remote = _Iovec(0, PAGE)
        self._pid = ctypes.c_int(pid)
        one, none = ctypes.c_ulong(1), ctypes.c_ulong(0)
        self._page_args = (self._pid, ctypes.pointer(self._local), one, ctypes.pointer(self._remote), one, none)
        #: pages read into the cache, large reads that went straight to the process, system calls
        self.stats = {"pages_fetched": 0, "direct_reads": 0, "syscalls": 0}

    # -- the process ----------------------------------------------------
    def _fail(self, host: int, length: int, got: int, err: int) -> ProcessMemoryError | AccessDenied:
        if got >= 0:
            err = 0  # a short read: errno is left over from an earlier call
        if err == errno.EPERM:
            return AccessDenied(ptrace_refusal(self.pid, f"process_vm_readv on {self.what}"))
        if err == errno.ESRCH or not self._guard.alive():
            return ProcessMemoryError(f"{self.what} has exited")
        why = os.strerror(err) if got < 0 else f"only {got} of {length} bytes"
        return ProcessMemoryError(
            f"process_vm_readv of {length:#x} bytes at host address {host:#x} of {self.what} failed ({why}):"
            " the process no longer maps its RAM there"
        )

    def _fetch_page(self, page: int, address: int, length: int) -> bytes:
        base = page << _PAGE_SHIFT
        seg = self.layout.find(base)
        if seg is None:
            raise UnmappedPhysicalAddress(address, length, self.what)
        with self._page_lock:  # one page buffer: two threads must not read into it at once
            host = self._remote.iov_base = seg.file_offset + (base - seg.phys_start)
            got = self._readv(*self._page_args)
            if got != PAGE:
                raise self._fail(host, PAGE, got, ctypes.get_errno())
            data: bytes = self._page.raw
        self.stats["syscalls"] += 1
        cache = self._cache
        if len(cache) >= self.max_pages:
            cache.clear()  # deleting the oldest one by one would leave a dict scanning its tombstones
        cache[page] = data
        self.stats["pages_fetched"] += 1
        return data

    def _page_data(self, page: int, address: int, length: int) -> bytes:
        if _monotonic() > self._expires:
            self._forget()
        data = self._cache.get(page)
        return data if data is not None else self._fetch_page(page, address, length)

    def _forget(self) -> None:
        self._cache.clear()
        self._expires = _monotonic() + self.max_age

    def read_direct(self, address: int, length: int) -> bytes:
        """``length`` bytes read from the process now, bypassing the page cache (many iovecs a call)."""
        pieces = self.layout.pieces(address, length)
        out = ctypes.create_string_buffer(length)
        base = ctypes.addressof(out)
        done = 0
        for first in range(0, len(pieces), IOV_MAX):
            batch = pieces[first : first + IOV_MAX]
            local = (_Iovec * len(batch))()
            remote = (_Iovec * len(batch))()
            want = 0
            for i, (host, take) in enumerate(batch):
                local[i].iov_base, local[i].iov_len = base + done + want, take
                remote[i].iov_base, remote[i].iov_len = host, take
                want += take
            count = ctypes.c_ulong(len(batch))
            got = self._readv(self._pid, local, count, remote, count, ctypes.c_ulong(0))
            self.stats["syscalls"] += 1
            if got != want:
                raise self._fail(batch[0][0], want, got, ctypes.get_errno())
            done += want
        self.stats["direct_reads"] += 1
        return out.raw

    # -- PhysicalMemory -------------------------------------------------
    def read(self, address: int, length: int) -> bytes:
        if address < 0 or length < 0:
            raise UnmappedPhysicalAddress(address, length, self.what)
        if length > CACHED_READ_MAX or not self._cacheable:
            return self.read_direct(address, length)
        first, last = address >> _PAGE_SHIFT, (address + length - 1) >> _PAGE_SHIFT
        offset = address & _OFFSET
        if first == last or length == 0:
            return self._page_data(first, address, length)[offset : offset + length]
        data = b"".join(self._page_data(page, address, length) for page in range(first, last + 1))
        return data[offset : offset + length]

    def read_u64(self, address: int) -> int:
        offset = address & _OFFSET
        if offset > PAGE - 8 or address < 0 or not self._cacheable:
            return int.from_bytes(self.read(address, 8), "little")
        # the hot path of every page walk: _page_data inlined
        if _monotonic() > self._expires:
            self._forget()
        data = self._cache.get(address >> _PAGE_SHIFT)
        if data is None:
            data = self._fetch_page(address >> _PAGE_SHIFT, address, 8)
        return int(_unpack_u64(data, offset)[0])

    def scan(self, pattern: bytes, chunk: int = 1 << 22) -> Iterator[int]:
        """Search guest RAM in large direct reads (a scan needs no cache, and must not flood it)."""
        if not pattern:
            return
        overlap = len(pattern) - 1
        for rng in self.ranges():
            pos = rng.start
            while pos < rng.end:
                data = self.read_direct(pos, min(chunk + overlap, rng.end - pos))
                hit = data.find(pattern)
                while 0 <= hit < chunk:
                    yield pos + hit
                    hit = data.find(pattern, hit + 1)
                pos += chunk

    def new_sweep(self) -> None:
        """Forget cached pages, and make sure the process is still the QEMU we opened."""
        self._forget()
        self._guard.check()

    def ranges(self) -> list[PhysRange]:
        return self.layout.ranges()

    def is_valid(self, address: int, length: int = 1) -> bool:
        return self.layout.is_valid(address, length)

    def close(self) -> None:
        self._cache.clear()
        self._guard.close()

    def describe(self) -> str:
        return f"{self.kind} {self.what}"


class ProcessFileMemory(MappedFileMemory):
    """A running process's shared RAM file (memfd, hugetlbfs, a file, shared anonymous memory),
    mapped read-only and zero-copy through ``/proc/PID/map_files/START-END``; each sweep checks
    that the process still runs (the mapping keeps the file alive after it exits)."""

    def __init__(self, pid: int, map_file: str, segments: Iterable[Segment], what: str) -> None:
        self._guard = ProcessGuard(pid, what)
        try:
            super().__init__(map_file, segments, "map_files")
        except BaseException:
            self._guard.close()
            raise
        self.pid = pid
        self.what = what

    def new_sweep(self) -> None:
        self._guard.check()

    def close(self) -> None:
        super().close()
        self._guard.close()

    def describe(self) -> str:
        return f"{self.kind} {self.path} of {self.what}"
