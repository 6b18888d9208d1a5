"""``vmsentinel check`` (one look) and ``vmsentinel watch`` (continuous)."""

from __future__ import annotations

import signal
from typing import Annotated

import typer
from rich.table import Table

from ..detect.finding import Finding
from .output import err, handle_errors, out, print_json

TARGET = Annotated[str, typer.Argument(help="A memory image, qemu:RAM_PATH[,qmp=SOCKET], or lab:NAME.")]


@handle_errors
def check(
    target: TARGET,
    json: Annotated[bool, typer.Option("--json", help="Print findings as a JSON array.")] = False,
    ocsf: Annotated[str | None, typer.Option("--ocsf", help="Append findings as OCSF JSON lines to this file.")] = None,
    db: Annotated[str | None, typer.Option("--db", help="Store findings in this SQLite file.")] = None,
) -> None:
    """Look at a guest once and report what is wrong with it (no baseline: hidden objects, hooks that
    leave kernel text, unsigned modules, suspicious executables)."""
    from ..detect.engine import confirm, run_detectors
    from ..linux.guest import LinuxGuest

    with LinuxGuest.open(target) as guest:
        snap = guest.snapshot(with_code=True, scan=True)
        findings = run_detectors(target, snap, None, None)
        if findings and guest.target.qmp_socket is not None:  # a live guest: confirm by a second read
            findings = confirm(findings, run_detectors(target, guest.snapshot(with_code=True, scan=True), None, None))
    _write(findings, ocsf, db)
    if json:
        print_json([f.to_json() for f in findings])
        return
    if not findings:
        out.print(f"no findings in {target} ({snap.seconds * 1000:.0f} ms)")
        return
    table = Table("SEVERITY", "DETECTOR", "FINDING", "ATT&CK", title=f"{len(findings)} findings in {target}")
    for f in findings:
        table.add_row(f.severity.name, f.detector, f.title, f.attack.technique_id)
    out.print(table)


def _write(findings: list[Finding], ocsf: str | None, db: str | None) -> None:
    from ..sinks.ocsf import OcsfJsonl
    from ..sinks.sqlite_store import SqliteStore

    if ocsf:
        sink = OcsfJsonl(ocsf)
        sink.write(findings)
        sink.close()
    if db:
        store = SqliteStore(db)
        store.write(findings)
        store.close()


@handle_errors
def watch(
    targets: Annotated[list[str], typer.Argument(help="Guests to watch (any TARGET form).")],
    interval: Annotated[float, typer.Option(help="Seconds between sweeps of each guest.")] = 2.0,
    ocsf: Annotated[str, typer.Option("--ocsf", help="OCSF JSON lines file for findings.")] = "vmsentinel-findings.jsonl",
    db: Annotated[str, typer.Option("--db", help="SQLite store for findings and process events.")] = "vmsentinel.db",
    sweeps: Annotated[int | None, typer.Option(help="Stop after this many sweeps (default: until stopped).")] = None,
) -> None:
    """Watch guests continuously: baseline on first sight, findings confirmed by a second read, written
    to OCSF JSON lines and SQLite. Ctrl-C or SIGTERM stops after the current sweep."""
    from ..sinks.ocsf import OcsfJsonl
    from ..sinks.sqlite_store import SqliteStore
    from ..watch.watcher import Watcher

    jsonl, store = OcsfJsonl(ocsf), SqliteStore(db)
    watcher = Watcher(targets, interval, [jsonl, store], on_event=lambda t, m: err.print(f"[bold]{t}[/]: {m}", highlight=False))
    signal.signal(signal.SIGTERM, lambda *_: watcher.stop())
    try:
        watcher.run(max_sweeps=sweeps)
    except KeyboardInterrupt:
        watcher.stop()
    finally:
        watcher.close()
        jsonl.close()
        store.close()
    for state in watcher.states:
        times = sorted(state.sweep_seconds)
        median = times[len(times) // 2] * 1000 if times else 0.0
        err.print(f"{state.target}: {state.sweeps} sweeps, median {median:.1f} ms, {len(state.reported)} findings")
