"""DWARF types (as GCC writes them into a PE file) turned into Volatility 3 ISF: ``base_types``,
``user_types`` (structs and unions with their fields), ``enums`` and, from the COFF symbol table,
``symbols`` as offsets from the image base (RVAs), as Windows ISF files have them.

Only the compile units' top-level entries are visited (GCC's sibling links skip function bodies), and
a struct is converted once, from the first complete definition met: the kernel's headers repeat in
every unit. Typedefs, ``const`` and ``volatile`` are looked through (ISF has none); anonymous structs
and unions get a name from their place (``__anon_<offset>``) and their field is marked anonymous, as
in Volatility's own files. Chains of type references are followed to a fixed depth.

    doc = isf_from_pe(PeDebug.open("ntoskrnl.exe"))
    doc["user_types"]["_EPROCESS"]["fields"]["UniqueProcessId"]["offset"]    # 0x94 on ReactOS
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

from vmsentinel.errors import ProfileError
from vmsentinel.os.windows.profile.pe_debug import PeDebug
from vmsentinel.version import __version__

ISF_FORMAT = "6.2.0"
MAX_DEPTH = 32
DW_OP_PLUS_UCONST = 0x23
_BASE_KIND = {0x02: "bool", 0x04: "float", 0x05: "int", 0x06: "char", 0x07: "int", 0x08: "char"}  # DW_ATE_*
_SIGNED = {0x05, 0x06}
_STRUCTS = {"DW_TAG_structure_type": "struct", "DW_TAG_union_type": "union", "DW_TAG_class_type": "struct"}
_SEE_THROUGH = {"DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type", "DW_TAG_restrict_type"}


def dwarf_of(debug: PeDebug) -> Any:
    """pyelftools' ``DWARFInfo`` over the PE file's ``.debug_*`` sections."""
    from elftools.dwarf.dwarfinfo import DebugSectionDescriptor, DwarfConfig, DWARFInfo

    def section(name: str) -> Any:
        data = debug.section(name)
        return None if data is None else DebugSectionDescriptor(io.BytesIO(data), name, None, len(data), 0)

    if section(".debug_info") is None or section(".debug_abbrev") is None:
        raise ProfileError(f"{debug.path}: no DWARF debug information (.debug_info, .debug_abbrev)")
    names = ("aranges", "abbrev", "str", "loc", "ranges", "line")
    secs = {f"debug_{n}_sec": section(f".debug_{n}") for n in names}
    return DWARFInfo(
        config=DwarfConfig(little_endian=True, machine_arch="x86", default_address_size=4 if debug.machine == 0x14C else 8),
        debug_info_sec=section(".debug_info"),
        debug_frame_sec=None,
        eh_frame_sec=None,
        debug_pubtypes_sec=None,
        debug_pubnames_sec=None,
        debug_addr_sec=None,
        debug_str_offsets_sec=None,
        debug_line_str_sec=None,
        debug_loclists_sec=None,
        debug_rnglists_sec=None,
        debug_sup_sec=None,
        gnu_debugaltlink_sec=None,
        debug_types_sec=None,
        **secs,
    )


def _name(die: Any) -> str | None:
    attr = die.attributes.get("DW_AT_name")
    if attr is None:
        return None
    value = attr.value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _int(die: Any, name: str, default: int | None = None) -> int | None:
    attr = die.attributes.get(name)
    return attr.value if attr is not None and isinstance(attr.value, int) else default


def member_offset(die: Any) -> int:
    """``DW_AT_data_member_location``: a constant, or (DWARF 2) ``DW_OP_plus_uconst N`` as a block."""
    attr = die.attributes.get("DW_AT_data_member_location")
    if attr is None:
        return 0
    if isinstance(attr.value, int):
        return attr.value
    block = list(attr.value)
    if not block or block[0] != DW_OP_PLUS_UCONST:
        raise ProfileError(f"member location {block!r} is not DW_OP_plus_uconst")
    value, shift = 0, 0
    for byte in block[1:]:
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return value


class _Converter:
    def __init__(self, progress: Callable[[int, int], None] | None = None) -> None:
        self.base_types: dict[str, Any] = {
            "void": {"kind": "void", "size": 0, "signed": False, "endian": "little"},
            "pointer": {"kind": "int", "size": 4, "signed": False, "endian": "little"},
        }
        self.user_types: dict[str, Any] = {}
        self.enums: dict[str, Any] = {}
        self._anonymous: dict[int, str] = {}
        self.progress = progress

    def run(self, dwarf: Any, units: int) -> None:
        for number, cu in enumerate(dwarf.iter_CUs()):
            for die in cu.get_top_DIE().iter_children():
                tag = die.tag
                if tag in _STRUCTS:
                    name = _name(die)
                    if name and name not in self.user_types and "DW_AT_declaration" not in die.attributes:
                        self._struct(die, name)
                elif tag == "DW_TAG_enumeration_type":
                    name = _name(die)
                    if name and name not in self.enums and "DW_AT_declaration" not in die.attributes:
                        self._enum(die, name)
                elif tag == "DW_TAG_base_type":
                    self._base(die)
            if self.progress is not None:
                self.progress(number + 1, units)

    def _base(self, die: Any) -> str:
        name = _name(die) or "int"
        if name not in self.base_types:
            encoding = _int(die, "DW_AT_encoding", 0x05) or 0x05
            self.base_types[name] = {
                "kind": _BASE_KIND.get(encoding, "int"),
                "size": _int(die, "DW_AT_byte_size", 0),
                "signed": encoding in _SIGNED,
                "endian": "little",
            }
        return name

    def _enum(self, die: Any, name: str) -> None:
        constants = {}
        for child in die.iter_children():
            if child.tag == "DW_TAG_enumerator":
                value = _int(child, "DW_AT_const_value", 0)
                constants[_name(child) or f"value_{value}"] = value
        size = _int(die, "DW_AT_byte_size", 4) or 4
        self.enums[name] = {"size": size, "base": "int" if size == 4 else "long long", "constants": constants}

    def _struct(self, die: Any, name: str) -> None:
        kind = _STRUCTS[die.tag]
        entry: dict[str, Any] = {"kind": kind, "size": _int(die, "DW_AT_byte_size", 0), "fields": {}}
        self.user_types[name] = entry  # before the fields: a member may point back at the struct
        size = entry["size"] or 0
        for child in die.iter_children():
            if child.tag != "DW_TAG_member":
                continue
            offset = 0 if kind == "union" else member_offset(child)
            typ = self._type(child)
            field_name = _name(child)
            bits = _int(child, "DW_AT_bit_size")
            if bits is not None:
                storage = _int(child, "DW_AT_byte_size") or typ_size(typ, self)
                bit_offset = _int(child, "DW_AT_bit_offset", 0) or 0  # DWARF 2: from the storage unit's top bit
                typ = {"kind": "bitfield", "bit_length": bits, "bit_position": storage * 8 - bit_offset - bits, "type": typ}
            member: dict[str, Any] = {"offset": offset, "type": typ}
            if field_name is None:
                field_name = f"__unnamed_{offset:x}_{len(entry['fields'])}"
                member["anonymous"] = True
            entry["fields"][field_name] = member
        if size == 0 and entry["fields"]:
            entry["size"] = max(f["offset"] for f in entry["fields"].values())

    def _type(self, die: Any, depth: int = 0) -> dict[str, Any]:
        """The ISF type of what ``die``'s ``DW_AT_type`` refers to (``void`` when there is none)."""
        if depth > MAX_DEPTH:
            raise ProfileError(f"type references nest deeper than {MAX_DEPTH} at DIE {die.offset:#x}")
        if "DW_AT_type" not in die.attributes:
            return {"kind": "base", "name": "void"}
        target = die.get_DIE_from_attribute("DW_AT_type")
        tag = target.tag
        if tag in _SEE_THROUGH:
            return self._type(target, depth + 1)
        if tag == "DW_TAG_pointer_type" or tag == "DW_TAG_reference_type":
            return {"kind": "pointer", "subtype": self._type(target, depth + 1)}
        if tag == "DW_TAG_base_type":
            return {"kind": "base", "name": self._base(target)}
        if tag in _STRUCTS:
            name = _name(target)
            if name is None:
                name = self._anonymous.get(target.offset)
                if name is None:
                    name = self._anonymous[target.offset] = f"__anon_{target.offset:x}"
                    self._struct(target, name)
            elif name not in self.user_types and "DW_AT_declaration" not in target.attributes:
                self._struct(target, name)
            return {"kind": _STRUCTS[tag], "name": name}
        if tag == "DW_TAG_enumeration_type":
            name = _name(target) or f"__anon_enum_{target.offset:x}"
            if name not in self.enums:
                self._enum(target, name)
            return {"kind": "enum", "name": name}
        if tag == "DW_TAG_array_type":
            return self._array(target, depth)
        if tag == "DW_TAG_subroutine_type":
            return {"kind": "function"}
        return {"kind": "base", "name": "void"}

    def _array(self, die: Any, depth: int) -> dict[str, Any]:
        counts = []
        for child in die.iter_children():
            if child.tag == "DW_TAG_subrange_type":
                upper = _int(child, "DW_AT_upper_bound")
                count = _int(child, "DW_AT_count")
                counts.append(count if count is not None else (upper + 1 if upper is not None and upper >= 0 else 0))
        typ = self._type(die, depth + 1)
        for count in reversed(counts or [0]):  # int a[2][3]: an array of 2 arrays of 3
            typ = {"kind": "array", "count": count, "subtype": typ}
        return typ


