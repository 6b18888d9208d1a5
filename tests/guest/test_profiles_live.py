"""Kernel profiles with no hand work, on real guests (6.1 and 6.12, KASLR on):
symbols from memory alone equal /proc/kallsyms; memory BTF equals the
vmlinuz's; image and memory profiles agree; Volatility 3 reads our ISF."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.guest.conftest import Guest, guest_sh, vmsentinel
from tests.guest.helpers import installed_tool, paused, qmp_of
from vmsentinel.access import open_connector
from vmsentinel.os.linux.kernel_locate import find_kernel, locate, profile_from_memory
from vmsentinel.os.linux.profile.isf import write_isf
from vmsentinel.os.linux.profile.profile import profile_from_image

pytestmark = pytest.mark.guest

FIELDS = [
    ("task_struct", "pid"),
    ("task_struct", "tgid"),
    ("task_struct", "comm"),
    ("task_struct", "tasks"),
    ("task_struct", "real_parent"),
    ("task_struct", "cred"),
    ("task_struct", "mm"),
    ("task_struct", "pid_links"),
    ("task_struct", "thread_pid"),
    ("task_struct", "start_time"),
    ("cred", "uid"),
    ("cred", "euid"),
    ("cred", "gid"),
    ("module", "list"),
    ("module", "name"),
    ("module", "state"),
    ("mm_struct", "arg_start"),
    ("mm_struct", "arg_end"),
    ("mm_struct", "exe_file"),
    ("mm_struct", "pgd"),
    ("list_head", "next"),
]
SIZES = ["task_struct", "module", "cred", "mm_struct", "vm_area_struct", "file", "dentry", "socket", "sock"]


def _proc_kallsyms(guest: Guest) -> list[tuple[int, str, str]]:
    core = []
    for line in guest_sh(guest, "cat /proc/kallsyms").splitlines():
        parts = line.split()
        if len(parts) == 3:  # no [module] / [bpf] tag: core kernel
            core.append((int(parts[0], 16), parts[1], parts[2]))
    return core


def test_symbols_from_memory_alone_equal_proc_kallsyms(guest: Guest) -> None:
    inside = _proc_kallsyms(guest)
    with open_connector(guest.target) as target:
        found = find_kernel(target.memory)
    ours = list(zip(found.symbols.addresses, found.symbols.types, found.symbols.names, strict=True))
    assert len(ours) == len(inside)
    assert ours == inside  # every name, type letter and runtime address, in the kernel's own order


def test_member_offsets_from_memory_btf_equal_the_vmlinuz_btf(guest: Guest) -> None:
    image = profile_from_image(str(guest.info["vmlinuz"]))
    with open_connector(guest.target) as target:
        memory = profile_from_memory(find_kernel(target.memory), guest.target)
    assert image.types is not None and memory.types is not None
    assert memory.types.source.startswith("BTF in memory") and image.types.source.startswith("BTF in ")
    layout_field = ("module", "mem") if image.types.has_member("module", "mem") else ("module", "core_layout")
    for struct_name, member in [*FIELDS, layout_field]:
        assert memory.types.member_offset(struct_name, member) == image.types.member_offset(struct_name, member)
    for struct_name in SIZES:
        assert memory.types.struct_size(struct_name) == image.types.struct_size(struct_name)
    # a sanity check against the running kernel: comm really sits where BTF says
    with open_connector(guest.target) as target:
        found = find_kernel(target.memory)
        loc = locate(target.memory, memory, found.banner_phys)
        space = loc.address_space()
        init_task = loc.runtime_symbol("init_task")
        comm = space.read(init_task + memory.types.member_offset("task_struct", "comm"), 16).split(b"\0")[0]
        assert comm == b"swapper/0"
        assert space.read_u64(init_task + memory.types.member_offset("task_struct", "pid")) & 0xFFFFFFFF == 0


def test_profiles_from_image_and_from_memory_agree_on_everything(guest: Guest) -> None:
    image = profile_from_image(str(guest.info["vmlinuz"]))
    with open_connector(guest.target) as target:
        memory = profile_from_memory(find_kernel(target.memory), guest.target)
    assert memory.identity == image.identity
    assert memory.identity.build_id and memory.identity.release == guest.info["kernel_release"]
    assert memory.symbols.names == image.symbols.names
    assert memory.symbols.types == image.symbols.types
    assert memory.symbols.addresses == image.symbols.addresses  # link-time, KASLR undone
    assert memory.btf_blob == image.btf_blob  # every type, byte for byte
    assert memory.relative_base_offset == image.relative_base_offset


def test_profile_show_reports_kaslr_and_paging_and_uses_the_cache(paged_guest: Guest) -> None:
    fresh = json.loads(vmsentinel("profile", "show", paged_guest.target, "--no-cache", "--json").stdout)
    assert fresh["profile_from"] == "memory" and fresh["seconds"] < 10
    cached = json.loads(vmsentinel("profile", "show", paged_guest.target, "--json").stdout)
    assert cached["profile_from"] == "cache"
    for key in ("kaslr_slide", "page_table_root", "paging_levels", "page_offset_base", "symbols", "types"):
        assert cached[key] == fresh[key]
    assert fresh["paging_levels"] == paged_guest.paging
    assert fresh["release"] == paged_guest.info["kernel_release"]
    text = next(int(line.split()[0], 16) for line in guest_sh(paged_guest, "grep ' _text$' /proc/kallsyms").splitlines())
    image = profile_from_image(str(paged_guest.info["vmlinuz"]))
    assert int(fresh["kaslr_slide"], 16) == text - image.symbol("_text")
    assert int(fresh["kaslr_slide"], 16) != 0  # KASLR is on in the lab
    page_offset = int(guest_sh(paged_guest, "grep ' page_offset_base$' /proc/kallsyms").split()[0], 16)
    with open_connector(paged_guest.target) as target:
        space = target.address_space()  # the live CR3 maps the kernel the same way
        assert space.read_u64(page_offset) == int(fresh["page_offset_base"], 16)
        assert qmp_of(target).gva2gpa(text) is not None


def test_volatility_lists_the_guest_pids_with_our_isf(guest: Guest, tmp_path: Path) -> None:
    vol = installed_tool("vol")
    assert vol is not None, "volatility3 (vol) is a test dependency: pip install -e '.[test]'"
    before = set(guest_sh(guest, "ps -o pid | tail -n +2").split())
    core = tmp_path / "guest.core"
    with open_connector(guest.target) as target:
        with paused(qmp_of(target)):
            qmp_of(target).dump_guest_memory(str(core))
        profile = profile_from_memory(find_kernel(target.memory), guest.target)
    after = set(guest_sh(guest, "ps -o pid | tail -n +2").split())
    symbols = tmp_path / "symbols" / "linux"
    symbols.mkdir(parents=True)
    write_isf(profile, symbols / "vmsentinel.json.xz")
    proc = subprocess.run(
        [vol, "-q", "-r", "json", "-f", str(core), "-s", str(tmp_path / "symbols"), "linux.pslist"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout)
    vol_pids = {str(r["PID"]) for r in rows}
    # processes alive both before and after the dump were alive during it; lab exec's own shells come and go
    # (the guest sat idle while paused, so nothing else should differ)
    stable = before & after
    assert stable and vol_pids == stable, (sorted(vol_pids - stable), sorted(stable - vol_pids))
