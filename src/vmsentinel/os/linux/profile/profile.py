"""The kernel profile: one kernel build's types, symbols and identity.

Symbols are kept at their *link-time* addresses, so a profile describes a build,
not one boot of it; the KASLR slide of a running guest belongs to its
:class:`~vmsentinel.os.linux.kernel_locate.KernelLocation`. A profile is built from
the kernel image (``vmlinuz``/``vmlinux``), from guest memory alone, or from a
Volatility ISF, and saved in one file::

    profile = profile_from_image("/boot/vmlinuz-6.12.9-amd64")
    profile.symbol("init_task"); profile.types.member_offset("task_struct", "pid")
    profile.save(path); KernelProfile.load(path)
"""

from __future__ import annotations

import bisect
import itertools
import json
import mmap
import struct
import time
from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmsentinel.errors import ProfileError
from vmsentinel.os.linux.profile.types import BtfTypes, IsfTypes, TypeInfo
from vmsentinel.paths import write_atomic

if TYPE_CHECKING:  # building a profile (not loading one) needs the image, kallsyms and BTF code
    from vmsentinel.os.linux.profile import kallsyms
    from vmsentinel.os.linux.profile.btf import Btf
    from vmsentinel.os.linux.profile.kernel_image import KernelImage

MAGIC = b"VMSPROF1"
FORMAT_VERSION = 1
#: the address a symbol table's hot lookups give a name it does not hold
MISSING = -1


@dataclass(frozen=True)
class KernelIdentity:
    """What names one kernel build."""

    banner: str
    release: str
    build_id: str | None

    @property
    def key(self) -> str:
        """The cache key: the GNU build id, or a hash of the banner when there is none."""
        if self.build_id:
            return self.build_id
        import hashlib  # rarely needed: Debian kernels carry a build id

        return "banner-" + hashlib.sha256(self.banner.encode()).hexdigest()[:32]


class SymbolTable:
    """Kernel symbols at link-time addresses, in kallsyms order, with their type letters.

    The columns are kept compact (names in one blob with an offset array, addresses in an
    ``array``): a process watching many guests of one build holds one table of ~150 000
    symbols in a few MB, not the tens of MB of Python strings and ints. A table loaded from the
    cache decodes its columns only when something needs more than the ``hot`` lookups saved
    beside it: a warm ``ps`` never pays for 150 000 names.
    """

    def __init__(self, names: list[str], types: str, addresses: list[int]) -> None:
        if not len(names) == len(types) == len(addresses):
            raise ProfileError("symbol table columns differ in length")
        self._columns: _Columns | None = _Columns.of("\n".join(names).encode(), types, array("Q", addresses))
        self._loader: Callable[[], _Columns] | None = None
        self._count = len(names)
        self._by_name: array[int] | None = None
        self._by_address: dict[int, tuple[array[int], array[int]]] = {}
        #: addresses of symbols looked up before (saved beside the cached profile): no full index needed;
        #: MISSING marks a name known to be absent
        self.hot: dict[str, int] = {}

    @classmethod
    def lazy(cls, count: int, loader: Callable[[], _Columns]) -> SymbolTable:
        table = cls([], "", [])
        table._columns, table._loader, table._count = None, loader, count
        return table

    def _load(self) -> _Columns:
        if self._columns is None:
            assert self._loader is not None
            columns = self._loader()
            if not self._count == len(columns.starts) - 1 == len(columns.types) == len(columns.addresses):
                raise ProfileError("symbol table columns differ in length")
            self._columns, self._loader = columns, None
        return self._columns

    def names_blob(self) -> bytes:
        """Every name, joined by newlines (as saved)."""
        return self._load().joined()

    def name_at(self, index: int) -> str:
        """The name of the ``index``-th symbol (kallsyms order)."""
        return self._load().name(index)

    @property
    def names(self) -> list[str]:
        """Every name, decoded (for exports; lookups use :meth:`address` and :meth:`name_at`)."""
        columns = self._load()
        return [columns.name(i) for i in range(self._count)]

    @property
    def types(self) -> str:
        return self._load().types

    @property
    def addresses(self) -> array[int] | memoryview:
        return self._load().addresses

    def __len__(self) -> int:
        return self._count

    def by_address(self, lowest: int = 0) -> tuple[array[int], array[int]]:
        """Link-time addresses from ``lowest`` up, sorted, and each one's symbol index: built once per
        table (one per kernel build in a process) and shared by the resolvers of every guest of it."""
        cached = self._by_address.get(lowest)
        if cached is None:
            addresses = self.addresses
            order = sorted((i for i in range(self._count) if addresses[i] >= lowest), key=addresses.__getitem__)
            cached = self._by_address[lowest] = (array("Q", (addresses[i] for i in order)), array("I", order))
        return cached

    def address(self, name: str) -> int:
        hot = self.hot.get(name)
        if hot is not None:
            if hot == MISSING:
                raise ProfileError(f"no symbol {name!r} in the profile")
            return hot
        columns = self._load()
        if self._by_name is None:  # indexes sorted by name; a stable sort keeps the first of a repeated name first
            self._by_name = array("I", sorted(range(self._count), key=columns.raw_name))
        wanted = name.encode()
        i = bisect.bisect_left(self._by_name, wanted, key=columns.raw_name)
        found = None
        if i < len(self._by_name) and columns.raw_name(self._by_name[i]) == wanted:
            found = columns.addresses[self._by_name[i]]
        self.hot[name] = MISSING if found is None else found
        if found is None:
            raise ProfileError(f"no symbol {name!r} in the profile")
        return found

    def __contains__(self, name: str) -> bool:
        try:
            self.address(name)
            return True
        except ProfileError:
            return False

    @classmethod
    def from_kallsyms(cls, syms: kallsyms.KernelSymbols) -> SymbolTable:
        return cls(syms.names, syms.types, syms.addresses)


