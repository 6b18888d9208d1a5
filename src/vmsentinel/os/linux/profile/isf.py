"""Volatility 3 ISF (Intermediate Symbol Format) out of and into profiles.

Export turns BTF into ISF ``base_types``/``user_types``/``enums`` and kallsyms
into ``symbols`` (link-time addresses, as Volatility expects: it finds the
KASLR shift itself), with ``linux_banner``'s bytes as ``constant_data`` so
Volatility matches the file to a memory image by banner. BTF describes only
per-CPU variables, so the few global variables plugins start from get their
types from a short table of well-known kernel globals.

Import reads an ISF file (plain or ``.json.xz``) so kernels without BTF can
use Volatility symbol packs::

    doc = to_isf(profile); json.dump(doc, f)
    profile = profile_from_isf("ubuntu-5.4.json.xz")
"""

from __future__ import annotations

import base64
import json
import lzma
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vmsentinel.errors import BtfError, ProfileError
from vmsentinel.os.linux.profile.btf import MAX_CHAIN, Btf, Kind
from vmsentinel.os.linux.profile.profile import KernelIdentity, KernelProfile, SymbolTable
from vmsentinel.os.linux.profile.types import IsfTypes
from vmsentinel.os.types import load_isf
from vmsentinel.version import __version__

ISF_FORMAT = "6.2.0"

#: types of global variables that BTF does not describe but plugins start from
WELL_KNOWN_GLOBALS: dict[str, tuple[str, str]] = {
    "init_task": ("struct", "task_struct"),
    "init_mm": ("struct", "mm_struct"),
    "modules": ("struct", "list_head"),
    "init_pid_ns": ("struct", "pid_namespace"),
    "init_net": ("struct", "net"),
    "init_uts_ns": ("struct", "uts_namespace"),
    "module_kset": ("pointer", "kset"),
    "mod_tree": ("struct", "mod_tree_root"),
    "idt_table": ("array256", "gate_struct"),
    "sys_call_table": ("array_ptr", "void"),
    "ia32_sys_call_table": ("array_ptr", "void"),
    "x32_sys_call_table": ("array_ptr", "void"),
    "tcp_hashinfo": ("struct", "inet_hashinfo"),
    "udp_table": ("struct", "udp_table"),
    "net_namespace_list": ("struct", "list_head"),
    "super_blocks": ("struct", "list_head"),
    "jiffies": ("base", "unsigned long"),
    "tainted_mask": ("base", "unsigned long"),
    "mount_hashtable": ("pointer", "hlist_head"),
    "prb": ("pointer", "printk_ringbuffer"),
    "taint_flags": ("array_by_extent", "taint_flag"),
}


