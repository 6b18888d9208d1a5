"""The code allowlist: built from real binaries (gcc), real archives (the lab's cpio writer,
dpkg-deb) and hostile bytes, and checked page by page against an independent ELF reading."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import random
import shutil
import signal
import stat
import struct
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import lz4.block
import lz4.frame
import pytest
import zstandard
from blake3 import blake3
from typer.testing import CliRunner

from vmsentinel.cli.allowlist_cmd import app
from vmsentinel.errors import AllowlistError
from vmsentinel.lab.initramfs import CpioWriter, Entry
from vmsentinel.trust import allowlist as allowlist_module
from vmsentinel.trust import archives, compression
from vmsentinel.trust.allowlist import (
    KIND,
    PAGE_SIZE,
    AllowedFile,
    Allowlist,
    build_allowlist,
    load_allowlist,
    page_hash,
    save_allowlist,
)

PROG_C = r"""
#include <stdio.h>
int main(int argc, char **argv) { printf("prog %d %s\n", argc, argv[0]); return argc > 5; }
"""
LIB_C = "int lib_answer(int x) { return x * 42 + 1; }\n"
MODULE_C = """
__attribute__((section(".modinfo"), used)) static const char n[] = "name=fake_mod";
__attribute__((section(".modinfo"), used)) static const char l[] = "license=GPL";
int fake_init(void) { return 0; }
"""
NAMELESS_MODULE_C = "int other_init(void) { return 1; }\n"
REG = stat.S_IFREG | 0o755
EPOCH = "1700000000"


# ------------------------------------------------------------------------------------------
# helpers


class _Hang(BaseException):
    """Not an Exception (nor an OSError like TimeoutError), so no handler in the code under test can swallow it."""


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Fails the test instead of hanging it."""

    def expired(_signum: int, _frame: FrameType | None) -> None:
        raise _Hang(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _gcc(out: Path, source: str, *flags: str) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    src = out.with_name(out.name + ".c")
    src.write_text(source)
    subprocess.run(["gcc", *flags, str(src), "-o", str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def bins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Compiled once for the module: a static executable, a PIE, a shared library and two fake modules."""
    d = tmp_path_factory.mktemp("bins")
    return {
        "static": _gcc(d / "prog", PROG_C, "-static", "-O2"),
        "pie": _gcc(d / "pie", PROG_C, "-O2", "-fPIE", "-pie"),
        "lib": _gcc(d / "libx.so", LIB_C, "-O2", "-shared", "-fPIC"),
        "module": _gcc(d / "fake-mod.ko", MODULE_C, "-c", "-O2"),
        "nameless": _gcc(d / "other-mod.ko", NAMELESS_MODULE_C, "-c", "-O2"),
        "object": _gcc(d / "plain.o", LIB_C, "-c", "-O2"),
    }


def _expected_pages(data: bytes) -> dict[int, str]:
    """The executable pages of a 64-bit little-endian ELF, read with struct (not the code under test)."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    pages: dict[int, str] = {}
    for i in range(phnum):
        p_type, p_flags, p_offset, _vaddr, _paddr, p_filesz, p_memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize
        )
        if p_type != 1 or not p_flags & 1:  # PT_LOAD, PF_X
            continue
        assert p_memsz == p_filesz  # text has no bss: the page is the file page
        for offset in range(p_offset - p_offset % PAGE_SIZE, p_offset + p_filesz, PAGE_SIZE):
            pages[offset] = page_hash(data[offset : offset + PAGE_SIZE])
    assert pages
    return pages


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cpio(entries: list[Entry]) -> bytes:
    writer = CpioWriter()
    for entry in entries:
        writer.add(entry)
    return writer.finish()


def _newc_header(namesize: int, mode: int, size: int, *, ino: int = 1, nlink: int = 1) -> bytes:
    fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, namesize, 0]
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def _newc(entries: list[tuple[str, int, bytes, int, int]]) -> bytes:
    """A newc archive with control over inode numbers and link counts: (name, mode, data, ino, nlink)."""
    out = bytearray()
    for name, mode, data, ino, nlink in [*entries, ("TRAILER!!!", 0, b"", 0, 1)]:
        namez = name.encode() + b"\0"
        out += _newc_header(len(namez), mode, len(data), ino=ino, nlink=nlink) + namez
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def _lz4_legacy(data: bytes) -> bytes:
    """The format of ``lz4 -l``, which initramfs-tools writes."""
    out = b"\x02\x21\x4c\x18"
    for i in range(0, len(data), 8 << 20):
        block = lz4.block.compress(data[i : i + (8 << 20)], store_size=False)
        out += struct.pack("<I", len(block)) + block
    return out


COMPRESSORS = {
    "none": lambda b: b,
    "gzip": lambda b: gzip.compress(b),
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
    "xz": lambda b: lzma.compress(b, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32),
    "lzma": lambda b: lzma.compress(b, format=lzma.FORMAT_ALONE),
    "bzip2": lambda b: bz2.compress(b),
    "lz4": lambda b: lz4.frame.compress(b),
    "lz4-legacy": _lz4_legacy,
}


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data
        out += b"\n" if len(data) % 2 else b""
    return out


def _tar(members: list[tuple[str, bytes | None, str | None]]) -> bytes:
    """(name, data, symlink target)"""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data, target in members:
            info = tarfile.TarInfo(name)
            if target is not None:
                info.type, info.linkname = tarfile.SYMTYPE, target
                tf.addfile(info)
            else:
                assert data is not None
                info.size, info.mode = len(data), 0o755
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _deb(data_tar: bytes, name: str = "data.tar") -> bytes:
    return _ar([("debian-binary", b"2.0\n"), ("control.tar.gz", gzip.compress(b"")), (name, data_tar)])


def _build(tmp_path: Path, name: str, data: bytes, lines: list[str] | None = None) -> Allowlist:
    path = tmp_path / name
    path.write_bytes(data)
    with _deadline(60):
        return build_allowlist([path], lines.append if lines is not None else None)


# ------------------------------------------------------------------------------------------
# root filesystem trees


def test_page_hash_is_blake3_of_the_zero_padded_page() -> None:
    assert page_hash(b"\x90" * PAGE_SIZE) == blake3(b"\x90" * PAGE_SIZE).hexdigest()
    assert page_hash(b"abc") == blake3(b"abc" + bytes(PAGE_SIZE - 3)).hexdigest()
    assert page_hash(b"abc") != blake3(b"abc").hexdigest()
    with pytest.raises(ValueError):
        page_hash(bytes(PAGE_SIZE + 1))


def test_tree_lists_executables_and_libraries_with_their_mapped_pages(tmp_path: Path, bins: dict[str, Path]) -> None:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "usr/lib").mkdir(parents=True)
    (root / "etc").mkdir()
    shutil.copy(bins["static"], root / "bin/prog")
    shutil.copy(bins["pie"], root / "usr/lib/pie")
    shutil.copy(bins["lib"], root / "usr/lib/libx.so.1")
    shutil.copy(bins["object"], root / "usr/lib/plain.o")
    (root / "bin/sh").symlink_to("prog")
    (root / "usr/lib/libx.so").symlink_to("libx.so.1")
    (root / "escape").symlink_to(bins["static"].parent)  # a symlink out of the tree: never followed
    (root / "dangling").symlink_to("/nonexistent")
    (root / "etc/motd").write_text("hello\n")
    os.mkfifo(root / "etc/fifo")  # opening it would block: it must not be opened
    lines: list[str] = []

    with _deadline(60):
        allowlist = build_allowlist([root], lines.append)

    assert set(allowlist.files) == {"/bin/prog", "/usr/lib/pie", "/usr/lib/libx.so.1"}
    data = bins["static"].read_bytes()
    prog = allowlist.files["/bin/prog"]
    assert prog.path == "/bin/prog" and prog.kind == "executable" and prog.sha256 == _sha(data)
    assert prog.pages == _expected_pages(data)
    assert allowlist.files["/usr/lib/pie"].kind == "executable"  # ET_DYN with PT_INTERP
    lib = allowlist.files["/usr/lib/libx.so.1"]
    assert lib.kind == "shared-library" and lib.pages == _expected_pages(bins["lib"].read_bytes())
    assert not allowlist.knows("/bin/sh") and not allowlist.knows("/usr/lib/libx.so")
    assert not allowlist.modules
    assert allowlist.sources == [f"rootfs:{root}"]
    assert lines == ["root: 5 files, 4 ELF"]


