"""``vmsentinel check`` (one look), ``vmsentinel watch`` (continuous) and
``vmsentinel alerts`` (what was found)."""

from __future__ import annotations

import signal
import time
from typing import Annotated

import typer
from rich.table import Table

from ..detect.finding import Finding
from .output import err, handle_errors, out, print_json

TARGET = Annotated[str, typer.Argument(help="A memory image, qemu:RAM_PATH[,qmp=SOCKET], or lab:NAME.")]
CONFIG = Annotated[str | None, typer.Option("--config", help="Policy file (TOML): detectors, responses, sinks.")]


def check(
    target: TARGET,
    config: CONFIG = None,
    json: Annotated[bool, typer.Option("--json", help="Print findings as a JSON array.")] = False,
    ocsf: Annotated[str | None, typer.Option("--ocsf", help="Append findings as OCSF JSON lines to this file.")] = None,
    db: Annotated[str | None, typer.Option("--db", help="Store findings in this SQLite file.")] = None,
) -> None:
    """Look at a guest once with every detector that needs no history (hidden objects, hooks that leave
    kernel text, unsigned modules, suspicious executables). Exit 0 when clean, 1 with findings, 2 on error."""
    from ..detect.engine import confirm, run_detectors
    from ..detect.yara_scan import YaraRules
    from ..errors import VmSentinelError
    from ..linux.guest import LinuxGuest
    from ..policy.config import load_policy

    try:
        policy = load_policy(config)
        yara = YaraRules.load(list(policy.yara_rules)) if policy.yara_rules else None
        extra = [yara.detector()] if yara is not None else []
        with LinuxGuest.open(target) as guest:
            snap = guest.snapshot(with_code=True, scan=True, yara=yara)
            findings = run_detectors(target, snap, None, None, policy.detectors, extra)
            if findings and guest.target.qmp_socket is not None:  # a live guest: confirm by a second read
                again = guest.snapshot(with_code=True, scan=True, yara=yara)
                findings = confirm(findings, run_detectors(target, again, None, None, policy.detectors, extra))
        _write(findings, ocsf, db)
    except VmSentinelError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    if json:
        print_json([f.to_json() for f in findings])
    elif not findings:
        out.print(f"no findings in {target} ({snap.seconds * 1000:.0f} ms)")
    else:
        table = Table("SEVERITY", "DETECTOR", "FINDING", "ATT&CK", title=f"{len(findings)} findings in {target}")
        for f in findings:
            table.add_row(f.severity.name, f.detector, f.title, f.attack.technique_id)
        out.print(table)
    raise typer.Exit(1 if findings else 0)


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
    config: CONFIG = None,
    interval: Annotated[float | None, typer.Option(help="Seconds between sweeps (default: the policy's).")] = None,
    ocsf: Annotated[str | None, typer.Option("--ocsf", help="OCSF JSON lines file (default: the policy's).")] = None,
    db: Annotated[str | None, typer.Option("--db", help="SQLite store (default: the policy's).")] = None,
    sweeps: Annotated[int | None, typer.Option(help="Stop after this many sweeps (default: until stopped).")] = None,
    metrics: Annotated[str | None, typer.Option(help="Write Prometheus text metrics here after every round.")] = None,
) -> None:
    """Watch guests continuously: baseline on first sight, findings confirmed by a second read, written
    to OCSF JSON lines and SQLite, responses through the hypervisor as the policy says. Ctrl-C or SIGTERM
    stops after the current sweep."""
    from ..policy.config import load_policy
    from ..sinks.ocsf import OcsfJsonl
    from ..sinks.sqlite_store import SqliteStore
    from ..watch.watcher import Watcher

    policy = load_policy(config)
    if interval is not None:
        policy.interval = interval
    jsonl, store = OcsfJsonl(ocsf or policy.ocsf), SqliteStore(db or policy.db)
    err.print(f"policy: {policy.source}; interval {policy.interval} s; {len(targets)} target(s)")
    watcher = Watcher(
        targets,
        policy.interval,
        [jsonl, store],
        policy=policy,
        on_event=lambda t, m: err.print(f"[bold]{t}[/]: {m}", highlight=False, soft_wrap=True),
    )
    if metrics:
        from pathlib import Path

        watcher.metrics_path = Path(metrics)

    def stop(signum: int, _frame: object) -> None:
        err.print(f"{signal.Signals(signum).name}: stopping after the sweeps in progress")
        watcher.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        watcher.run(max_sweeps=sweeps)
    finally:
        watcher.close()
        jsonl.close()
        store.close()
    for state in watcher.states:
        times = sorted(state.sweep_seconds)
        median = times[len(times) // 2] * 1000 if times else 0.0
        err.print(
            f"{state.target}: {state.sweeps} sweeps every {state.interval:g} s, median {median:.1f} ms, "
            f"{state.findings} findings, {state.missed} missed",
            highlight=False,
            soft_wrap=True,
        )


@handle_errors
def alerts(
    db: Annotated[str, typer.Option("--db", help="The SQLite store watch writes.")] = "vmsentinel.db",
    since: Annotated[float, typer.Option(help="Only the last SECONDS (0: all).")] = 0.0,
    json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """List the findings in the store, oldest first."""
    from pathlib import Path

    from ..errors import TargetError
    from ..sinks.sqlite_store import SqliteStore

    if not Path(db).exists():
        raise TargetError(f"no alert store at {db}")
    store = SqliteStore(db)
    rows = store.findings(since=time.time() - since if since else 0.0)
    store.close()
    if json:
        print_json(rows)
        return
    table = Table("TIME", "TARGET", "SEVERITY", "DETECTOR", "FINDING", title=f"{len(rows)} findings in {db}")
    for r in rows:
        table.add_row(
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(str(r["time"])))),
            str(r["target"]),
            str(r["severity"]),
            str(r["detector"]),
            str(r["title"]),
        )
    out.print(table)