@dataclass(frozen=True)
class _Columns:
    """A symbol table's columns: names joined by newlines (``blob`` from ``base``: bytes, or the mapped
    profile file itself; ``starts`` has each name's offset, and one past the end), type letters,
    link-time addresses (an array, or a view of the mapped file)."""

    blob: bytes | mmap.mmap
    starts: array[int]
    types: str
    addresses: array[int] | memoryview
    base: int = 0

    @classmethod
    def of(
        cls, blob: bytes | mmap.mmap, types: str, addresses: array[int] | memoryview, base: int = 0, size: int = -1
    ) -> _Columns:
        size = len(blob) - base if size < 0 else size
        text = blob if isinstance(blob, bytes) and base == 0 and size == len(blob) else bytes(blob[base : base + size])
        lengths = (len(part) + 1 for part in text.split(b"\n")) if len(addresses) else iter(())
        return cls(blob, array("I", itertools.accumulate(lengths, initial=0)), types, addresses, base)

    def raw_name(self, index: int) -> bytes:
        return bytes(self.blob[self.base + self.starts[index] : self.base + self.starts[index + 1] - 1])

    def name(self, index: int) -> str:
        return self.raw_name(index).decode(errors="replace")

    def joined(self) -> bytes:
        """Every name joined by newlines, as saved."""
        return bytes(self.blob[self.base : self.base + max(0, self.starts[-1] - 1)])