def test_tree_skips_a_corrupt_elf_and_reports_it(tmp_path: Path, bins: dict[str, Path]) -> None:
    root = tmp_path / "root"
    root.mkdir()
    data = bins["static"].read_bytes()
    (root / "prog").write_bytes(data)
    (root / "truncated").write_bytes(data[: len(data) // 3])  # segments run past the end
    (root / "garbage").write_bytes(b"\x7fELF" + b"\xff" * 200)
    lines: list[str] = []

    allowlist = build_allowlist([root], lines.append)

    assert set(allowlist.files) == {"/prog"}
    assert any("skipped /truncated" in line for line in lines)
    assert any("skipped /garbage" in line for line in lines)
    assert lines[-1] == "root: 3 files, 3 ELF, 2 skipped"


def _elf64(etype: int, segments: list[tuple[int, int, int, int, int, int]], size: int) -> bytes:
    """A synthetic ELF64: header, program headers (type, flags, offset, vaddr, filesz, memsz), then random bytes."""
    header = struct.pack(
        "<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01", etype, 62, 1, 0x401000, 64, 0, 0, 64, 56, len(segments), 64, 0, 0
    )
    phdrs = b"".join(struct.pack("<IIQQQQQQ", t, f, o, v, v, fs, ms, PAGE_SIZE) for t, f, o, v, fs, ms in segments)
    body = header + phdrs
    return body + random.Random(size).randbytes(size - len(body))


def test_pages_as_mapped_unaligned_segments_end_of_file_and_bss(tmp_path: Path) -> None:
    """What a mapping shows: whole file pages around an unaligned segment, zeros past the end of the
    file, and the tail of a segment with bss zeroed (by the kernel to the page end, by ld.so to p_memsz)."""
    text = _elf64(2, [(1, 5, 0x1100, 0x401100, 0x2000, 0x2000)], 0x3200)
    exe_bss = _elf64(2, [(1, 7, 0x100, 0x400100, 0x200, 0x3000)], 0x2000)
    lib_bss = _elf64(3, [(1, 7, 0x100, 0x100, 0x200, 0x400)], 0x2000)
    root = tmp_path / "root"
    root.mkdir()
    for name, data in (("text", text), ("exe_bss", exe_bss), ("lib_bss", lib_bss)):
        (root / name).write_bytes(data)

    files = build_allowlist([root]).files

    assert files["/text"].kind == "executable"
    assert files["/text"].pages == {
        0x1000: blake3(text[0x1000:0x2000]).hexdigest(),
        0x2000: blake3(text[0x2000:0x3000]).hexdigest(),
        0x3000: blake3(text[0x3000:0x3200] + bytes(0xE00)).hexdigest(),
    }
    assert files["/exe_bss"].pages == {0: blake3(exe_bss[:0x300] + bytes(0xD00)).hexdigest()}
    assert files["/lib_bss"].kind == "shared-library"
    assert files["/lib_bss"].pages == {0: blake3(lib_bss[:0x300] + bytes(0x200) + lib_bss[0x500:0x1000]).hexdigest()}


def test_elf_that_no_loader_would_map_is_skipped(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "overlap").write_bytes(_elf64(2, [(1, 5, 0, 0x400000, 0x100000, 0x100000)] * 2000, 0x100000))
    (root / "incongruent").write_bytes(_elf64(2, [(1, 5, 0x1000, 0x400100, 0x100, 0x100)], 0x2000))
    (root / "no_text").write_bytes(_elf64(2, [(1, 6, 0x1000, 0x401000, 0x100, 0x100)], 0x2000))
    lines: list[str] = []

    with _deadline(30):
        allowlist = build_allowlist([root], lines.append)

    assert allowlist.files == {}
    assert any("skipped /overlap" in line and "overlap" in line for line in lines)
    assert any("skipped /incongruent" in line for line in lines)
    assert lines[-1] == "root: 3 files, 3 ELF, 2 skipped"


# ------------------------------------------------------------------------------------------
# initramfs


def test_gzip_initramfs_from_the_lab_writer(tmp_path: Path, bins: dict[str, Path]) -> None:
    data = bins["static"].read_bytes()
    archive = _cpio(
        [
            Entry("bin/prog", REG, data),
            Entry("bin/sh", stat.S_IFLNK | 0o777, b"prog"),
            Entry("etc", stat.S_IFDIR | 0o755),
            Entry("etc/issue", stat.S_IFREG | 0o644, b"hello\n"),
        ]
    )
    lines: list[str] = []

    allowlist = _build(tmp_path, "initrd.img", gzip.compress(archive), lines)

    assert set(allowlist.files) == {"/bin/prog"}
    prog = allowlist.files["/bin/prog"]
    assert prog.kind == "executable" and prog.sha256 == _sha(data) and prog.pages == _expected_pages(data)
    assert lines == ["initrd.img: 2 files, 1 ELF"]
    assert allowlist.sources == [f"initramfs:{tmp_path / 'initrd.img'}"]


@pytest.mark.parametrize("codec", sorted(COMPRESSORS))
def test_concatenated_initramfs_with_padding_and_another_codec(tmp_path: Path, bins: dict[str, Path], codec: str) -> None:
    first = gzip.compress(_cpio([Entry("bin/prog", REG, bins["static"].read_bytes())]))
    second = COMPRESSORS[codec](_cpio([Entry("usr/lib/libx.so", REG, bins["lib"].read_bytes())]))

    allowlist = _build(tmp_path, "initrd.img", first + bytes(512) + second + bytes(4))

    assert set(allowlist.files) == {"/bin/prog", "/usr/lib/libx.so"}
    assert allowlist.files["/usr/lib/libx.so"].pages == _expected_pages(bins["lib"].read_bytes())


def test_uncompressed_early_archive_then_zstd_main_archive(tmp_path: Path, bins: dict[str, Path]) -> None:
    """The layout of a distribution initramfs: raw early cpio (microcode), then the compressed main one."""
    early = _cpio([Entry("kernel/x86/microcode/GenuineIntel.bin", stat.S_IFREG | 0o644, b"\1" * 1000)])
    main = zstandard.ZstdCompressor().compress(_cpio([Entry("bin/prog", REG, bins["static"].read_bytes())]))

    allowlist = _build(tmp_path, "initrd.img", early + main)

    assert set(allowlist.files) == {"/bin/prog"}


def test_an_archive_split_across_gzip_members_and_a_later_archive_overriding_a_path(
    tmp_path: Path, bins: dict[str, Path]
) -> None:
    archive = _cpio([Entry("bin/prog", REG, bins["static"].read_bytes()), Entry("bin/other", REG, bins["lib"].read_bytes())])
    half = len(archive) // 2
    split = gzip.compress(archive[:half]) + gzip.compress(archive[half:])
    override = gzip.compress(_cpio([Entry("bin/other", stat.S_IFLNK | 0o777, b"prog")]))  # the kernel replaces it

    allowlist = _build(tmp_path, "initrd.img", split + override)

    assert set(allowlist.files) == {"/bin/prog"}


def test_cpio_hard_links_share_the_data_of_one_entry(tmp_path: Path, bins: dict[str, Path]) -> None:
    data = bins["static"].read_bytes()
    archive = _newc([("bin/a", REG, b"", 7, 2), ("bin/b", REG, data, 7, 2), ("bin/c", REG, b"", 7, 3)])

    allowlist = _build(tmp_path, "initrd.cpio", archive)

    assert set(allowlist.files) == {"/bin/a", "/bin/b", "/bin/c"}
    assert {f.sha256 for f in allowlist.files.values()} == {_sha(data)}


def test_corrupt_elf_in_an_archive_is_skipped_and_reported(tmp_path: Path, bins: dict[str, Path]) -> None:
    archive = _cpio(
        [Entry("bin/bad", REG, bins["static"].read_bytes()[:200]), Entry("bin/prog", REG, bins["static"].read_bytes())]
    )
    lines: list[str] = []

    allowlist = _build(tmp_path, "initrd.img", gzip.compress(archive), lines)

    assert set(allowlist.files) == {"/bin/prog"}
    assert any(line.startswith("initrd.img: skipped /bin/bad") for line in lines)


# ------------------------------------------------------------------------------------------
# Debian packages


def _dpkg_codecs() -> list[str]:
    if shutil.which("dpkg-deb") is None:
        return ["xz"]  # the test skips itself
    usage = subprocess.run(["dpkg-deb", "--help"], capture_output=True, text=True).stdout
    return ["xz", "gzip", "none"] + (["zstd"] if "zstd" in usage else [])


@pytest.mark.parametrize("codec", _dpkg_codecs())
def test_deb_built_by_dpkg_deb(tmp_path: Path, bins: dict[str, Path], codec: str) -> None:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed")
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN/control").write_text(
        "Package: prog\nVersion: 1.0\nArchitecture: amd64\nMaintainer: T <t@example.org>\nDescription: test\n"
    )
    (pkg / "usr/bin").mkdir(parents=True)
    deep = pkg / "usr/lib" / ("d" * 90) / ("e" * 90)  # past the 100 bytes of a plain tar name
    deep.mkdir(parents=True)
    shutil.copy(bins["static"], pkg / "usr/bin/prog")
    os.link(pkg / "usr/bin/prog", pkg / "usr/bin/prog-hard")  # a tar hard-link entry
    (pkg / "usr/bin/alias").symlink_to("prog")
    shutil.copy(bins["lib"], deep / "libx.so")
    deb = tmp_path / "prog_1.0_amd64.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", f"-Z{codec}", "--build", str(pkg), str(deb)], check=True, capture_output=True
    )
    lines: list[str] = []

    with _deadline(60):
        allowlist = build_allowlist([deb], lines.append)

    deep_path = "/" + (deep / "libx.so").relative_to(pkg).as_posix()
    assert set(allowlist.files) == {"/usr/bin/prog", "/usr/bin/prog-hard", deep_path}
    prog = allowlist.files["/usr/bin/prog"]
    assert prog.kind == "executable" and prog.pages == _expected_pages(bins["static"].read_bytes())
    assert allowlist.files["/usr/bin/prog-hard"].pages == prog.pages
    assert allowlist.files[deep_path].kind == "shared-library"
    assert lines == ["prog_1.0_amd64.deb: 2 files, 2 ELF"]  # the hard link carries no data of its own
    assert allowlist.sources == [f"deb:{deb}"]


