"""A Windows guest as a real Windows user has it: a kernel whose debug directory names its PDB, and a
Volatility 3 ISF made from that PDB. ``profile nt --isf`` keeps the ISF under the PDB's id; ``ps`` on
a memory image of the guest (synthetic Windows 10 x64 RAM, 17763 layouts) then finds the kernel, its
CodeView record, the ISF and the processes with no more hand work."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

from tests.unit.windows import test_nt_x64 as x64

from vmsentinel.arch.x86_64 import PagingAddressSpace
from vmsentinel.memory.buffer import BufferMemory
from vmsentinel.os.windows.locate import read_pe_header

GUID = (0x3844DBB9, 0x2017, 0x4967, bytes.fromhex("BE7AA4A2C20430FA"))
AGE = 2
PDB_ID = "3844DBB920174967BE7AA4A2C20430FA-2"


def memory_with_codeview() -> bytearray:
    """The synthetic x64 guest, its kernel's header given a debug directory with a CodeView record."""
    ram = x64.x64_memory(0x1ED)
    head = x64.k(x64.BASE)
    opt = head + 0x98
    struct.pack_into("<II", ram, opt + 112 + 6 * 8, 0xA00, 28)  # data directory 6: debug, at RVA 0xA00
    struct.pack_into("<IIHHIIII", ram, head + 0xA00, 0, 0, 0, 0, 2, 24 + 13, 0xA40, 0)  # type 2: CodeView
    d1, d2, d3, d4 = GUID
    ram[head + 0xA40 : head + 0xA40 + 24] = b"RSDS" + struct.pack("<IHH", d1, d2, d3) + d4 + struct.pack("<I", AGE)
    ram[head + 0xA58 : head + 0xA58 + 13] = b"ntkrnlmp.pdb\0"
    return ram


def volatility_isf() -> dict:
    doc = x64.layout()
    doc["symbols"] = {name: {"address": rva} for name, rva in x64.RVA.items() if name != "KiServiceTable"}
    doc["metadata"] = {
        "format": "6.2.0",
        "windows": {
            "pdb": {
                "GUID": PDB_ID.split("-")[0],
                "age": AGE,
                "database": "ntkrnlmp.pdb",
                "machine_type": 0x8664,
            }
        },
    }
    return doc


def test_the_kernels_codeview_record_names_its_pdb() -> None:
    ram = memory_with_codeview()
    space = PagingAddressSpace(BufferMemory({0: ram}), x64.SYSTEM, levels=4)
    header = read_pe_header(space, x64.BASE)
    assert header is not None and (header.pdb, header.pdb_id) == ("ntkrnlmp.pdb", PDB_ID)
    ram[x64.k(x64.BASE) + 0xA40] = ord("X")  # not an RSDS record: no id, no guess
    header = read_pe_header(PagingAddressSpace(BufferMemory({0: ram}), x64.SYSTEM, levels=4), x64.BASE)
    assert header is not None and (header.pdb, header.pdb_id) == ("", "")


def test_ps_on_a_windows_image_with_its_volatility_isf(tmp_path: Path) -> None:
    image = tmp_path / "win10.raw"
    image.write_bytes(memory_with_codeview())
    isf = tmp_path / "ntkrnlmp.json"
    isf.write_text(json.dumps(volatility_isf()))
    env = {**os.environ, "VMSENTINEL_CACHE": str(tmp_path / "cache"), "VMSENTINEL_NT_SYMBOLS": ""}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vmsentinel", *args], capture_output=True, text=True, env=env, timeout=120)

    missing = run("ps", str(image), "--json")
    assert missing.returncode == 2 and "ntkrnlmp.pdb 3844DBB920174967BE7AA4A2C20430FA-2" in missing.stderr, missing.stderr
    stored = run("profile", "nt", "--isf", str(isf), "--json")
    assert stored.returncode == 0, stored.stderr
    assert json.loads(stored.stdout)["key"] == PDB_ID and json.loads(stored.stdout)["pointer_size"] == 8
    ps = run("ps", str(image), "--json")
    assert ps.returncode == 0, ps.stderr
    assert [(p["pid"], p["ppid"], p["name"]) for p in json.loads(ps.stdout)] == x64.NAMES
    syscalls = json.loads(run("syscalls", str(image), "--outside-kernel", "--json").stdout)
    assert [(s["index"], s["owner"]) for s in syscalls] == [(2, "unknown"), (3, "module:hal.dll")]
