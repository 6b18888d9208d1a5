"""Kernel banner scan on synthetic memory."""

from __future__ import annotations

from vmsentinel.memory.buffer import BufferMemory
from vmsentinel.os.linux.banner import find_banner, find_banners

REAL = b"Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0)) #1 SMP Debian 6.1.192-2\n"


def test_prefers_the_nul_terminated_constant_over_copies() -> None:
    mem = BufferMemory({0: bytearray(0x10000), 0x100000: bytearray(0x1000)})
    copy = REAL.replace(b"#1", b"#2")
    mem.write(0x100, copy + b"more log text")  # a log copy, not a C string
    mem.write(0x200, copy + b"x")
    mem.write(0x5000, REAL + b"\0")
    banner = find_banner(mem)
    assert banner is not None
    assert banner.release == "6.1.0-56-amd64" and "#1 SMP" in banner.text
    assert banner.physical_addresses == (0x5000,)
    assert len(find_banners(mem)) == 2


def test_malformed_and_truncated_banners_are_ignored() -> None:
    mem = BufferMemory({0: bytearray(0x1000), 0x2000: bytearray(0x100)})
    mem.write(0x10, b"Linux version " + b"A" * 2000)  # no structure, runs on
    mem.write(0x2000 + 0x100 - 20, b"Linux version 6.1")  # cut off by the end of RAM
    assert find_banner(mem) is None


def test_banner_at_end_of_range_still_reads() -> None:
    mem = BufferMemory({0: bytearray(0x1000)})
    mem.write(0x1000 - len(REAL) - 1, REAL + b"\0")
    banner = find_banner(mem)
    assert banner is not None and banner.release == "6.1.0-56-amd64"