class _Exporter:
    def __init__(self, btf: Btf) -> None:
        self.btf = btf
        self.base_types: dict[str, Any] = {
            "pointer": {"kind": "int", "size": 8, "signed": False, "endian": "little"},
            "void": {"kind": "void", "size": 0, "signed": False, "endian": "little"},
        }
        self.user_types: dict[str, Any] = {}
        self.enums: dict[str, Any] = {}
        self._struct_names: dict[int, str] = {}
        self._pending: list[int] = []

    def struct_name(self, type_id: int) -> str:
        if type_id not in self._struct_names:
            t = self.btf.type(type_id)
            name = t.name or f"unnamed_{t.kind.name.lower()}_{type_id}"
            self._struct_names[type_id] = name
            if t.kind in (Kind.STRUCT, Kind.UNION) and name not in self.user_types:
                self.user_types[name] = None  # reserved; filled by run()
                self._pending.append(type_id)
        return self._struct_names[type_id]

    def enum_name(self, type_id: int) -> str:
        t = self.btf.type(type_id)
        name = t.name or f"unnamed_enum_{type_id}"
        if name not in self.enums:
            values = self.btf.enum_values(type_id)
            signed = any(v < 0 for v in values.values())
            size = t.size_or_type
            base = {1: "char", 2: "short", 4: "int", 8: "long long"}.get(size, "int")
            base_name = base if signed else f"unsigned {base}"
            self.base_types.setdefault(base_name, {"kind": "int", "size": size, "signed": signed, "endian": "little"})
            self.enums[name] = {"size": size, "base": base_name, "constants": values}
        return name

    def base(self, type_id: int) -> dict[str, Any]:
        t = self.btf.type(type_id)
        if t.kind == Kind.FLOAT:
            self.base_types.setdefault(t.name, {"kind": "float", "size": t.size_or_type, "signed": True, "endian": "little"})
        else:
            signed, _bits = self.btf.int_info(type_id)
            kind = "bool" if t.name == "_Bool" else "char" if "char" in t.name and t.size_or_type == 1 else "int"
            self.base_types.setdefault(t.name, {"kind": kind, "size": t.size_or_type, "signed": signed, "endian": "little"})
        return {"kind": "base", "name": t.name}

    def desc(self, type_id: int, depth: int = 0) -> dict[str, Any]:
        if depth > MAX_CHAIN:
            raise BtfError(f"type {type_id} nests deeper than {MAX_CHAIN}")
        t = self.btf.type(type_id)
        k = t.kind
        if k == Kind.VOID:
            return {"kind": "base", "name": "void"}
        if k in (Kind.INT, Kind.FLOAT):
            return self.base(type_id)
        if k == Kind.PTR:
            return {"kind": "pointer", "subtype": self.desc(t.size_or_type, depth + 1)}
        if k == Kind.ARRAY:
            elem, count = self.btf.array_info(type_id)
            return {"kind": "array", "count": count, "subtype": self.desc(elem, depth + 1)}
        if k in (Kind.STRUCT, Kind.UNION):
            return {"kind": "union" if k == Kind.UNION else "struct", "name": self.struct_name(type_id)}
        if k == Kind.FWD:
            return {"kind": "union" if t.kind_flag else "struct", "name": t.name}
        if k in (Kind.ENUM, Kind.ENUM64):
            return {"kind": "enum", "name": self.enum_name(type_id)}
        if k in (Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG):
            return self.desc(t.size_or_type, depth + 1)
        return {"kind": "function"}

    def fill(self, type_id: int) -> None:
        t = self.btf.type(type_id)
        fields: dict[str, Any] = {}
        for i, m in enumerate(self.btf.members(type_id)):
            name = m.name or f"unnamed_field_{i}"
            if m.bitfield_size:
                unit = max(1, self.btf.size_of(m.type_id))
                offset = (m.bit_offset // (unit * 8)) * unit
                inner = self.desc(m.type_id)
                fields[name] = {
                    "offset": offset,
                    "type": {
                        "kind": "bitfield",
                        "bit_position": m.bit_offset - offset * 8,
                        "bit_length": m.bitfield_size,
                        "type": inner,
                    },
                }
            else:
                fields[name] = {"offset": m.offset, "type": self.desc(m.type_id)}
                if not m.name:
                    fields[name]["anonymous"] = True
        self.user_types[self._struct_names[type_id]] = {
            "kind": "union" if t.kind == Kind.UNION else "struct",
            "size": t.size_or_type,
            "fields": fields,
        }

    def run(self) -> None:
        for type_id in range(1, len(self.btf)):
            t = self.btf.type(type_id)
            if t.kind in (Kind.STRUCT, Kind.UNION) and t.name:
                self.struct_name(type_id)
            elif t.kind in (Kind.ENUM, Kind.ENUM64) and t.name:
                self.enum_name(type_id)
        while self._pending:
            self.fill(self._pending.pop())


def _global_type(kind: str, name: str, exporter: _Exporter, extent: int | None = None) -> dict[str, Any] | None:
    """ISF type of a well-known global; ``extent`` is the gap to the next symbol (sizes arrays)."""
    if kind == "array_by_extent":
        size = exporter.user_types.get(name, {}) or {}
        if not extent or not size.get("size"):
            return None
        return {"kind": "array", "count": extent // size["size"], "subtype": {"kind": "struct", "name": name}}
    if kind == "base":
        return {"kind": "base", "name": name} if name in exporter.base_types else None
    if kind in ("struct", "pointer", "array256") and name not in exporter.user_types:
        return None
    if kind == "struct":
        return {"kind": "struct", "name": name}
    if kind == "pointer":
        return {"kind": "pointer", "subtype": {"kind": "struct", "name": name}}
    if kind == "array256":
        return {"kind": "array", "count": 256, "subtype": {"kind": "struct", "name": name}}
    return {"kind": "array", "count": 1, "subtype": {"kind": "pointer", "subtype": {"kind": "base", "name": "void"}}}


def to_isf(profile: KernelProfile) -> dict[str, Any]:
    """The profile as a Volatility 3 ISF document."""
    if profile.isf is not None:
        return profile.isf
    btf = profile.btf
    if btf is None:
        raise ProfileError("this profile has no types to export")
    exporter = _Exporter(btf)
    exporter.run()
    # per-CPU variables are described by BTF VAR records
    var_types: dict[str, dict[str, Any]] = {}
    for type_id in range(1, len(btf)):
        t = btf.type(type_id)
        if t.kind == Kind.VAR and t.name:
            var_types[t.name] = exporter.desc(t.size_or_type)
    while exporter._pending:
        exporter.fill(exporter._pending.pop())
    symbols: dict[str, Any] = {}
    addresses = profile.symbols.addresses
    extents: dict[str, int] = {}
    for i, (name, addr) in enumerate(zip(profile.symbols.names, addresses, strict=True)):
        if name not in symbols:
            symbols[name] = {"address": addr}
            later = next((a for a in addresses[i + 1 : i + 64] if a > addr), None)
            if later is not None:
                extents[name] = later - addr
    for name, entry in symbols.items():
        if name in var_types:
            entry["type"] = var_types[name]
        elif name in WELL_KNOWN_GLOBALS:
            described = _global_type(*WELL_KNOWN_GLOBALS[name], exporter, extents.get(name))
            if described is not None:
                entry["type"] = described
    if "linux_banner" in symbols:
        raw = profile.identity.banner.encode() + b"\n\0"
        symbols["linux_banner"]["constant_data"] = base64.b64encode(raw).decode()
    return {
        "metadata": {
            "format": ISF_FORMAT,
            "producer": {
                "name": "vmsentinel",
                "version": __version__,
                "datetime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
            },
            "linux": {
                "symbols": [{"kind": "symtab", "name": profile.sources.get("symbols", "kallsyms")}],
                "types": [{"kind": "dwarf", "name": profile.sources.get("types", "BTF")}],
            },
        },
        "base_types": exporter.base_types,
        "user_types": {k: v for k, v in exporter.user_types.items() if v is not None},
        "enums": exporter.enums,
        "symbols": symbols,
    }


def write_isf(profile: KernelProfile, path: str | Path) -> None:
    doc = to_isf(profile)
    data = json.dumps(doc, separators=(",", ":")).encode()
    Path(path).write_bytes(lzma.compress(data, preset=1) if str(path).endswith(".xz") else data)


def _address(path: str | Path, name: str, value: Any) -> int:
    """A symbol's address as the file gives it: an integer that fits 64 bits, or the file is refused."""
    try:
        address = int(value)
    except (TypeError, ValueError, OverflowError):  # a list, a word, NaN or infinity
        raise ProfileError(f"{path}: symbol {name[:80]!r} has no integer address") from None
    if not 0 <= address < 1 << 64:
        raise ProfileError(f"{path}: symbol {name[:80]!r} has an address outside 64 bits")
    return address


def profile_from_isf(path: str | Path) -> KernelProfile:
    """A profile from a Volatility ISF file (symbols at link-time addresses, types from user_types)."""
    started = time.perf_counter()
    doc = load_isf(path)
    symbols = doc["symbols"]
    entries = sorted(((_address(path, k, v["address"]), k) for k, v in symbols.items() if isinstance(v, dict) and "address" in v))
    banner = ""
    linux_banner = symbols.get("linux_banner", {})
    if isinstance(linux_banner, dict) and "constant_data" in linux_banner:
        try:
            banner = base64.b64decode(linux_banner["constant_data"]).split(b"\n", 1)[0].decode(errors="replace")
        except (TypeError, ValueError) as exc:  # binascii.Error is a ValueError
            raise ProfileError(f"{path}: linux_banner's constant_data is not base64: {exc}") from None
    release = banner.split()[2] if banner.startswith("Linux version ") else "unknown"
    table = SymbolTable([n for _, n in entries], "?" * len(entries), [a for a, _ in entries])
    sources = {"symbols": f"ISF {path}", "types": f"ISF {path}"}
    return KernelProfile(
        KernelIdentity(banner, release, None),
        IsfTypes(doc, sources["types"]),
        table,
        sources,
        None,
        time.perf_counter() - started,
        None,
        doc,
    )
