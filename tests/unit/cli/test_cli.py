"""The CLI on images: JSON output, tables, and one-line errors with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.synthetic import write_elf_core
from typer.testing import CliRunner

from vmsentinel.cli.main import app

BANNER = b"Linux version 6.12.9-amd64 (x@y) (gcc 12) #1 SMP PREEMPT_DYNAMIC Debian\n\0"
runner = CliRunner()


def test_info_json_on_elf_core_reports_banner_and_paging(tmp_path: Path) -> None:
    ram = bytearray(0x10000)
    ram[0x4000 : 0x4000 + len(BANNER)] = BANNER
    core = tmp_path / "guest.core"
    write_elf_core(str(core), [(0, bytes(ram))], cr3=0x2A0000 | 0x801, cr4=0x370EF0 | (1 << 12))
    result = runner.invoke(app, ["info", str(core), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["source_kind"] == "elf-core"
    assert data["kernel_release"] == "6.12.9-amd64"
    assert data["paging_levels"] == 5 and data["page_table_root"] == "0x2a0000"
    assert data["ram_size"] == 0x10000 and data["physical_ranges"][0]["end"] == "0x10000"


def test_info_table_on_raw_image_without_registers(tmp_path: Path) -> None:
    raw = tmp_path / "guest.raw"
    raw.write_bytes(bytes(0x2000) + BANNER)
    result = runner.invoke(app, ["info", str(raw)], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    assert "6.12.9-amd64" in result.stdout and "raw" in result.stdout
    assert "paging mode and page-table root unknown" in " ".join(result.stdout.split())


def test_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    for args in (
        ["info", str(tmp_path / "missing")],
        ["info", "libvirt:dom"],
        ["info", "qemu:/nonexistent/ram"],
        ["info", "qemu:/x,frob=1"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "error:" in result.output and "Traceback" not in result.output


def test_lab_errors_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMSENTINEL_STATE", str(tmp_path / "state"))
    result = runner.invoke(app, ["lab", "exec", "ghost", "--", "true"])
    assert result.exit_code == 2 and "no lab guest named 'ghost'" in result.output
    assert runner.invoke(app, ["lab", "down"]).exit_code == 2
    assert runner.invoke(app, ["lab", "up", "bad name!"]).exit_code == 2
    assert json.loads(runner.invoke(app, ["lab", "ls", "--json"]).stdout) == []


def test_missing_qemu_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMSENTINEL_STATE", str(tmp_path / "state"))
    result = runner.invoke(app, ["lab", "up", "x"], env={"PATH": str(tmp_path)})
    assert result.exit_code == 2
    assert "qemu-system-x86_64 is not installed" in result.output and "apt-get install" in result.output


def test_an_error_prints_its_words_as_they_are() -> None:
    """Rich would turn ':x:' into an emoji and '[b]' into bold: a domain named x, a path with brackets."""
    from typer.testing import CliRunner

    from vmsentinel.cli.main import app

    result = CliRunner().invoke(app, ["ps", "/nonexistent/a:x:[b]c"])
    assert result.exit_code == 2 and "/nonexistent/a:x:[b]c" in result.output, result.output
