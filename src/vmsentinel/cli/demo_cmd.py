"""``vmsentinel demo``: the whole story on a real lab guest, from outside.

1. boot a lab guest and show what the sentinel sees in it without its help
   (kernel, memory layout, paging, a secret written inside found in its RAM);
2. watch it: take a baseline;
3. attack it from inside with the test rootkit (built for its kernel from
   Debian's headers): hide a process and the module, hook a system call, patch
   a kernel function, give a process root;
4. sweep again: the findings, confirmed by a second read, written as OCSF JSON
   lines and into SQLite;
5. respond through the hypervisor: dump the guest's memory and pause it.

Throughout, the code allowed to run is the guest's own initramfs: an allowlist
built from it and signed with the demo's key; the rootkit module is not on it.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.panel import Panel
from rich.table import Table

from vmsentinel.cli.output import err, handle_errors, out, print_json, progress


@handle_errors
def demo(
    name: Annotated[str, typer.Option(metavar="NAME", help="The demo lab guest's name.")] = "demo",
    kernel: Annotated[
        str | None, typer.Option(metavar="KERNEL", help="A kernel series or package (default: Debian's current).")
    ] = None,
    paging: Annotated[int, typer.Option(metavar="LEVELS", help="4- or 5-level paging in the guest.")] = 4,
    attack: Annotated[bool, typer.Option("--attack/--no-attack", help="Run the rootkit part of the story.")] = True,
    keep: Annotated[bool, typer.Option("--keep", help="Leave the guest running afterwards.")] = False,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show the sentinel at work on a real lab guest.

    It boots a guest, looks into it from outside, attacks it with a test rootkit, and finds the attack
    and responds."""
    from vmsentinel import lab
    from vmsentinel.errors import LabNotFound
    from vmsentinel.lab.machine import LabSpec

    with progress() as step:
        try:
            guest = lab.load(name)
            if not guest.alive:
                lab.down(name)
                raise LabNotFound(name)
            step(f"using running lab guest {name}")
        except LabNotFound:
            guest = lab.up(LabSpec(name=name, kernel=kernel, paging_levels=paging), step)
        result = _look(guest, step)
        if attack:
            result.update(_attack_story(guest, step))
    if not keep:
        lab.down(name)
    if json:
        print_json(result)
        return
    _print(result, guest.target, keep, name)


def _look(guest: Any, step: Any) -> dict[str, Any]:
    from vmsentinel import lab
    from vmsentinel.access import open_connector
    from vmsentinel.arch.x86_64 import coalesce_by_rights
    from vmsentinel.os.linux.overview import inspect_target

    step("planting a secret inside the guest (through the lab console)")
    secret = f"vmsentinel-demo-{secrets.token_hex(8)}"
    lab.run(guest.name, f"echo {secret} > /tmp/secret.txt")
    step("looking from outside")
    with open_connector(guest.target) as target:
        info = inspect_target(target)
        t0 = time.perf_counter()
        found = list(target.memory.scan(secret.encode()))
        scan_ms = (time.perf_counter() - t0) * 1000
        space = target.address_space()
        t0 = time.perf_counter()
        walk = space.walk_mappings()
        walk_ms = (time.perf_counter() - t0) * 1000
    ranges = list(coalesce_by_rights(walk.mappings))
    return {
        **info.to_json(),
        "lab": guest.name,
        "secret": secret,
        "secret_found_at": [f"{a:#x}" for a in found],
        "secret_scan_ms": round(scan_ms, 2),
        "mapped_bytes": sum(m.size for m in walk.mappings),
        "kernel_ranges": sum(1 for r in ranges if not r[2]),
        "user_ranges": sum(1 for r in ranges if r[2]),
        "page_tables_read": walk.tables_visited,
        "walk_ms": round(walk_ms, 2),
        "walk_problems": walk.problems,
    }


