"""Kernel images (bzImage payloads in every compression), profile files, the
profile cache, and ISF export/import, on synthetic kernels."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import struct
from pathlib import Path

import pytest
from tests.synthetic_kernel import build_kallsyms, sample_btf, sample_symbols

from vmsentinel.errors import KernelImageError, ProfileError
from vmsentinel.memory.buffer import BufferMemory
from vmsentinel.os.linux.profile.isf import load_isf, profile_from_isf, to_isf, write_isf
from vmsentinel.os.linux.profile.kernel_image import KernelImage, parse_build_id
from vmsentinel.os.linux.profile.profile import KernelProfile, profile_from_image
from vmsentinel.os.linux.profile.store import ProfileStore

BASE = 0xFFFFFFFF81000000
BANNER = b"Linux version 6.9.0-test (a@b) (gcc) #1 SMP PREEMPT_DYNAMIC Debian 6.9.0-1\n\0"


def _elf(sections: dict[str, tuple[int, bytes]]) -> bytes:
    """A minimal ELF64 with named sections (address, bytes) and one PT_LOAD over each."""
    names = b"\0" + b"".join(n.encode() + b"\0" for n in sections) + b".shstrtab\0"
    body = bytearray()
    offsets = {}
    data_start = 64 + 56 * len(sections)
    for name, (_addr, data) in sections.items():
        offsets[name] = data_start + len(body)
        body += data + b"\0" * (-len(data) % 8)
    shstr_off = data_start + len(body)
    body += names
    shoff = data_start + len(body) + (-len(body) % 8)
    body += b"\0" * (-len(body) % 8)
    phdrs = b"".join(
        struct.pack("<IIQQQQQQ", 1, 5, offsets[n], a, a - 0xFFFFFFFF80000000, len(d), len(d), 0x1000)
        for n, (a, d) in sections.items()
    )
    shdrs = [bytes(64)]
    name_pos = 1
    for name, (addr, data) in sections.items():
        shdrs.append(struct.pack("<IIQQQQIIQQ", name_pos, 1, 2, addr, offsets[name], len(data), 0, 0, 8, 0))
        name_pos += len(name) + 1
    shdrs.append(struct.pack("<IIQQQQIIQQ", name_pos, 3, 0, 0, shstr_off, len(names), 0, 0, 1, 0))
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, BASE, 64, shoff, 0, 64, 56, len(sections), 64, len(shdrs), len(shdrs) - 1
    )
    return header + phdrs + bytes(body) + b"".join(shdrs)


def synthetic_vmlinux() -> bytes:
    syms = sample_symbols(600, base=BASE)
    rodata_addr = BASE + 0x1000000
    # the tables' size does not depend on the addresses, so a first build tells where the banner lands
    probe, _ = build_kallsyms([*syms, ("D", "linux_banner", 0), ("T", "_text", 0)], BASE, order="names-first")
    banner_at = rodata_addr + len(probe)
    syms_final = sorted([*syms, ("D", "linux_banner", banner_at), ("T", "_text", BASE)], key=lambda s: s[2])
    kallsyms_buf, _ = build_kallsyms(syms_final, BASE, order="names-first")
    assert rodata_addr + len(kallsyms_buf) == banner_at
    note = struct.pack("<III", 4, 20, 3) + b"GNU\0" + bytes(range(20))
    return _elf(
        {
            ".text": (BASE, b"\x90" * 64),
            ".rodata": (rodata_addr, kallsyms_buf + BANNER),
            ".notes": (BASE + 0x2000000, note),
            ".BTF": (BASE + 0x2001000, sample_btf()),
        }
    )


def _bzimage(payload: bytes) -> bytes:
    setup = bytearray(5 * 512)  # setup_sects = 4
    setup[0x1F1] = 4
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<II", setup, 0x248, 0x100, len(payload))
    return bytes(setup) + bytes(0x100) + payload + b"\0\0\0\0"


def _lz4_legacy(data: bytes) -> bytes:
    import lz4.block

    block = lz4.block.compress(data, store_size=False)
    return b"\x02\x21\x4c\x18" + struct.pack("<I", len(block)) + block


@pytest.mark.parametrize(
    "compress",
    [
        lambda d: lzma.compress(d, format=lzma.FORMAT_XZ),
        lambda d: __import__("zstandard").ZstdCompressor().compress(d),
        gzip.compress,
        bz2.compress,
        _lz4_legacy,
        lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE),
    ],
    ids=["xz", "zstd", "gzip", "bzip2", "lz4", "lzma"],
)
def test_bzimage_payloads_in_every_compression(tmp_path: Path, compress: object) -> None:
    elf = synthetic_vmlinux()
    path = tmp_path / "vmlinuz"
    path.write_bytes(_bzimage(compress(elf)))  # type: ignore[operator]
    image = KernelImage.open(path)
    assert image.data == elf
    assert image.build_id() == bytes(range(20)).hex()


def test_profile_from_image_then_save_load_and_isf(tmp_path: Path) -> None:
    path = tmp_path / "vmlinux"
    path.write_bytes(synthetic_vmlinux())
    profile = profile_from_image(path)
    assert profile.identity.release == "6.9.0-test"
    assert profile.symbol("linux_banner") > BASE and profile.symbol("fixed_percpu_data") == 0
    assert profile.types is not None and profile.types.member_offset("task_struct", "cred") == 32
    saved = tmp_path / "p.vmsprofile"
    profile.save(saved)
    loaded = KernelProfile.load(saved)
    assert loaded.identity == profile.identity and loaded.symbols.names == profile.symbols.names
    assert loaded.symbols.addresses == profile.symbols.addresses and loaded.symbols.types == profile.symbols.types
    assert loaded.types is not None and loaded.types.member_offset("task_struct", "mm") == 24
    assert loaded.relative_base_offset == profile.relative_base_offset
    # ISF out and back in: same offsets, sizes, enums, symbols
    isf_path = tmp_path / "k.json.xz"
    write_isf(profile, isf_path)
    doc = load_isf(isf_path)
    assert doc["metadata"]["format"].startswith("6.")
    again = profile_from_isf(isf_path)
    assert again.types is not None
    for struct_name, member in [
        ("task_struct", "pid"),
        ("task_struct", "mm"),
        ("task_struct", "cred"),
        ("cred", "uid"),
        ("task_struct", "tasks"),
    ]:
        assert again.types.member_offset(struct_name, member) == profile.types.member_offset(struct_name, member)
    assert again.types.struct_size("task_struct") == 96
    assert again.types.enum_values("pid_type")["PIDTYPE_MAX"] == 4
    assert again.identity.release == "6.9.0-test"
    assert again.symbol("linux_banner") == profile.symbol("linux_banner")
    flags = doc["user_types"]["task_struct"]["fields"]
    bitfield_holder = next(f for n, f in flags.items() if n.startswith("unnamed_field") and f["offset"] == 56)
    inner = doc["user_types"][bitfield_holder["type"]["name"]]["fields"]["pf_io"]
    assert inner["type"]["kind"] == "bitfield" and inner["type"]["bit_position"] == 5 and inner["type"]["bit_length"] == 3
    assert json.loads(json.dumps(to_isf(profile)))["symbols"]["linux_banner"]["constant_data"]


def test_corrupt_images_and_profiles_are_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"MZ" + bytes(1000))
    with pytest.raises(KernelImageError, match="bzImage"):
        KernelImage.open(bad)
    bad.write_bytes(_bzimage(b"\x13\x37" + bytes(64)))
    with pytest.raises(KernelImageError, match="compression"):
        KernelImage.open(bad)
    bad.write_bytes(_bzimage(b"\xfd7zXZ\x00garbage-not-xz"))
    with pytest.raises(KernelImageError, match="decompress"):
        KernelImage.open(bad)
    setup = bytearray(_bzimage(b"x"))
    struct.pack_into("<II", setup, 0x248, 0x100, 1 << 30)
    bad.write_bytes(bytes(setup))
    with pytest.raises(KernelImageError, match="outside"):
        KernelImage.open(bad)
    bad.write_bytes(b"VMSPROF1" + struct.pack("<I", 5) + b"{nope")
    with pytest.raises(ProfileError):
        KernelProfile.load(bad)
    bad.write_bytes(b"{}")
    with pytest.raises(ProfileError):
        load_isf(bad)


def test_build_id_notes_parser_is_bounded() -> None:
    assert parse_build_id(struct.pack("<III", 4, 3, 3) + b"GNU\0abc\0") == "616263"
    assert parse_build_id(struct.pack("<III", 1 << 30, 4, 3) + b"GNU\0") is None
    assert parse_build_id(b"\0" * 12 * 300) is None  # many empty notes: stops, no hang


def test_store_matches_by_banner_hint(tmp_path: Path) -> None:
    path = tmp_path / "vmlinux"
    path.write_bytes(synthetic_vmlinux())
    profile = profile_from_image(path)
    store = ProfileStore(tmp_path / "store")
    store.put(profile, banner_phys=0x2000)
    mem = BufferMemory({0: bytearray(0x10000)})
    assert store.match(mem) is None
    mem.write(0x2000, profile.identity.banner.encode() + b"\n\0")
    hit = store.match(mem)
    assert hit is not None and hit[1] == 0x2000 and hit[0].identity == profile.identity
    store.path_for(profile.identity.key).write_bytes(b"damaged")
    assert store.match(mem) is None  # a damaged cache entry is never trusted


def test_system_map_symbols_replace_kallsyms(tmp_path: Path) -> None:
    from vmsentinel.os.linux.profile.system_map import read_system_map

    path = tmp_path / "vmlinux"
    path.write_bytes(synthetic_vmlinux())
    from_kallsyms = profile_from_image(path)
    smap = tmp_path / "System.map"
    smap.write_text(
        "".join(
            f"{a:016x} {t} {n}\n"
            for n, t, a in zip(
                from_kallsyms.symbols.names, from_kallsyms.symbols.types, from_kallsyms.symbols.addresses, strict=True
            )
        )
    )
    from_map = profile_from_image(path, smap)
    assert from_map.symbols.names == from_kallsyms.symbols.names
    assert from_map.symbols.addresses == from_kallsyms.symbols.addresses
    assert from_map.sources["symbols"].startswith("System.map")
    placeholder = tmp_path / "System.map-debian"
    placeholder.write_text("ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n")
    with pytest.raises(ProfileError, match="placeholder"):
        read_system_map(placeholder)
    garbage = tmp_path / "garbage"
    garbage.write_text("this is not\na map\n")
    with pytest.raises(ProfileError, match=r"not a System\.map line"):
        read_system_map(garbage)
