"""The compact symbol table: lookups by name (the first of a repeated name wins, as kallsyms does),
by index and by address, the same before and after a save and load."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmsentinel.errors import ProfileError
from vmsentinel.os.linux.profile.profile import KernelIdentity, KernelProfile, SymbolTable

NAMES = ["_text", "do_thing", "static_helper", "static_helper", "zeta", "init_task", "per_cpu_var"]
ADDRS = [
    0xFFFFFFFF81000000,
    0xFFFFFFFF81000400,
    0xFFFFFFFF81000200,
    0xFFFFFFFF81000800,
    0xFFFFFFFF81000300,
    0xFFFFFFFF82000000,
    0x1000,
]


def _check(table: SymbolTable) -> None:
    assert len(table) == len(NAMES) and table.names == NAMES and list(table.addresses) == ADDRS
    assert table.address("static_helper") == 0xFFFFFFFF81000200  # the first one
    assert table.address("per_cpu_var") == 0x1000 and "zeta" in table and "nope" not in table
    with pytest.raises(ProfileError):
        table.address("nope")
    assert table.name_at(4) == "zeta" and table.types == "TtttTDd"
    addrs, order = table.by_address(0xFFFFFFFF80000000)
    assert list(addrs) == sorted(a for a in ADDRS if a >= 0xFFFFFFFF80000000)
    assert [table.name_at(i) for i in order][:3] == ["_text", "static_helper", "zeta"]


def test_a_table_answers_the_same_built_and_loaded(tmp_path: Path) -> None:
    table = SymbolTable(NAMES, "TtttTDd", ADDRS)
    _check(table)
    profile = KernelProfile(KernelIdentity("Linux version 6.1.0-test", "6.1.0-test", "ab" * 20), None, table, {})
    profile.save(tmp_path / "p.vmsprofile")
    loaded = KernelProfile.load(tmp_path / "p.vmsprofile")
    _check(loaded.symbols)


def test_columns_of_different_lengths_are_refused() -> None:
    with pytest.raises(ProfileError):
        SymbolTable(["a", "b"], "T", [1, 2])


def test_an_empty_table() -> None:
    table = SymbolTable([], "", [])
    assert len(table) == 0 and table.names == [] and "x" not in table and len(table.by_address()[0]) == 0


def test_a_loaded_profile_reads_its_columns_and_btf_from_the_mapped_file(tmp_path: Path) -> None:
    """Every guest of a build in every worker maps one profile file: the address column and the BTF are
    views of that mapping (pages shared between processes), not copies in each process's heap."""
    import mmap

    from tests.unit.profiles.test_image_profile_isf import synthetic_vmlinux

    from vmsentinel.os.linux.profile.profile import profile_from_image

    (tmp_path / "vmlinux").write_bytes(synthetic_vmlinux())
    built = profile_from_image(tmp_path / "vmlinux")
    built.save(tmp_path / "p.vmsprofile")
    loaded = KernelProfile.load(tmp_path / "p.vmsprofile")
    assert isinstance(loaded.symbols.addresses, memoryview) and isinstance(loaded.symbols.addresses.obj, mmap.mmap)
    assert list(loaded.symbols.addresses) == list(built.symbols.addresses) and loaded.symbols.names == built.symbols.names
    btf, original = loaded.btf, built.btf
    assert btf is not None and original is not None and btf.data == original.data
    assert isinstance(btf._types.obj, mmap.mmap)  # the type records are read where they lie in the file
    assert btf.find("task_struct") == original.find("task_struct")
    assert loaded.types is not None and loaded.types.member_offset("task_struct", "mm") == 24  # names found in the mapping