def _attack_story(guest: Any, step: Any) -> dict[str, Any]:
    from importlib import resources

    from vmsentinel import lab
    from vmsentinel.lab.kmod import build_module, insert_module
    from vmsentinel.os.linux.guest import LinuxGuest
    from vmsentinel.paths import cache_dir
    from vmsentinel.pipeline.compiled import CompiledPolicy
    from vmsentinel.pipeline.policy import Policy
    from vmsentinel.pipeline.sweep import sweep_once
    from vmsentinel.respond.actions import respond
    from vmsentinel.sinks.ocsf import OcsfJsonl
    from vmsentinel.sinks.sqlite_store import SqliteStore

    workdir = cache_dir() / "demo"
    workdir.mkdir(parents=True, exist_ok=True)
    for old_dump in (workdir / "dumps").glob("*.core"):  # a dump is as large as the guest's RAM: keep the last
        old_dump.unlink()
    step("building the test rootkit for the guest's kernel (Debian headers, cached after the first time)")
    source = Path(str(resources.files("vmsentinel.lab").joinpath("rootkit")))
    ko = build_module(guest.kernel_package, source, workdir)
    step("signing an allowlist of the code in the guest's own initramfs")
    allowlist, allowlist_info = _signed_allowlist(guest, workdir)
    compiled = CompiledPolicy.compile(Policy(), allowlist)
    with LinuxGuest.open(guest.target) as watched:
        step("watching: baseline")
        first = sweep_once(watched, compiled, target=guest.target, take_baseline=True)
        baseline = first.baseline
        victim = int(lab.run(guest.name, "sleep 100000 >/dev/null 2>&1 & echo $!").stdout.decode().strip())
        user = int(
            lab.run(
                guest.name,
                "su -s /bin/sh nobody -c 'exec sleep 100001' >/dev/null 2>&1 & sleep 0.3; "
                "pidof sleep | tr ' ' '\\n' | sort -n | tail -1",
            )
            .stdout.decode()
            .strip()
        )
        before = sweep_once(watched, compiled, first.snapshot, baseline, target=guest.target, confirm_new=False).snapshot
        step("attacking from inside: loading the test rootkit")
        insert_module(
            guest.name,
            ko,
            f"hide_pid={victim} hide_self=1 root_pid={user} syscall_table=0x$(sym sys_call_table) syscall_nr=39 "
            "patch_addr=0x$(sym __x64_sys_getpid)",
        )
        inside = lab.run(guest.name, "cat /proc/modules | grep -c vmsrootkit; true").stdout.decode().strip()
        step("sweeping again")
        t0 = time.perf_counter()
        findings = sweep_once(watched, compiled, before, baseline, target=guest.target).new  # confirmed by a second read
        detect_ms = (time.perf_counter() - t0) * 1000
        jsonl, store = OcsfJsonl(workdir / "findings.jsonl"), SqliteStore(workdir / "vmsentinel.db")
        jsonl.write(findings)
        store.write(findings)
        step("responding: dumping the guest's memory and pausing it")
        worst = max(findings, key=lambda f: f.severity) if findings else None
        records = respond(guest.target, watched.target.control, worst, ["dump", "pause"], workdir / "dumps") if worst else []
        store.write_responses(records)
        jsonl.close()
        store.close()
    return {
        "attack": {
            "rootkit_loaded": True,  # insert_module raises when insmod fails
            "hidden_pid": victim,
            "escalated_pid": user,
            "module_in_proc_modules": inside,
        },
        "allowlist": allowlist_info,
        "baseline_ms": round(first.snapshot.seconds * 1000, 1),
        "detect_ms": round(detect_ms, 1),
        "findings": [f.to_json() for f in findings],
        "responses": [{"action": r.action, "ok": r.ok, "detail": r.detail} for r in records],
        "ocsf_file": str(workdir / "findings.jsonl"),
        "store": str(workdir / "vmsentinel.db"),
    }


def _signed_allowlist(guest: Any, workdir: Path) -> tuple[Any, dict[str, Any]]:
    """Build the allowlist of the guest's initramfs, sign it with the demo's own key, and load it back
    the way a policy does (signature first)."""
    from vmsentinel.pipeline.loading import load_signed_allowlists
    from vmsentinel.pipeline.policy import Policy
    from vmsentinel.trust.allowlist import build_allowlist, save_allowlist
    from vmsentinel.trust.signing import new_key, sign_file

    secret, public = workdir / "demo-key.key", workdir / "demo-key.pub"
    if not secret.exists() or not public.exists():
        secret.unlink(missing_ok=True)
        public.unlink(missing_ok=True)
        new_key(workdir / "demo-key", comment="vmsentinel demo key")
    path = workdir / "allowlist.json"
    built = build_allowlist([guest.initrd])
    save_allowlist(built, path)
    sign_file(path, secret)
    allowlist = load_signed_allowlists(Policy(allowlists=[str(path)], allowlist_keys=[str(public)]))
    info = {"file": str(path), "files": len(built.files), "modules": len(built.modules), "signed_with": str(public)}
    return allowlist, info


def _print(result: dict[str, Any], target: str, keep: bool, name: str) -> None:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold cyan")
    table.add_column()
    table.add_row("guest", f"{target}")
    table.add_row("kernel banner", str(result["banner"]))
    table.add_row(
        "memory", f"{result['ram_size'] / 2**20:.0f} MiB from {result['source_kind']}, layout from {result['layout_source']}"
    )
    table.add_row("paging", f"{result['paging_levels']}-level, page-table root {result['page_table_root']}")
    table.add_row(
        "address space",
        f"{result['kernel_ranges']} kernel and {result['user_ranges']} user ranges, "
        f"{result['mapped_bytes'] / 2**20:.0f} MiB mapped in {result['walk_ms']:.1f} ms",
    )
    table.add_row(
        "secret",
        f"{result['secret']!r} written inside, found from outside at "
        f"{', '.join(result['secret_found_at']) or 'nowhere'} ({result['secret_scan_ms']:.1f} ms)",
    )
    out.print(Panel(table, title="1. what the sentinel sees from outside", expand=False))
    if "findings" not in result:
        return
    attack = result["attack"]
    out.print(
        Panel(
            f"rootkit loaded inside the guest: {attack['rootkit_loaded']}; it hid pid {attack['hidden_pid']} "
            f"and itself (lines for it in /proc/modules: {attack['module_in_proc_modules']}), hooked "
            f"system call 39, patched __x64_sys_getpid and made pid {attack['escalated_pid']} root",
            title="2. the attack (inside the guest)",
            expand=False,
        )
    )
    findings = Table("SEVERITY", "DETECTOR", "FINDING", "ATT&CK")
    for f in result["findings"]:
        findings.add_row(f["severity"], f["detector"], f["title"], f["attack"]["technique_id"])
    out.print(
        Panel(
            findings,
            title=f"3. found from outside in {result['detect_ms']:.0f} ms (baseline sweep "
            f"{result['baseline_ms']:.0f} ms), confirmed by a second read; allowlist: "
            f"{result['allowlist']['files']} files of the guest's initramfs, signed",
            expand=False,
        )
    )
    responses = "\n".join(f"{r['action']}: {'ok' if r['ok'] else 'FAILED'} ({r['detail']})" for r in result["responses"])
    out.print(
        Panel(
            f"{responses}\nalerts: {result['ocsf_file']} (OCSF) and {result['store']} (SQLite)",
            title="4. the response, through the hypervisor",
            expand=False,
        )
    )
    if keep:
        err.print(f"the guest keeps running (paused): 'vmsentinel lab down {name}' stops it")