@dataclass
class KernelProfile:
    """Types + symbols + identity of one kernel build, and where each came from."""

    identity: KernelIdentity
    types: TypeInfo | None
    symbols: SymbolTable
    sources: dict[str, str]
    #: offset of kallsyms_relative_base from _text: lets a later look find the KASLR slide in microseconds
    relative_base_offset: int | None = None
    build_seconds: float = 0.0
    btf_blob: bytes | None = field(default=None, repr=False)
    isf: dict[str, Any] | None = field(default=None, repr=False)
    #: member offsets and struct sizes already resolved ("struct.member" / "struct"), saved with the cache
    hot_layout: dict[str, int] = field(default_factory=dict, repr=False)

    def symbol(self, name: str) -> int:
        return self.symbols.address(name)

    @property
    def btf(self) -> Btf | None:
        return self.types.btf if isinstance(self.types, BtfTypes) else None

    def type_count(self) -> int:
        return self.types.count() if self.types is not None else 0

    # -- persistence -------------------------------------------------------
    def save(self, path: str | Path) -> None:
        blobs: dict[str, bytes] = {
            "sym_names": self.symbols.names_blob(),
            "sym_types": self.symbols.types.encode("latin-1"),
            "sym_addresses": array("Q", self.symbols.addresses).tobytes(),
        }
        btf = self.btf
        if btf is not None:
            blobs["btf"] = btf.data
            blobs["btf_offsets"], blobs["btf_name_offs"] = btf.index_bytes()
        if self.isf is not None:
            blobs["isf"] = json.dumps(self.isf).encode()
        header = {
            "format": FORMAT_VERSION,
            "identity": asdict(self.identity),
            "sources": self.sources,
            "types_source": self.types.source if self.types is not None else None,
            "relative_base_offset": self.relative_base_offset,
            "build_seconds": self.build_seconds,
            "counts": {"symbols": len(self.symbols), "types": self.type_count()},
            "blobs": {},
        }
        offset = 0
        for name, data in blobs.items():
            header["blobs"][name] = [offset, len(data)]  # type: ignore[index]
            offset += len(data)
        head = json.dumps(header).encode()
        write_atomic(Path(path), MAGIC + struct.pack("<I", len(head)) + head, *blobs.values())

    @classmethod
    def load(cls, path: str | Path) -> KernelProfile:
        """Open a saved profile. The file is mapped, not read: symbols and types are decoded
        on first use, so a look that the hot sidecar already answers touches only the header."""
        try:
            with open(path, "rb") as f:
                data: bytes | mmap.mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            data = b""
        if data[:8] != MAGIC or len(data) < 12:
            raise ProfileError(f"{path} is not a vmsentinel profile")
        (hlen,) = struct.unpack_from("<I", data, 8)
        try:
            header = json.loads(data[12 : 12 + hlen])
        except ValueError as exc:
            raise ProfileError(f"{path}: corrupt profile header") from exc
        if header.get("format") != FORMAT_VERSION:
            raise ProfileError(f"{path}: profile format {header.get('format')} is not {FORMAT_VERSION}")
        body_start = 12 + hlen
        spans: dict[str, list[int]] = header["blobs"]
        for name, (start, length) in spans.items():
            if start < 0 or length < 0 or body_start + start + length > len(data):
                raise ProfileError(f"{path}: blob {name} lies outside the file")

        def blob(name: str) -> bytes | None:
            span = spans.get(name)
            return None if span is None else data[body_start + span[0] : body_start + span[0] + span[1]]

        def mapped(name: str) -> memoryview:
            """A blob as a view of the mapped file: processes mapping one profile share these pages."""
            start, length = spans.get(name, (0, 0))
            return memoryview(data)[body_start + start : body_start + start + length]

        def symbol_columns() -> _Columns:
            try:
                addresses = mapped("sym_addresses").cast("Q")
            except TypeError as exc:
                raise ProfileError(f"{path}: symbol addresses are malformed: {exc}") from None
            names = spans.get("sym_names", [0, 0])
            return _Columns.of(data, (blob("sym_types") or b"").decode("latin-1"), addresses, body_start + names[0], names[1])

        symbols = SymbolTable.lazy(int(header.get("counts", {}).get("symbols", 0)), symbol_columns)
        types: TypeInfo | None = None
        isf = None
        if "btf" in spans:
            from vmsentinel.os.linux.profile.btf import Btf

            btf_at, btf_length = spans["btf"]
            types = BtfTypes(
                lambda: Btf(data, (mapped("btf_offsets"), mapped("btf_name_offs")), base=body_start + btf_at, length=btf_length),
                header["types_source"],
            )
        elif (raw_isf := blob("isf")) is not None:
            isf = json.loads(raw_isf)
            types = IsfTypes(isf, header["types_source"])
        return cls(
            KernelIdentity(**header["identity"]),
            types,
            symbols,
            header["sources"],
            header.get("relative_base_offset"),
            header.get("build_seconds", 0.0),
            None,
            isf,
        )


def profile_from_image(path: str | Path, system_map: str | Path | None = None) -> KernelProfile:
    """Build a profile from a ``vmlinuz``/``vmlinux`` alone: BTF from ``.BTF``, symbols from kallsyms in
    ``.rodata`` (or from a ``System.map`` when one is given)."""
    from vmsentinel.os.linux.profile.kernel_image import KernelImage

    started = time.perf_counter()
    return profile_from_kernel_image(KernelImage.open(path), path, system_map, started)


def profile_from_kernel_image(
    image: KernelImage, path: str | Path, system_map: str | Path | None = None, started: float | None = None
) -> KernelProfile:
    """:func:`profile_from_image` of an image already open (its bytes are read once)."""
    from vmsentinel.os.linux.profile import kallsyms
    from vmsentinel.os.linux.profile.btf import Btf

    started = time.perf_counter() if started is None else started
    rodata = image.sections.get(".rodata")
    if rodata is None:
        raise ProfileError(f"{path}: no .rodata section")
    buf = image.section(".rodata")
    layout = kallsyms.locate(buf)
    if system_map is not None:
        from vmsentinel.os.linux.profile.system_map import read_system_map

        table = read_system_map(system_map)
    else:
        table = SymbolTable.from_kallsyms(kallsyms.decode(buf, layout))
    banner_at = table.address("linux_banner")
    raw = image.read_virtual(banner_at, 512, allow_short=True)
    banner = raw.split(b"\n", 1)[0].decode(errors="replace")
    release = banner.split()[2] if banner.startswith("Linux version ") else "unknown"
    btf = Btf(image.section(".BTF")) if ".BTF" in image.sections else None
    sources = {
        "symbols": f"System.map {system_map}" if system_map else f"kallsyms in {path}",
        "types": f"BTF in {path}" if btf else "none",
    }
    return KernelProfile(
        identity=KernelIdentity(banner, release, image.build_id()),
        types=BtfTypes(btf, sources["types"]) if btf else None,
        symbols=table,
        sources=sources,
        relative_base_offset=rodata.address + layout.relative_base_at - table.address("_text"),
        build_seconds=time.perf_counter() - started,
        btf_blob=btf.data if btf else None,
    )