def typ_size(typ: dict[str, Any], conv: _Converter) -> int:
    kind = typ.get("kind")
    if kind == "base":
        return int(conv.base_types.get(typ.get("name", ""), {}).get("size", 4))
    if kind == "enum":
        return int(conv.enums.get(typ.get("name", ""), {}).get("size", 4))
    return 4


def isf_from_pe(debug: PeDebug, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """An ISF document from a PE file's DWARF types and COFF symbols (symbol addresses are RVAs)."""
    conv = _Converter(progress)
    try:
        dwarf = dwarf_of(debug)
        units = sum(1 for _ in dwarf.iter_CUs()) if progress is not None else 0
        conv.run(dwarf, units)
    except ProfileError:
        raise
    except Exception as exc:  # pyelftools and construct raise many kinds (even AssertionError) on bad input
        raise ProfileError(f"{debug.path}: malformed DWARF ({type(exc).__name__}: {exc})") from None
    return {
        "metadata": {
            "format": ISF_FORMAT,
            "producer": {"name": "vmsentinel", "version": __version__, "datetime": time.strftime("%Y-%m-%dT%H:%M:%S")},
            "windows": {
                "pe": {
                    "file": debug.path.name,
                    "image_base": debug.image_base,
                    "size_of_image": debug.size_of_image,
                    "timestamp": debug.timestamp,
                    "machine": debug.machine,
                    "layout": debug.layout,
                }
            },
        },
        "base_types": conv.base_types,
        "user_types": conv.user_types,
        "enums": conv.enums,
        "symbols": {name: {"address": rva} for name, rva in sorted(debug.symbols.items())},
    }
