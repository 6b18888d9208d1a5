"""Address translation on live guests agrees with QEMU's own (gva2gpa, info mem,
info tlb), on 6.1 and 6.12, with 4- and 5-level paging, KASLR on."""

from __future__ import annotations

import random

import pytest

from tests.guest.conftest import Guest, guest_sh
from tests.guest.helpers import paused, qemu_info_mem, qemu_info_tlb, qmp_of
from vmsentinel.access import Connector, open_connector
from vmsentinel.arch.x86_64 import PAGE_SIZE, PagingAddressSpace, coalesce_by_rights
from vmsentinel.errors import TranslationError

pytestmark = pytest.mark.guest


def _pause_in_user_process(target: Connector) -> PagingAddressSpace:
    """Pause while the vCPU runs a user process, so CR3 maps user pages too (bounded retries)."""
    qmp = qmp_of(target)
    for _ in range(50):
        qmp.stop()
        space = target.address_space()
        if space.walk_mappings(end=1 << 47).mappings:
            return space
        qmp.cont()
    raise AssertionError("never caught the guest in a user process")


@pytest.fixture
def busy(paged_guest: Guest) -> Guest:
    pid = guest_sh(paged_guest, "sh -c 'while :; do :; done' >/dev/null 2>&1 & echo $!").strip()
    yield paged_guest  # type: ignore[misc]
    guest_sh(paged_guest, f"kill {pid}")


def test_translation_agrees_with_qemu_gva2gpa(busy: Guest) -> None:
    with open_connector(busy.target) as target:
        qmp = qmp_of(target)
        space = _pause_in_user_process(target)
        try:
            assert space.levels == busy.paging
            leaves = space.walk_mappings(merge=False).mappings
            rng = random.Random(1234)
            kernel = [m for m in leaves if m.vaddr >= 1 << 63]
            user = [m for m in leaves if m.vaddr < 1 << 63]
            assert kernel and user
            sample = rng.sample(kernel, min(200, len(kernel))) + rng.sample(user, min(100, len(user)))
            checked = 0
            for m in sample:
                vaddr = m.vaddr + rng.randrange(0, m.size) // 8 * 8
                theirs = qmp.gva2gpa(vaddr)
                assert space.translate(vaddr) == theirs, hex(vaddr)
                checked += 1
            # addresses mapped nowhere: both must say so
            holes = [0x1000, space.canonical(1 << (space.va_bits - 2)) + 0x5000]
            for vaddr in holes:
                assert qmp.gva2gpa(vaddr) is None
                with pytest.raises(TranslationError):
                    space.translate(vaddr)
            assert checked >= 250
        finally:
            qmp.cont()


def test_mapped_ranges_agree_with_qemu_info_tlb_and_info_mem(busy: Guest) -> None:
    with open_connector(busy.target) as target:
        qmp = qmp_of(target)
        space = _pause_in_user_process(target)
        try:
            walk = space.walk_mappings(merge=False)
            assert not walk.problems and not walk.truncated
            tlb = qemu_info_tlb(qmp)
            ours = {m.vaddr: m for m in walk.mappings}
            assert set(ours) == set(tlb)
            for vaddr, m in ours.items():
                paddr, flags = tlb[vaddr]
                assert paddr & ~(m.size - 1) == m.paddr, hex(vaddr)
                assert (flags[2] == "P") == (m.size > PAGE_SIZE), hex(vaddr)
            if busy.paging == 4:
                # QEMU 7.2's 'info mem' prints nothing under LA57, so only the 4-level guests compare here
                assert list(coalesce_by_rights(walk.mappings)) == qemu_info_mem(qmp)
        finally:
            qmp.cont()


def test_reads_through_translation_match_physical_reads(busy: Guest) -> None:
    with open_connector(busy.target) as target, paused(qmp_of(target)):
        space = target.address_space()
        for m in space.walk_mappings().mappings[:200]:
            if target.memory.is_valid(m.paddr, 64):
                assert space.read(m.vaddr, 64) == target.memory.read(m.paddr, 64)
