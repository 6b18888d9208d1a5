"""The ReactOS lab guest's pieces that need no boot: where the live CD is looked for, the QEMU command
line (i386, the pc machine, RAM shared, the CD), readiness read from its debug log, and ``lab exec``
refused (the live CD has no command console)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmsentinel.errors import GuestTimeout, LabError
from vmsentinel.lab import reactos
from vmsentinel.lab.machine import run


def test_the_cd_is_looked_for_where_it_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(reactos.ENVIRONMENT, str(tmp_path / "nowhere"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(reactos, "__file__", str(tmp_path / "a" / "b" / "c" / "d" / "reactos.py"))
    with pytest.raises(LabError, match="VMSENTINEL_REACTOS") as err:
        reactos.reactos_folder()
    assert str(tmp_path / "nowhere") in str(err.value)
    (tmp_path / "cd").mkdir()
    (tmp_path / "cd" / "livecd.iso.xz").write_bytes(b"")
    monkeypatch.setenv(reactos.ENVIRONMENT, str(tmp_path / "cd"))
    assert reactos.reactos_folder() == tmp_path / "cd"


def test_the_command_line_boots_the_cd_on_i386_with_shared_ram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reactos, "qemu_i386", lambda: "qemu-system-i386")
    paths = {k: tmp_path / k for k in ("ram", "qmp", "console")}
    cmd = reactos.qemu_command("ros", 512, 1, "tcg", tmp_path / "livecd.iso", paths)
    text = " ".join(cmd)
    assert cmd[0] == "qemu-system-i386" and "pc,memory-backend=ram0" in text and f"-cdrom {tmp_path / 'livecd.iso'}" in text
    assert f"mem-path={tmp_path / 'ram'},share=on" in text and "-boot d" in text


def test_ready_when_the_services_run_and_a_dead_or_slow_boot_says_why(tmp_path: Path) -> None:
    console, log = tmp_path / "console.log", tmp_path / "qemu.log"
    log.write_text("qemu: could not open the CD\n")
    console.write_bytes(
        b"(/ntoskrnl/kd64/kdinit.c:95) ReactOS 0.4.16-x86-dev (Build 20261201)\n(/base/system/services/services.c:130) up\n"
    )
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert reactos.wait_ready(sleeper, console, log, 5) == "ReactOS 0.4.16-x86-dev"
        console.write_bytes(b"(/ntoskrnl/kd64/kdinit.c:95) ReactOS 0.4.16-x86-dev\nstill booting\n")
        with pytest.raises(GuestTimeout, match="still booting"):
            reactos.wait_ready(sleeper, console, log, 0.6)
    finally:
        sleeper.kill()
        sleeper.wait()
    with pytest.raises(LabError, match="could not open the CD"):
        reactos.wait_ready(sleeper, console, log, 5)


def test_lab_exec_is_refused_for_a_reactos_guest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMSENTINEL_STATE", str(tmp_path))
    labdir = tmp_path / "labs" / "ros"
    labdir.mkdir(parents=True)
    guest = {
        "name": "ros", "pid": os.getpid(), "ram_path": "", "qmp_socket": "", "ctl_socket": "", "console_log": "",
        "kernel_release": "ReactOS 0.4.16-x86-dev", "kernel_package": "reactos-livecd", "vmlinuz": "", "memory_mib": 512,
        "smp": 1, "kaslr": False, "paging_levels": 2, "machine": "pc", "os": "reactos",
    }  # fmt: skip
    (labdir / "lab.json").write_text(json.dumps(guest))
    with pytest.raises(LabError, match="no command console"):
        run("ros", "true")
