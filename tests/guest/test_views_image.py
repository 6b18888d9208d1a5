"""Views on a memory image agree with Volatility 3 (run with our exported ISF)
on a QEMU ELF dump of a lab guest: ps with linux.pslist, modules with linux.lsmod."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.guest.conftest import Guest, vmsentinel
from tests.guest.helpers import installed_tool, paused, qmp_of
from vmsentinel.access import open_connector
from vmsentinel.os.linux.kernel_locate import find_kernel, profile_from_memory
from vmsentinel.os.linux.profile.isf import write_isf

pytestmark = pytest.mark.guest


@pytest.fixture
def dump(guest: Guest, tmp_path: Path) -> tuple[Path, Path]:
    core = tmp_path / "guest.core"
    with open_connector(guest.target) as target:
        with paused(qmp_of(target)):
            qmp_of(target).dump_guest_memory(str(core))
        profile = profile_from_memory(find_kernel(target.memory), guest.target)
    (tmp_path / "symbols" / "linux").mkdir(parents=True)
    write_isf(profile, tmp_path / "symbols" / "linux" / "guest.json.xz")
    return core, tmp_path / "symbols"


def _vol(core: Path, symbols: Path, plugin: str) -> list[dict[str, Any]]:
    vol = installed_tool("vol")
    assert vol is not None, "volatility3 is a test dependency"
    proc = subprocess.run(
        [vol, "-q", "-r", "json", "-f", str(core), "-s", str(symbols), plugin],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=symbols.parent,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows: list[dict[str, Any]] = json.loads(proc.stdout)
    return rows


def test_ps_on_a_dump_agrees_with_volatility_pslist(dump: tuple[Path, Path]) -> None:
    core, symbols = dump
    ours = json.loads(vmsentinel("ps", str(core), "--json").stdout)
    theirs = _vol(core, symbols, "linux.pslist")
    assert sorted((t["pid"], t["ppid"], t["comm"]) for t in ours) == sorted((r["PID"], r["PPID"], r["COMM"]) for r in theirs)
    # Volatility prints virtual offsets cut to its layer's 48 address bits
    mask = (1 << 48) - 1
    assert {t["pid"]: int(t["address"], 16) & mask for t in ours} == {r["PID"]: r["OFFSET (V)"] & mask for r in theirs}


def test_modules_on_a_dump_agree_with_volatility_lsmod(dump: tuple[Path, Path]) -> None:
    core, symbols = dump
    ours = json.loads(vmsentinel("modules", str(core), "--json").stdout)
    theirs = _vol(core, symbols, "linux.lsmod")
    assert [m["name"] for m in ours] == [r["Module Name"] for r in theirs]
    mask = (1 << 48) - 1
    assert [int(m["address"], 16) & mask for m in ours] == [r["Offset"] & mask for r in theirs]


def test_syscalls_on_a_dump_agree_with_volatility_check_syscall(dump: tuple[Path, Path]) -> None:
    core, symbols = dump
    ours = json.loads(vmsentinel("syscalls", str(core), "--json").stdout)
    theirs = _vol(core, symbols, "linux.check_syscall")
    theirs_x64 = {(r["Index"], r["Handler Address"]) for r in theirs if "64" in str(r.get("Table Name", ""))}
    ours_x64 = {(e["index"], int(e["handler"], 16) & ((1 << 48) - 1)) for e in ours if e["table"] == "x64"}
    # Volatility sizes the table as min(gap to the next symbol, number of __syscall_meta__ symbols);
    # the latter counts only SYSCALL_DEFINEs traced by ftrace, so it stops short of the table's end.
    # Every entry it reads must be ours, with the same handler; the rest we read up to the padding.
    assert theirs_x64 and theirs_x64 <= ours_x64
    assert {i for i, _ in ours_x64} == set(range(len(ours_x64)))


def test_quick_json_path_prints_what_the_full_command_line_prints(dump: tuple[Path, Path]) -> None:
    """`VIEW TARGET --json` is answered without Typer; it must print byte for byte the same."""
    core, _ = dump
    quick_off = {**os.environ, "VMSENTINEL_QUICK": "0"}
    for args in (
        ["ps"],
        ["ps", "--no-kernel-threads"],
        ["pstree"],
        ["modules"],
        ["syscalls", "--outside-kernel"],
        ["idt"],
        ["sockets"],
        ["maps", "1"],
        ["files", "1"],
    ):
        argv = [sys.executable, "-m", "vmsentinel", args[0], str(core), *args[1:], "--json"]
        quick = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        full = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=quick_off)
        assert quick.returncode == full.returncode == 0, (args, quick.stderr, full.stderr)
        assert quick.stdout == full.stdout and isinstance(json.loads(quick.stdout), list), args
    missing = [sys.executable, "-m", "vmsentinel", "maps", str(core), "999999", "--json"]
    quick = subprocess.run(missing, capture_output=True, text=True, timeout=300)
    full = subprocess.run(missing, capture_output=True, text=True, timeout=300, env=quick_off)
    assert quick.returncode == full.returncode == 2
    assert quick.stderr.strip() == full.stderr.strip() == "error: no process 999999 in " + str(core)
