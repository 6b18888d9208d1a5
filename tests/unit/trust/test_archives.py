"""The archive readers on hostile input, through a recording sink (no ELF analysis): names that
climb out of the root, member sizes that lie, floods of entries, budgets shared across streams."""

from __future__ import annotations

import gzip
import io
import stat
import tarfile
from pathlib import Path

import lz4.frame
import pytest

from vmsentinel.errors import AllowlistError
from vmsentinel.lab.initramfs import CpioWriter, Entry
from vmsentinel.trust import allowlist_build, archives
from vmsentinel.trust.allowlist import build_allowlist, guest_path
from vmsentinel.trust.archives import read_cpio, read_deb, read_initramfs, read_tar
from vmsentinel.trust.streams import Budget, BufferSource, Stream, raw_chunks

REG = stat.S_IFREG | 0o644


class Recorder:
    """An ArchiveSink that keeps every regular file's bytes by guest path."""

    def __init__(self, max_entries: int = 1 << 20) -> None:
        self.files: dict[str, bytes] = {}
        self.links: dict[str, str | None] = {}
        self.forgotten: list[str] = []
        self.entries = 0
        self.max_entries = max_entries

    def entry(self) -> None:
        self.entries += 1
        if self.entries > self.max_entries:
            raise AllowlistError(f"more than {self.max_entries} entries")

    def take(self, paths: list[str], size: int, stream: Stream) -> bytes:
        data = stream.read(size)
        self.record(paths, data)
        return data

    def record(self, paths: list[str], found: bytes | None) -> None:
        for path in paths:
            if found is not None:
                self.files[path] = found

    def forget(self, path: str) -> None:
        self.forgotten.append(path)
        self.files.pop(path, None)

    def link(self, path: str, target: str | None) -> None:
        self.links[path] = target


def _stream(data: bytes) -> Stream:
    return Stream(raw_chunks(BufferSource(data), 0, len(data)), Budget(1 << 30))


def _newc(entries: list[tuple[str, int, bytes]], *, claimed: dict[str, int] | None = None, trailer: bool = True) -> bytes:
    """A newc archive; ``claimed`` overrides the size a header states for a name."""
    out = bytearray()
    for name, mode, data in [*entries, *([("TRAILER!!!", 0, b"")] if trailer else [])]:
        namez = name.encode() + b"\0"
        size = (claimed or {}).get(name, len(data))
        fields = [1, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(namez), 0]
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + namez
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def _tar(members: list[tuple[str, bytes]], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = archives.AR_MAGIC
    for name, data in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data
        out += b"\n" if len(data) % 2 else b""
    return out


# ------------------------------------------------------------------------------------------
# names


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("../../../etc/shadow", "/etc/shadow"),
        ("./usr/bin/../../../../bin/x", "/bin/x"),
        ("/abs/olute", "/abs/olute"),
        ("a//b/./c", "/a/b/c"),
        (".", None),
        ("..", None),
        ("", None),
        ("x" * 5000, None),
    ],
)
def test_names_become_guest_paths_that_cannot_climb_out(name: str, path: str | None) -> None:
    assert guest_path(name) == path


def test_traversal_names_in_cpio_and_tar_land_inside_the_guest_root() -> None:
    cpio = Recorder()
    read_cpio(_stream(_newc([("../../etc/cron.d/x", REG, b"one"), ("..", REG, b"skipped")])), cpio)
    assert cpio.files == {"/etc/cron.d/x": b"one"}
    tar = Recorder()
    read_tar(_stream(_tar([("../../../usr/bin/evil", b"two"), ("/../../lib/x.so", b"three")])), tar)
    assert tar.files == {"/usr/bin/evil": b"two", "/lib/x.so": b"three"}


def test_a_tar_hard_link_out_of_the_root_names_a_guest_path() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("./bin/ln")
        info.type, info.linkname = tarfile.LNKTYPE, "../../../../etc/passwd"
        tf.addfile(info)
    sink = Recorder()
    read_tar(_stream(buf.getvalue()), sink)
    assert sink.links == {"/bin/ln": "/etc/passwd"}


# ------------------------------------------------------------------------------------------
# sizes that lie


def test_a_cpio_entry_claiming_more_than_is_there_names_the_entry() -> None:
    data = _newc([("bin/liar", REG, b"short")], claimed={"bin/liar": 10_000}, trailer=False)
    with pytest.raises(AllowlistError, match=r"cpio entry 'bin/liar': unexpected end of data \(10000 bytes wanted"):
        read_cpio(_stream(data), Recorder())


def test_a_cpio_entry_claiming_less_leaves_a_bad_header_with_its_offset() -> None:
    data = _newc([("bin/liar", REG, b"x" * 64), ("bin/next", REG, b"y")], claimed={"bin/liar": 8})
    with pytest.raises(AllowlistError, match=r"no newc cpio header at archive offset 0x80 \(after entry 'bin/liar'\)"):
        read_cpio(_stream(data), Recorder())


def test_a_cpio_name_size_that_lies() -> None:
    header = b"070701" + b"".join(b"%08X" % f for f in [1, REG, 0, 0, 1, 0, 0, 0, 0, 0, 0, 200, 0])
    with pytest.raises(AllowlistError, match="unexpected end of data"):
        read_cpio(_stream(header + b"short\0"), Recorder())


def test_a_tar_member_claiming_more_than_is_there_names_the_member() -> None:
    good = _tar([("./usr/bin/liar", b"z" * 600)])
    info = tarfile.TarInfo("./usr/bin/liar")
    info.size = 100_000
    lying = info.tobuf(tarfile.GNU_FORMAT) + good[512:1536]
    with pytest.raises(AllowlistError, match=r"tar entry './usr/bin/liar': unexpected end of data"):
        read_tar(_stream(lying), Recorder())


