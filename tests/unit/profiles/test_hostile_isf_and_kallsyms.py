"""Inputs the fuzz harness (benchmarks/fuzz.py) found crashing the kallsyms decoder and the ISF loader:
each must be a ProfileError (or BtfError for a type lookup), never another exception."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from tests.fuzz_targets import _isf_doc
from tests.synthetic_kernel import build_kallsyms, sample_symbols

from vmsentinel.errors import BtfError, KallsymsError, ProfileError
from vmsentinel.os.linux.profile import kallsyms
from vmsentinel.os.linux.profile.isf import profile_from_isf
from vmsentinel.os.linux.profile.profile import SymbolTable

BASE = 0xFFFFFFFFA1000000


def test_a_token_table_at_an_unaligned_offset_near_the_start_is_a_kallsyms_error() -> None:
    """The markers search read a u32 at offset -3 (struct.error) when the table sat 17 bytes in."""
    buf, _ = build_kallsyms(sample_symbols(300), BASE, order="names-first")
    cut = bytes(17) + buf[kallsyms.locate(buf).token_table :]
    with pytest.raises(KallsymsError):
        kallsyms.locate(cut)


def test_a_relative_base_near_two_to_the_64_wraps_as_in_the_kernel() -> None:
    """base - 1 - offset ran past 2**64, and the symbol table's array('Q') raised OverflowError."""
    buf, rb_at = build_kallsyms(sample_symbols(300), BASE, order="names-first")
    top = buf[:rb_at] + struct.pack("<Q", 0xFFFFFFFFFFFFF000) + buf[rb_at + 8 :]
    syms = kallsyms.decode(top)
    assert max(syms.addresses) < 1 << 64
    assert len(SymbolTable.from_kallsyms(syms)) == len(syms)


def _write(tmp_path: Path, doc: Any) -> Path:
    path = tmp_path / "k.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _with(change: str) -> Any:
    doc = _isf_doc()
    if change == "metadata list":
        doc["metadata"] = []
    elif change == "symbols null":
        doc["symbols"] = None
    elif change == "address list":
        doc["symbols"]["init_task"]["address"] = [1]
    elif change == "address nan":
        doc["symbols"]["init_task"]["address"] = float("nan")
    elif change == "address negative":
        doc["symbols"]["init_task"]["address"] = -1
    elif change == "address huge":
        doc["symbols"]["init_task"]["address"] = 1 << 70
    elif change == "banner float":
        doc["symbols"]["linux_banner"] = 1.5
    elif change == "banner not base64":
        doc["symbols"]["linux_banner"]["constant_data"] = "abc"  # padding missing
    elif change == "deep":
        return "[" * 100_000 + "]" * 100_000
    return doc


@pytest.mark.parametrize(
    "change",
    [
        "metadata list",
        "symbols null",
        "address list",
        "address nan",
        "address negative",
        "address huge",
        "banner not base64",
        "deep",
    ],
)
def test_a_malformed_isf_file_is_a_profile_error(tmp_path: Path, change: str) -> None:
    with pytest.raises(ProfileError):
        profile_from_isf(_write(tmp_path, _with(change)))


def test_a_linux_banner_that_is_no_object_is_ignored(tmp_path: Path) -> None:
    assert profile_from_isf(_write(tmp_path, _with("banner float"))).identity.banner == ""


@pytest.mark.parametrize(
    ("where", "value"),
    [("user_types.task_struct", []), ("user_types.task_struct.fields", 3), ("user_types.task_struct.fields.pid", {}),
     ("user_types.task_struct.fields.pid.offset", "x"), ("user_types.task_struct.size", None), ("enums.pid_type", 7),
     ("enums.pid_type.constants", []), ("enums.pid_type.constants.PIDTYPE_PID", "nan")],
)  # fmt: skip
def test_malformed_types_in_an_isf_file_are_btf_errors_when_asked_for(tmp_path: Path, where: str, value: Any) -> None:
    doc = _isf_doc()
    *parents, last = where.split(".")
    node = doc
    for key in parents:
        node = node[key]
    node[last] = value
    types = profile_from_isf(_write(tmp_path, doc)).types
    assert types is not None
    with pytest.raises(BtfError):
        if where.startswith("enums"):
            types.enum_values("pid_type")
        elif where.endswith("size"):
            types.struct_size("task_struct")
        else:
            types.member_offset("task_struct", "pid")
    assert types.has_member("task_struct", "pid") is (where.startswith("enums") or where.endswith("size"))
