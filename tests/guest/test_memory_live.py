"""Guest-physical memory from outside: a secret written inside is found; the live
RAM file, a QEMU ELF core and a raw copy of the same paused guest agree; a guest
with more than 3.5 GiB has its RAM above 4 GiB where QEMU says."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from tests.guest.conftest import Guest, LabPool, guest_sh, vmsentinel
from tests.guest.helpers import paused, qmp_of
from vmsentinel.access import open_connector
from vmsentinel.errors import UnmappedPhysicalAddress
from vmsentinel.memory import open_image
from vmsentinel.memory.lime import write_lime
from vmsentinel.memory.qemu_ram import FOUR_GIB, pc_layout

pytestmark = pytest.mark.guest


def test_random_file_written_inside_is_found_from_outside(guest: Guest) -> None:
    secret = random.randbytes(8192)
    # the guest writes the bytes to tmpfs (page cache); we look for them in its RAM file
    guest_sh(guest, f"printf '%s' '{secret.hex()}' | xxd -r -p > /tmp/random.bin && sync")
    assert guest_sh(guest, "sha256sum /tmp/random.bin").split()[0] == hashlib.sha256(secret).hexdigest()
    with open_connector(guest.target) as target:
        hits = list(target.memory.scan(secret[:64]))
        assert hits, "random bytes not found in guest RAM"
        # the page cache holds whole pages: the first page of the file is intact where found
        assert any(target.memory.read(hit, 4096) == secret[:4096] for hit in hits)


def test_live_ram_elf_core_raw_and_lime_read_the_same(guest: Guest, tmp_path: Path) -> None:
    core, raw, lime = tmp_path / "guest.core", tmp_path / "guest.raw", tmp_path / "guest.lime"
    with open_connector(guest.target) as target:
        qmp = qmp_of(target)
        with paused(qmp):
            live_regs = target.registers()
            qmp.dump_guest_memory(str(core))
            size = target.memory.size()
            assert [(r.start, r.length) for r in target.memory.ranges()] == [(0, size)]
            qmp.command("pmemsave", val=0, size=size, filename=str(raw))
            live_digest = hashlib.sha256(target.memory.read(0, size)).hexdigest()
            rng = random.Random(7)
            samples = [rng.randrange(0, size - 64) for _ in range(2000)]
            live = [target.memory.read(a, 64) for a in samples]
    with open_image(core) as c, open_image(raw) as r:
        assert c.kind == "elf-core" and r.kind == "raw"
        assert [c.read(a, 64) for a in samples] == live
        assert [r.read(a, 64) for a in samples] == live
        assert hashlib.sha256(r.read(0, size)).hexdigest() == live_digest
        ram_ranges = [rg for rg in c.ranges() if rg.start < size]
        # the core also holds firmware ROM (pc.bios below 4 GiB); RAM is exactly the live RAM
        assert sum(rg.length for rg in ram_ranges) == size
        for rg in ram_ranges:
            assert c.read(rg.start, rg.length) == r.read(rg.start, rg.length)
        assert live_regs is not None
        assert c.cpus[0].cr3 == live_regs.cr3 and c.cpus[0].cr4 == live_regs.cr4
        write_lime(lime, [(rg.start, c.read(rg.start, rg.length)) for rg in ram_ranges])
    with open_image(lime) as li:
        assert li.kind == "lime"
        assert [li.read(a, 64) for a in samples] == live
    # the CLI reads the core's registers: same root and paging mode as the live guest
    info = vmsentinel("info", str(core), "--json").stdout
    assert f'"page_table_root": "{live_regs.page_table_root:#x}"' in info
    assert f'"paging_levels": {guest.paging}' in info


def test_guest_with_ram_above_4g(lab_pool: LabPool, tmp_path: Path) -> None:
    name = f"t{__import__('os').getpid()}-big"
    vmsentinel("lab", "up", name, "--kernel", "6.12", "--memory", "4096", "--json")
    try:
        with open_connector(f"lab:{name}") as target:
            segments = target.memory.segments  # type: ignore[attr-defined]
            # QEMU's own layout (info mtree) equals the q35 rule: 2 GiB low, 2 GiB at 4 GiB
            assert [(s.phys_start, s.file_offset, s.length) for s in segments][-1] == (FOUR_GIB, 2 << 30, 2 << 30)
            merged = [(r.start, r.length) for r in target.memory.ranges()]
            assert merged == [(s.phys_start, s.length) for s in pc_layout(4 << 30, "q35")]
            with pytest.raises(UnmappedPhysicalAddress):
                target.memory.read(0xC0000000, 8)  # the PCI hole
            qmp = qmp_of(target)
            with paused(qmp):
                # find pages above 4 GiB that hold data, and compare with QEMU's own physical read
                chunk = tmp_path / "high.bin"
                start = FOUR_GIB + (2 << 30) - (64 << 20)
                qmp.command("pmemsave", val=start, size=64 << 20, filename=str(chunk))
                ours = target.memory.read(start, 64 << 20)
            assert ours == chunk.read_bytes()
            assert ours.count(0) < len(ours), "no data above 4 GiB to compare"
            # a secret written inside is found from outside, wherever the guest put it
            guest_sh_big = vmsentinel("lab", "exec", name, "--", "echo vmsentinel-high-$((6*7))-marker > /tmp/m; cat /tmp/m")
            assert guest_sh_big.stdout.strip() == "vmsentinel-high-42-marker"
            assert list(target.memory.scan(b"vmsentinel-high-42-marker"))
    finally:
        vmsentinel("lab", "down", name, check=False)