def test_a_pax_size_that_lies_or_is_not_a_number() -> None:
    def pax(size: str) -> bytes:
        record = f"size={size}\n"
        length = len(record) + 3
        length += len(str(length)) - 2
        body = f"{length} {record}".encode()
        header = tarfile.TarInfo("./PaxHeaders/x")
        header.type, header.size = tarfile.XHDTYPE, len(body)
        member = tarfile.TarInfo("./x")
        member.size = 4
        return header.tobuf(tarfile.USTAR_FORMAT) + body.ljust(512, b"\0") + member.tobuf(tarfile.USTAR_FORMAT) + b"data"

    with pytest.raises(AllowlistError, match=r"tar entry './x': unexpected end of data"):
        read_tar(_stream(pax("99999")), Recorder())
    with pytest.raises(AllowlistError, match="bad pax size"):
        read_tar(_stream(pax("-1")), Recorder())
    with pytest.raises(AllowlistError, match="more than the limit"):
        read_tar(_stream(pax("9" * 19)), Recorder())


def test_a_pax_record_whose_length_lies() -> None:
    body = b"999 path=x\n"
    header = tarfile.TarInfo("./PaxHeaders/x")
    header.type, header.size = tarfile.XHDTYPE, len(body)
    with pytest.raises(AllowlistError, match="malformed pax record"):
        read_tar(_stream(header.tobuf(tarfile.USTAR_FORMAT) + body.ljust(512, b"\0")), Recorder())
    header.size = 3
    with pytest.raises(AllowlistError, match="malformed pax record"):
        read_tar(_stream(header.tobuf(tarfile.USTAR_FORMAT) + b"0 x".ljust(512, b"\0")), Recorder())


def test_ar_members_whose_sizes_lie() -> None:
    deb = _ar([("debian-binary", b"2.0\n"), ("data.tar", _tar([("./x", b"1")]))])
    cut = deb[:-100]
    with pytest.raises(AllowlistError, match=r"ar member 'data.tar' claims \d+ bytes, past the end of the file"):
        read_deb(BufferSource(cut), Recorder())
    too_many = _ar([(f"m{i}", b"") for i in range(archives.MAX_AR_MEMBERS + 1)])
    with pytest.raises(AllowlistError, match="more than 64 ar members"):
        read_deb(BufferSource(too_many), Recorder())
    with pytest.raises(AllowlistError, match="unknown compression"):
        read_deb(BufferSource(_ar([("data.tar.lz4", b"")])), Recorder())


def test_a_compressed_deb_member_that_is_truncated_names_the_member() -> None:
    data = gzip.compress(_tar([("./usr/bin/x", bytes(5000))]))
    with pytest.raises(AllowlistError, match=r"member 'data.tar.gz': tar .*gzip data at offset 0x\w+ is truncated"):
        read_deb(BufferSource(_ar([("data.tar.gz", data[: len(data) // 2])])), Recorder())


# ------------------------------------------------------------------------------------------
# floods of entries


def test_a_cpio_with_a_huge_count_of_entries_stops_at_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allowlist_build, "MAX_ENTRIES", 1000)
    flood = _newc([(f"d{i}", stat.S_IFDIR | 0o755, b"") for i in range(5000)])
    path = tmp_path / "flood.cpio"
    path.write_bytes(gzip.compress(flood))
    with pytest.raises(AllowlistError, match=r"flood\.cpio: .*more than 1000 entries"):
        build_allowlist([path])


def test_a_tar_with_a_huge_count_of_entries_stops_at_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allowlist_build, "MAX_ENTRIES", 1000)
    path = tmp_path / "flood.deb"
    path.write_bytes(_ar([("debian-binary", b"2.0\n"), ("data.tar", _tar([(f"./f{i}", b"") for i in range(3000)]))]))
    with pytest.raises(AllowlistError, match=r"flood\.deb: member 'data.tar': more than 1000 entries"):
        build_allowlist([path])


def test_the_entry_limit_counts_every_archive_of_one_initramfs() -> None:
    one = gzip.compress(_newc([(f"f{i}", REG, b"") for i in range(600)]))
    with pytest.raises(AllowlistError, match="more than 1000 entries"):
        read_initramfs(BufferSource(one + one), Recorder(max_entries=1000))


# ------------------------------------------------------------------------------------------
# initramfs streams


def test_the_unpacked_budget_is_shared_by_every_stream_of_one_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archives, "MAX_UNPACKED_BYTES", 3 << 20)
    member = gzip.compress(_newc([("zeros", REG, bytes(2 << 20))]))
    read_initramfs(BufferSource(member), Recorder())  # one alone fits
    with pytest.raises(AllowlistError, match=r"gzip data at offset 0x\w+: .*decompression bomb"):
        read_initramfs(BufferSource(member + member), Recorder())


def test_an_lz4_frame_that_ends_the_file_is_read() -> None:
    """lz4.frame reports no leftover input as None: that once crashed the reader with a TypeError."""
    writer = CpioWriter()
    writer.add(Entry("etc/motd", REG, b"hello"))
    sink = Recorder()
    read_initramfs(BufferSource(lz4.frame.compress(writer.finish())), sink)
    assert sink.files == {"/etc/motd": b"hello"}


def test_a_truncated_compressed_initramfs_names_the_codec_and_offset() -> None:
    archive = gzip.compress(_newc([("bin/x", REG, bytes(range(256)) * 64)]))
    with pytest.raises(AllowlistError, match=r"^cpio entry 'bin/x': gzip data at offset 0x0 is truncated"):
        read_initramfs(BufferSource(archive[:-40]), Recorder())
