"""NT kernel profiles from a PE file's DWARF and COFF symbols, checked on the real ReactOS kernel
(``../shared/guests/reactos/symbols/ntoskrnl.exe.xz``) against gdb reading the same DWARF: every
top-level member of the structures the views use has gdb's offset."""

from __future__ import annotations

import lzma
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vmsentinel.errors import ProfileError
from vmsentinel.os.windows.profile.dwarf_isf import member_offset
from vmsentinel.os.windows.profile.pe_debug import PeDebug, undecorate
from vmsentinel.os.windows.profile.profile import profile_from_isf, profile_from_pe

REACTOS = Path(os.environ.get("VMSENTINEL_REACTOS", Path(__file__).resolve().parents[4] / "shared" / "guests" / "reactos"))
STRUCTS = (
    "_EPROCESS",
    "_KPROCESS",
    "_ETHREAD",
    "_KTHREAD",
    "_LDR_DATA_TABLE_ENTRY",
    "_KPCR",
    "_KPRCB",
    "_KSERVICE_TABLE_DESCRIPTOR",
    "_HANDLE_TABLE",
    "_PEB",
    "_RTL_USER_PROCESS_PARAMETERS",
    "_KDDEBUGGER_DATA64",
    "_OBJECT_HEADER",
    "_UNICODE_STRING",
    "_LIST_ENTRY",
)


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    packed = REACTOS / "symbols" / "ntoskrnl.exe.xz"
    if not packed.is_file():
        pytest.fail(f"{packed}: the ReactOS kernel's debug file is missing (set VMSENTINEL_REACTOS to its folder)")
    path = tmp_path_factory.mktemp("reactos") / "ntoskrnl.exe"
    path.write_bytes(lzma.decompress(packed.read_bytes()))
    return path


def gdb_offsets(binary: Path, structs: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Top-level member offsets as ``gdb ptype /o`` prints them."""
    gdb = shutil.which("gdb")
    if gdb is None:
        pytest.fail("gdb is not installed (scripts/setup installs it)")
    args = [gdb, "-batch", "-nx"]
    for name in structs:
        args += ["-ex", f"echo ==={name}\\n", "-ex", f"ptype /o struct {name}"]
    out = subprocess.run([*args, str(binary)], capture_output=True, text=True, timeout=300).stdout
    found: dict[str, dict[str, int]] = {}
    current: dict[str, int] = {}
    depth = 0
    for line in out.splitlines():
        if line.startswith("==="):
            current = found.setdefault(line[3:], {})
            depth = 0
            continue
        body = line.split("*/", 1)[-1].strip() if line.startswith("/*") else line.strip()
        m = re.match(r"/\*\s+(\d+)(?::\s*\d+)?\s+\|\s+\d+\s+\*/", line)
        if depth == 1 and m and body.endswith(";"):
            name = re.search(r"(\w+)\s*(\[[^]]*\])*\s*(:\s*\d+)?;$", body)
            if name:
                current[name.group(1)] = int(m.group(1))
        depth += body.count("{") - body.count("}")
    return found


def test_names_are_undecorated_and_dwarf_2_member_locations_read() -> None:
    assert undecorate("_NtClose@4") == "NtClose"
    assert undecorate("@KfAcquireSpinLock@4") == "KfAcquireSpinLock"
    assert undecorate("_KeServiceDescriptorTable") == "KeServiceDescriptorTable"

    class Attr:
        def __init__(self, value: object) -> None:
            self.value = value

    class Die:
        def __init__(self, value: object) -> None:
            self.attributes = {"DW_AT_data_member_location": Attr(value)}

    assert member_offset(Die([0x23, 0x94, 0x01])) == 0x94
    assert member_offset(Die(12)) == 12
    with pytest.raises(ProfileError):
        member_offset(Die([0x91, 0x00]))


def test_the_reactos_kernel_profile_has_gdbs_layouts_and_its_symbols(kernel: Path, tmp_path: Path) -> None:
    profile = profile_from_pe(kernel, cache=tmp_path)
    types = profile.types
    assert types.member_offset("_EPROCESS", "UniqueProcessId") == 0x94
    assert types.member_offset("_EPROCESS", "ActiveProcessLinks") == 0x98
    expected = gdb_offsets(kernel, STRUCTS)
    for struct in STRUCTS:
        assert expected.get(struct), f"gdb showed nothing for {struct}"
        ours = {name: types.member_offset(struct, name) for name in expected[struct]}
        assert ours == expected[struct], struct
    for name in ("PsActiveProcessHead", "PsLoadedModuleList", "KeServiceDescriptorTable", "KdDebuggerDataBlock", "PspCidTable"):
        assert 0 < profile.rva(name) < profile.identity.size_of_image, name
    assert profile.identity.machine == 0x14C and profile.pointer_size == 4

    again = profile_from_pe(kernel, cache=tmp_path)  # from the cache now
    assert "cached" in again.source and again.symbols == profile.symbols
    assert again.types.member_offset("_KTHREAD", "ApcState") == types.member_offset("_KTHREAD", "ApcState")
    cached = next(tmp_path.glob("*.json.xz"))
    assert profile_from_isf(cached).types.struct_size("_EPROCESS") == types.struct_size("_EPROCESS")


def test_what_is_no_pe_or_has_no_dwarf_is_refused(tmp_path: Path, kernel: Path) -> None:
    junk = tmp_path / "junk.exe"
    junk.write_bytes(b"MZ" + os.urandom(200))
    with pytest.raises(ProfileError, match="not a PE"):
        PeDebug.open(junk)
    stripped = tmp_path / "stripped.exe"
    data = bytearray(kernel.read_bytes())
    debug = PeDebug.open(kernel)
    _, _, offset, size = debug.sections[".debug_info"]
    data[offset : offset + size] = bytes(size)  # its DWARF wiped: every unit says length 0
    stripped.write_bytes(bytes(data))
    with pytest.raises(ProfileError):
        profile_from_pe(stripped, cache=tmp_path / "cache")