def test_hand_made_deb_with_zstd_data_and_pax_names(tmp_path: Path, bins: dict[str, Path]) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("./usr/bin/" + "p" * 150)
        data = bins["static"].read_bytes()
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    deb = _deb(zstandard.ZstdCompressor().compress(buf.getvalue()), "data.tar.zst")

    allowlist = _build(tmp_path, "x.deb", deb)

    assert set(allowlist.files) == {"/usr/bin/" + "p" * 150}


# ------------------------------------------------------------------------------------------
# kernel modules


def test_kernel_modules_by_modinfo_name_or_file_name_compressed_or_not(tmp_path: Path, bins: dict[str, Path]) -> None:
    ko = bins["module"].read_bytes()
    nameless = bins["nameless"].read_bytes()
    moddir = tmp_path / "root/lib/modules/6.1.0/kernel"
    moddir.mkdir(parents=True)
    (moddir / "fake-mod.ko").write_bytes(ko)
    xz = lzma.compress(ko, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    (moddir / "copy").mkdir()
    (moddir / "copy/fake-mod.ko.xz").write_bytes(xz)
    (moddir / "copy/fake-mod2.ko.zst").write_bytes(zstandard.ZstdCompressor().compress(ko))
    (moddir / "copy/fake-mod3.ko.gz").write_bytes(gzip.compress(ko))
    (moddir / "other-mod.ko").write_bytes(nameless)
    (moddir / "plain.o").write_bytes(bins["object"].read_bytes())  # relocatable, but no module
    (moddir / "notes.ko").write_text("not an ELF")

    allowlist = build_allowlist([tmp_path / "root"])

    assert allowlist.modules == {"fake_mod": _sha(ko), "other_mod": _sha(nameless)}
    base = "/lib/modules/6.1.0/kernel"
    assert set(allowlist.files) == {
        f"{base}/fake-mod.ko",
        f"{base}/copy/fake-mod.ko.xz",
        f"{base}/copy/fake-mod2.ko.zst",
        f"{base}/copy/fake-mod3.ko.gz",
        f"{base}/other-mod.ko",
    }
    compressed = allowlist.files[f"{base}/copy/fake-mod.ko.xz"]
    assert compressed.kind == "kernel-module" and compressed.sha256 == _sha(xz) and compressed.pages == {}


def test_module_in_an_initramfs_and_a_corrupt_compressed_module(tmp_path: Path, bins: dict[str, Path]) -> None:
    ko = bins["module"].read_bytes()
    xz = lzma.compress(ko, format=lzma.FORMAT_XZ)
    archive = _cpio(
        [
            Entry("lib/modules/6.1.0/fake-mod.ko.xz", stat.S_IFREG | 0o644, xz),
            Entry("lib/modules/6.1.0/broken.ko.xz", stat.S_IFREG | 0o644, xz[: len(xz) // 2]),
        ]
    )
    lines: list[str] = []

    allowlist = _build(tmp_path, "initrd.img", gzip.compress(archive), lines)

    assert allowlist.modules == {"fake_mod": _sha(ko)}
    assert any("skipped /lib/modules/6.1.0/broken.ko.xz" in line for line in lines)


# ------------------------------------------------------------------------------------------
# lookups, saving, loading


@pytest.fixture
def built(tmp_path: Path, bins: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Allowlist:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy(bins["static"], root / "bin/prog")
    shutil.copy(bins["module"], root / "bin/fake.ko")
    return build_allowlist([root])


def test_page_allowed(built: Allowlist, bins: dict[str, Path]) -> None:
    offset, digest = sorted(_expected_pages(bins["static"].read_bytes()).items())[-1]
    assert built.page_allowed("/bin/prog", offset, digest)
    assert not built.page_allowed("/bin/prog", offset, page_hash(b"changed"))
    assert not built.page_allowed("/bin/other", offset, digest)
    assert not built.page_allowed("/bin/prog", offset + 1, digest)
    assert not built.page_allowed("/bin/prog", -PAGE_SIZE, digest)
    assert not built.page_allowed("/bin/fake.ko", 0, digest)
    assert built.knows("/bin/prog") and built.knows("/bin/fake.ko") and not built.knows("/bin")


def test_save_is_canonical_and_load_round_trips(built: Allowlist, tmp_path: Path) -> None:
    first, second, third = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    save_allowlist(built, first)
    save_allowlist(build_allowlist([tmp_path / "root"]), second)  # the same input, built again
    loaded = load_allowlist(first)
    save_allowlist(loaded, third)

    assert first.read_bytes() == second.read_bytes() == third.read_bytes()
    assert loaded == built
    assert loaded.created == "2023-11-14T22:13:20Z"
    data = json.loads(first.read_bytes())
    assert data["kind"] == KIND and data["version"] == 1
    assert list(data["files"]) == sorted(data["files"])
    assert data["files"]["/bin/prog"]["pages"] == sorted(data["files"]["/bin/prog"]["pages"])
    assert b" " not in first.read_bytes().split(b'"created"')[0]


MUTATIONS: list[tuple[str, list[str | int], object]] = [
    ("another kind", ["kind"], "vmsentinel-policy"),
    ("version", ["version"], 2),
    ("version as bool", ["version"], True),
    ("created", ["created"], "yesterday"),
    ("sources", ["sources"], "rootfs:/"),
    ("files as list", ["files"], []),
    ("sha256 as int", ["files", "/bin/prog", "sha256"], 5),
    ("sha256 upper case", ["files", "/bin/prog", "sha256"], "A" * 64),
    ("file kind", ["files", "/bin/prog", "kind"], "script"),
    ("pages as dict", ["files", "/bin/prog", "pages"], {"0": "0" * 64}),
    ("offset as string", ["files", "/bin/prog", "pages", 0, 0], "0"),
    ("unaligned offset", ["files", "/bin/prog", "pages", 0, 0], 5),
    ("absurd offset", ["files", "/bin/prog", "pages", 0, 0], 1 << 50),
    ("short hash", ["files", "/bin/prog", "pages", 0, 1], "abc"),
    ("module with pages", ["files", "/bin/fake.ko", "pages"], [[0, "0" * 64]]),
    ("module sha256", ["modules", "fake_mod"], None),
    ("module name", ["modules", "a/b"], "0" * 64),
    ("extra field", ["signature"], "x"),
]


@pytest.mark.parametrize(("path_in", "value"), [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS])
def test_load_rejects_a_malformed_allowlist(built: Allowlist, tmp_path: Path, path_in: list[str | int], value: object) -> None:
    data = built.to_json()
    target: Any = data
    for key in path_in[:-1]:
        target = target[key]
    target[path_in[-1]] = value
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))

    with pytest.raises(AllowlistError):
        load_allowlist(bad)


def test_load_rejects_truncation_duplicates_constants_renamed_paths_and_absurd_sizes(
    built: Allowlist, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = tmp_path / "good.json"
    save_allowlist(built, good)
    text = good.read_text()
    bad = tmp_path / "bad.json"
    cases: dict[str, str | bytes] = {
        "binary": b"\xff\xfe{}",
        "truncated": text[: len(text) // 2],
        "duplicate key": text.replace('{"created"', '{"kind":"x","created"', 1),
        "NaN": text.replace('"version":1', '"version":NaN'),
        "relative path": text.replace('"/bin/prog"', '"bin/prog"'),
        "unnormalised path": text.replace('"/bin/prog"', '"/bin/../bin/prog"'),
        "missing field": text.replace('"modules":{', '"modulez":{'),
        "deep nesting": "[" * 100000,
        "not an object": "[]",
    }
    for what, content in cases.items():
        bad.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(AllowlistError):
            load_allowlist(bad)
            pytest.fail(what)
    with pytest.raises(AllowlistError, match="no-such"):
        load_allowlist(tmp_path / "no-such.json")
    monkeypatch.setattr(allowlist_module, "MAX_TOTAL_PAGES", 3)
    with pytest.raises(AllowlistError, match="pages"):
        load_allowlist(good)


def test_to_json_refuses_an_entry_filed_under_another_path() -> None:
    allowlist = Allowlist(files={"/a": AllowedFile("/b", "0" * 64, "executable", {})})
    with pytest.raises(AllowlistError):
        allowlist.to_json()


# ------------------------------------------------------------------------------------------
# hostile input: an AllowlistError (or a clean skip), never another exception, never a hang


def test_cpio_entry_claiming_a_huge_file(tmp_path: Path) -> None:
    # newc sizes have 8 hex digits, so 0xFFFFFFFF (4 GiB) is the most a header can claim
    archive = _newc_header(9, REG, 0xFFFFFFFF) + b"bin/huge\0" + b"\0" + b"\x7fELF" * 100
    with pytest.raises(AllowlistError, match=r"'bin/huge' claims 4294967295 bytes"):
        _build(tmp_path, "huge.cpio", archive)


def test_truncated_cpio(tmp_path: Path, bins: dict[str, Path]) -> None:
    archive = _cpio([Entry("bin/prog", REG, bins["static"].read_bytes())])
    with pytest.raises(AllowlistError, match=r"initrd\.img.*bin/prog"):
        _build(tmp_path, "initrd.img", archive[: len(archive) // 2])
    with pytest.raises(AllowlistError, match="gzip"):
        _build(tmp_path, "initrd.img", gzip.compress(archive)[:5000])
    with pytest.raises(AllowlistError):
        _build(tmp_path, "initrd.img", archive[:-200])  # no TRAILER!!!


def test_garbage_bytes(tmp_path: Path) -> None:
    garbage = random.Random(7).randbytes(8192)
    with pytest.raises(AllowlistError, match="neither"):
        _build(tmp_path, "garbage", b"garbage!" + garbage)
    for codec in ("gzip", "xz", "zstd", "bzip2", "lz4", "lz4-legacy", "lzma"):
        magic = compression.MAGICS[codec]
        with pytest.raises(AllowlistError, match=r"garbage\.img"):
            _build(tmp_path, "garbage.img", magic + garbage)
    with pytest.raises(AllowlistError, match="unrecognised data"):
        _build(tmp_path, "garbage.img", bytes(1000) + b"garbage!")
    with pytest.raises(AllowlistError, match="no cpio archive"):
        _build(tmp_path, "zeros.img", bytes(100000))
    with pytest.raises(AllowlistError, match="empty"):
        _build(tmp_path, "empty.img", b"")
    with pytest.raises(AllowlistError, match="lzo"):
        _build(tmp_path, "lzo.img", b"\x89LZO" + garbage)


def test_cpio_entry_name_without_nul(tmp_path: Path) -> None:
    archive = _newc_header(8, REG, 4) + b"bin/prog" + b"\0\0" + b"\x7fELF"
    with pytest.raises(AllowlistError, match="NUL"):
        _build(tmp_path, "initrd.cpio", archive)
    with pytest.raises(AllowlistError, match="name of"):
        _build(tmp_path, "initrd.cpio", _newc_header(0xFFFFFFFF, REG, 4) + b"x\0")
    with pytest.raises(AllowlistError, match="malformed"):
        _build(tmp_path, "initrd.cpio", b"070701" + b"+0000001" * 13 + b"x\0")


def test_junk_inside_a_compressed_archive(tmp_path: Path) -> None:
    with pytest.raises(AllowlistError, match="something other than"):
        _build(tmp_path, "initrd.img", gzip.compress(_cpio([]) + b"junk"))


def test_ar_member_past_the_end_and_other_broken_debs(tmp_path: Path) -> None:
    header = f"{'data.tar.xz':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{999999:<10}`\n".encode()
    with pytest.raises(AllowlistError, match="past the end"):
        _build(tmp_path, "x.deb", b"!<arch>\n" + header + b"\xfd7zXZ\x00" * 10)
    with pytest.raises(AllowlistError, match="malformed size"):
        _build(tmp_path, "x.deb", b"!<arch>\n" + header.replace(b"999999", b"-99999") + bytes(100))
    with pytest.raises(AllowlistError, match=r"no data\.tar"):
        _build(tmp_path, "x.deb", _ar([("debian-binary", b"2.0\n")]))
    with pytest.raises(AllowlistError, match="ar member header"):
        _build(tmp_path, "x.deb", b"!<arch>\n" + header[:30])
    with pytest.raises(AllowlistError, match="xz"):
        _build(tmp_path, "x.deb", _deb(b"\xfd7zXZ\x00garbage", "data.tar.xz"))


def test_tar_member_claiming_two_to_the_forty_bytes(tmp_path: Path) -> None:
    info = tarfile.TarInfo("./usr/bin/huge")
    info.size = 1 << 40
    data_tar = info.tobuf(tarfile.GNU_FORMAT) + b"\x7fELF" + bytes(2000)
    with pytest.raises(AllowlistError, match=r"x\.deb.*'./usr/bin/huge' claims 1099511627776 bytes"):
        _build(tmp_path, "x.deb", _deb(data_tar))
    longname = tarfile.TarInfo("././@LongLink")
    longname.type, longname.size = tarfile.GNUTYPE_LONGNAME, 1 << 30
    with pytest.raises(AllowlistError, match="extended header"):
        _build(tmp_path, "x.deb", _deb(longname.tobuf(tarfile.GNU_FORMAT) + bytes(1024)))
    with pytest.raises(AllowlistError, match="bad tar header"):
        _build(tmp_path, "x.deb", _deb(b"\x01" * 512))


def test_decompression_bomb_hits_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archives, "MAX_UNPACKED_BYTES", 1 << 20)
    archive = _cpio([Entry("zeros", stat.S_IFREG | 0o644, bytes(8 << 20))])
    for codec in ("gzip", "zstd", "xz", "bzip2", "lz4"):
        with pytest.raises(AllowlistError, match="decompression bomb"):
            _build(tmp_path, "bomb.img", COMPRESSORS[codec](archive))
    with pytest.raises(AllowlistError, match="decompression bomb"):
        _build(tmp_path, "bomb.deb", _deb(gzip.compress(_tar([("./zeros", bytes(8 << 20), None)])), "data.tar.gz"))


def _fuzz(tmp_path: Path, name: str, good: bytes, seed: int, rounds: int) -> int:
    """Random byte flips, insertions and cuts: each build must succeed or raise AllowlistError."""
    rng = random.Random(seed)
    errors = 0
    for _ in range(rounds):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data))
            action = rng.random()
            if action < 0.6:
                data[at] = rng.randrange(256)
            elif action < 0.8:
                data[at:at] = rng.randbytes(rng.randint(1, 16))
            else:
                del data[at:]
                break
        try:
            with _deadline(20):
                _build(tmp_path, name, bytes(data))
        except AllowlistError:
            errors += 1
    return errors


def test_fuzzed_archives_never_raise_anything_else_nor_hang(tmp_path: Path, bins: dict[str, Path]) -> None:
    ko = bins["module"].read_bytes()
    members = [Entry("bin/lib", REG, bins["lib"].read_bytes()), Entry("bin/sh", stat.S_IFLNK | 0o777, b"lib")]
    cpio = _cpio([*members, Entry("m/fake.ko.xz", REG, lzma.compress(ko)), Entry("m/fake.ko", REG, ko)])
    deb = _deb(_tar([("./usr/lib/libx.so", bins["lib"].read_bytes(), None), ("./usr/bin/sh", None, "x"), ("./k.ko", ko, None)]))

    errors = _fuzz(tmp_path, "initrd.cpio", cpio, 1, 150)
    errors += _fuzz(tmp_path, "initrd.img", gzip.compress(cpio), 2, 40)
    errors += _fuzz(tmp_path, "x.deb", deb, 3, 150)

    assert errors > 0  # the mutations did reach the parsers


# ------------------------------------------------------------------------------------------
# merging sources and the CLI


def test_sources_merge_and_a_later_source_wins(tmp_path: Path, bins: dict[str, Path]) -> None:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy(bins["lib"], root / "bin/prog")
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(gzip.compress(_cpio([Entry("bin/prog", REG, bins["static"].read_bytes())])))
    lines: list[str] = []

    allowlist = build_allowlist([root, str(initrd)], lines.append)

    assert allowlist.files["/bin/prog"].sha256 == _sha(bins["static"].read_bytes())
    assert "initrd.img: /bin/prog differs from an earlier source; keeping this one" in lines
    assert allowlist.sources == [f"rootfs:{root}", f"initramfs:{initrd}"]
    with pytest.raises(AllowlistError, match="no sources"):
        build_allowlist([])
    with pytest.raises(AllowlistError, match="nope"):
        build_allowlist([tmp_path / "nope"])


runner = CliRunner()


def test_cli_build_then_show(tmp_path: Path, bins: dict[str, Path]) -> None:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy(bins["static"], root / "bin/prog")
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(gzip.compress(_cpio([Entry("lib/fake-mod.ko", REG, bins["module"].read_bytes())])))
    out = tmp_path / "allow.json"

    built = runner.invoke(app, ["build", "--from", str(root), "--from", str(initrd), "-o", str(out), "--json"])
    assert built.exit_code == 0, built.output
    summary = json.loads(built.stdout)
    pages = len(_expected_pages(bins["static"].read_bytes()))
    assert summary["files"] == 2 and summary["executables"] == 1 and summary["modules"] == 1 and summary["pages"] == pages
    assert summary["path"] == str(out)

    shown = runner.invoke(app, ["show", str(out), "--json"])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert data["kind"] == KIND and set(data["files"]) == {"/bin/prog", "/lib/fake-mod.ko"} and "fake_mod" in data["modules"]

    table = runner.invoke(app, ["show", str(out)], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "/bin/prog" in table.stdout and "fake_mod" in table.stdout

    plain = runner.invoke(app, ["build", "--from", str(root), "-o", str(tmp_path / "b.json")])
    assert plain.exit_code == 0 and f"{pages} pages" in plain.stdout


def test_cli_errors_are_one_line_and_exit_two(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["build", "--from", str(tmp_path / "nope"), "-o", str(tmp_path / "x.json")])
    assert missing.exit_code == 2 and "error:" in missing.output and "nope" in missing.output
    (tmp_path / "policy.json").write_text(json.dumps({"kind": "vmsentinel-policy"}))
    wrong = runner.invoke(app, ["show", str(tmp_path / "policy.json")])
    assert wrong.exit_code == 2 and "not an allowlist" in wrong.output
    no_source = runner.invoke(app, ["build", "-o", str(tmp_path / "x.json")])
    assert no_source.exit_code != 0
