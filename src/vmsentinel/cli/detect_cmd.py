"""``vmsentinel check`` (one look), ``vmsentinel watch`` (continuous) and
``vmsentinel alerts`` (what was found, and whether the record is intact).

Both ``check`` and ``watch`` run only with a policy they may trust: a signed
bundle verified against the trusted keys, the built-in defaults, or a plain
TOML file with an explicit ``--unsigned-policy``.
"""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from vmsentinel.cli.app import App
from vmsentinel.cli.output import err, handle_errors, out, print_json
from vmsentinel.cli.params import (
    BUS,
    BUS_CREDS,
    BUS_TLS_CA,
    HOST_ID,
    KERNEL_IMAGES,
    TARGET,
    bus_options,
    host_id_of,
    use_kernel_images,
)
from vmsentinel.cli.status import EXIT_ERROR, EXIT_NO, EXIT_OK, exit_status_help
from vmsentinel.detect.finding import Finding

if TYPE_CHECKING:
    from collections.abc import Callable

    from vmsentinel.pipeline.loading import ActivePolicy, PolicyLoader
    from vmsentinel.watch.watcher import TargetSource

POLICY = Annotated[
    str | None,
    typer.Option(
        "--policy",
        metavar="BUNDLE",
        help="A signed policy bundle (see 'vmsentinel policy pack'). A plain TOML policy needs --unsigned-policy.",
    ),
]
TRUSTED = Annotated[
    list[str] | None,
    typer.Option(
        "--trusted-key",
        metavar="KEY",
        help="A key trusted to sign policy bundles: a minisign or OpenSSH public key, or an allowed_signers file "
        "(repeatable; default: $VMSENTINEL_TRUSTED_KEYS, else /etc/vmsentinel/trusted-keys/).",
    ),
]
SIGNATURE = Annotated[
    str | None,
    typer.Option("--policy-signature", metavar="FILE", help="The bundle's signature (default: BUNDLE.minisig or BUNDLE.sig)."),
]
UNSIGNED = Annotated[
    bool, typer.Option("--unsigned-policy", help="Run a plain, unsigned TOML policy (lab use only; logged loudly).")
]


def policy_loader(policy: str | None, trusted: list[str] | None, signature: str | None, unsigned: bool) -> PolicyLoader:
    """How this run gets its policy; refuses a plain policy file unless --unsigned-policy says so."""
    from vmsentinel.errors import PolicyRefused
    from vmsentinel.pipeline.loading import PolicyLoader
    from vmsentinel.trust.bundle import is_bundle

    if policy is None:
        return PolicyLoader()
    if is_bundle(policy):
        return PolicyLoader(bundle=policy, trusted_keys=trusted, signature=signature)
    if not unsigned:
        raise PolicyRefused(
            f"{policy} is not a signed policy bundle: pack it ('vmsentinel policy pack'), sign it (minisign, "
            "ssh-keygen -Y sign -n vmsentinel, or 'vmsentinel key sign'), or pass --unsigned-policy to try it in a lab"
        )
    err.print(f"[bold red]WARNING: running with the UNSIGNED policy {policy} (--unsigned-policy)[/]", highlight=False)
    return PolicyLoader(unsigned=policy)


def interval_loader(loader: PolicyLoader, interval: float | None) -> Callable[[], ActivePolicy]:
    """Load (and, on reload, load again) the policy, with ``--interval`` over the policy's own."""

    def load() -> ActivePolicy:
        active = loader.load()
        if interval is not None:
            active.policy.interval = interval
        return active

    return load


def split_targets(targets: list[str]) -> tuple[list[str], list[TargetSource]]:
    """The guests named one by one, and the sources of guests that come and go ('libvirt:' names
    every domain of a connection, as they start and stop)."""
    from vmsentinel.access.registry import open_source

    single: list[str] = []
    sources: list[TargetSource] = []
    for target in targets:
        source = open_source(target)
        if source is None:
            single.append(target)
        else:
            sources.append(source)
    return single, sources


def _announce(active: ActivePolicy) -> None:
    err.print(f"policy: {active.description}", highlight=False, soft_wrap=True)


def check(
    target: TARGET,
    policy: POLICY = None,
    trusted_key: TRUSTED = None,
    policy_signature: SIGNATURE = None,
    unsigned_policy: UNSIGNED = False,
    json: Annotated[bool, typer.Option("--json", help="Print findings as a JSON array.")] = False,
    ocsf: Annotated[
        str | None, typer.Option("--ocsf", metavar="FILE", help="Append the findings as OCSF JSON lines to FILE.")
    ] = None,
    db: Annotated[str | None, typer.Option("--db", metavar="FILE", help="Store the findings in this SQLite file.")] = None,
    kernel_images: KERNEL_IMAGES = None,
) -> None:
    """Look at a guest once.

    Every detector that needs no history runs: hidden objects, hooks that leave kernel text, unsigned
    modules, suspicious executables, code not on the allowlist, and kernel code unlike the vendor's
    image of its build (when one is found). A policy that does not verify is an error."""
    from vmsentinel.errors import VmSentinelError
    from vmsentinel.events import FirstLook
    from vmsentinel.os import open_guest
    from vmsentinel.pipeline.compiled import CompiledPolicy
    from vmsentinel.pipeline.sweep import sweep_once
    from vmsentinel.sinks.console import describe

    use_kernel_images(kernel_images)
    try:
        active = policy_loader(policy, trusted_key, policy_signature, unsigned_policy).load()
        _announce(active)
        compiled = CompiledPolicy.compile(active.policy, active.allowlist)
        active.remove()
        with open_guest(target) as guest:
            result = sweep_once(guest, compiled, target=target, confirm_new=guest.target.live)  # a live guest: a second read
        findings, snap = result.new, result.snapshot
        _write(findings, ocsf, db)
        for event in result.events:  # what the first look compared the kernel with, as a watch says it
            if isinstance(event, FirstLook):
                err.print(describe(event), highlight=False, soft_wrap=True)
    except VmSentinelError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_ERROR) from None
    if json:
        print_json([f.to_json() for f in findings])
    elif not findings:
        out.print(f"no findings in {target} ({snap.seconds * 1000:.0f} ms)")
    else:
        table = Table("SEVERITY", "DETECTOR", "FINDING", "ATT&CK", title=f"{len(findings)} findings in {target}")
        for f in findings:
            table.add_row(f.severity.name, f.detector, f.title, f.attack.technique_id)
        out.print(table)
    raise typer.Exit(EXIT_NO if findings else EXIT_OK)


def _write(findings: list[Finding], ocsf: str | None, db: str | None) -> None:
    from vmsentinel.sinks.ocsf import OcsfJsonl
    from vmsentinel.sinks.sqlite_store import SqliteStore

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
    targets: Annotated[list[str], typer.Argument(metavar="TARGET", help="The guests to watch (any TARGET form).")],
    policy: POLICY = None,
    trusted_key: TRUSTED = None,
    policy_signature: SIGNATURE = None,
    unsigned_policy: UNSIGNED = False,
    interval: Annotated[
        float | None, typer.Option(metavar="SECONDS", help="Time between sweeps (default: the policy's).")
    ] = None,
    ocsf: Annotated[
        str | None, typer.Option("--ocsf", metavar="FILE", help="The OCSF JSON lines file (default: the policy's).")
    ] = None,
    db: Annotated[str | None, typer.Option("--db", metavar="FILE", help="The SQLite store (default: the policy's).")] = None,
    record_key: Annotated[
        str | None,
        typer.Option(
            "--record-key", metavar="KEY", help="A secret key (vmsentinel key new) to sign the alert record's chain head."
        ),
    ] = None,
    sweeps: Annotated[int | None, typer.Option(metavar="N", help="Stop after N sweeps (default: run until stopped).")] = None,
    metrics: Annotated[
        str | None, typer.Option(metavar="FILE", help="Write Prometheus text metrics to FILE after every round.")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            min=0,
            help="Worker processes that sweep the guests (default: one per core; 0: threads of this process).",
        ),
    ] = None,
    kernel_images: KERNEL_IMAGES = None,
    bus: BUS = None,
    bus_creds: BUS_CREDS = None,
    bus_tls_ca: BUS_TLS_CA = None,
    host_id: HOST_ID = None,
) -> None:
    """Watch guests continuously.

    A baseline is taken on first sight (kernel code compared with the vendor's image when it can be
    found) and kept in the SQLite store, signed with the record key: a watch started again compares
    each guest with the baseline of its current boot instead of trusting it anew. Findings are
    confirmed by a second read, written to OCSF JSON lines and SQLite (hash-chained), and answered
    through the hypervisor as the policy says. SIGHUP, or a change of the bundle file, reloads the
    policy (only if the new one verifies). Ctrl-C or SIGTERM stops after the current sweep.

    With --bus, every event is also published to a fleet's NATS JetStream bus under --host-id: the
    store is the spool, so events wait there while the bus is away and none is sent twice; the
    central service (serve --fleet) may ask for the responses [fleet] remote_actions allows."""
    from vmsentinel.sinks.baseline_record import BaselineRecord
    from vmsentinel.sinks.console import ConsoleSink
    from vmsentinel.sinks.ocsf import OcsfJsonl
    from vmsentinel.sinks.sqlite_store import SqliteStore
    from vmsentinel.watch.watcher import Watcher

    use_kernel_images(kernel_images)
    options = bus_options(bus, bus_creds, bus_tls_ca)
    host = host_id_of(host_id)
    loader = policy_loader(policy, trusted_key, policy_signature, unsigned_policy)
    load = interval_loader(loader, interval)
    active = load()
    _announce(active)
    signer = None
    if record_key is not None:
        from vmsentinel.trust.signing import secret_key_signer

        signer = secret_key_signer(record_key)
    jsonl = OcsfJsonl(ocsf or active.policy.ocsf, signer)
    store = SqliteStore(db or active.policy.db, signer, host=host, spool=options is not None)
    if workers is None:
        import os

        workers = len(os.sched_getaffinity(0))
    err.print(f"interval {active.policy.interval} s; {len(targets)} target(s); {workers or 'no'} worker process(es)")

    console = ConsoleSink(lambda t, m: err.print(f"[bold]{t}[/]: {m}", highlight=False, soft_wrap=True))
    single, sources = split_targets(targets)
    watcher = Watcher(
        single,
        active.policy.interval,
        [jsonl, store, console],
        policy=active.policy,
        allowlist=active.allowlist,
        loader=load if policy is not None else None,
        sources=sources,
        workers=workers,
        baseline_record=BaselineRecord(store.path, record_key),
        peer_compare=options is None,  # on a bus, the central service compares every host's guests
    )
    watcher.watched_files = active.watched
    active.remove()  # the watcher's rules are built: the unpacked files are not needed any more
    link = None
    if options is not None:
        from vmsentinel.fleet.host_link import HostLink, WatcherControl

        link = HostLink(options, host, store, WatcherControl(watcher))  # type: ignore[arg-type]
        watcher.sinks.append(link)
        link.start()
        err.print(f"publishing to {options.url} as host {host} (from the spool in {store.path})", highlight=False)  # type: ignore[attr-defined]
    if metrics:
        from pathlib import Path

        watcher.metrics_path = Path(metrics)

    def stop(signum: int, _frame: object) -> None:
        err.print(f"{signal.Signals(signum).name}: stopping after the sweeps in progress")
        watcher.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda *_: watcher.request_reload())
    try:
        watcher.run(max_sweeps=sweeps)
    finally:
        watcher.close()
        if link is not None:
            link.stop()
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


alerts_app = App(help="List what was found; check that the record is intact.", invoke_without_command=True)


@alerts_app.callback()
@handle_errors
def alerts(
    ctx: typer.Context,
    db: Annotated[str, typer.Option("--db", metavar="FILE", help="The SQLite store watch writes.")] = "vmsentinel.db",
    since: Annotated[float, typer.Option(metavar="SECONDS", help="Only the last SECONDS (0: all).")] = 0.0,
    json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """List the findings in the store, oldest first.

    'vmsentinel alerts verify' checks that the record is intact."""
    if ctx.invoked_subcommand is not None:
        return
    from pathlib import Path

    from vmsentinel.errors import TargetError
    from vmsentinel.sinks.sqlite_store import SqliteStore

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


@alerts_app.command("verify", epilog=exit_status_help("every record intact", "a record damaged or missing"))
@handle_errors
def alerts_verify(
    db: Annotated[list[str] | None, typer.Option("--db", metavar="FILE", help="An SQLite store to check (repeatable).")] = None,
    ocsf: Annotated[
        list[str] | None, typer.Option("--ocsf", metavar="FILE", help="An OCSF JSON lines file to check (repeatable).")
    ] = None,
    key: Annotated[
        list[str] | None,
        typer.Option("--key", metavar="KEY", help="The record key's public key, to check the signed heads (repeatable)."),
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object per record checked.")] = False,
) -> None:
    """Check that alert records are intact.

    The hash chain of each record and its signed heads are walked: a deleted, reordered or edited alert
    is found and located."""
    from vmsentinel.errors import TargetError
    from vmsentinel.sinks.verify import ChainReport, HeadCheck, verify_ocsf_file, verify_sqlite_file

    if not db and not ocsf:
        raise TargetError("name at least one record: --db FILE and/or --ocsf FILE")
    check: HeadCheck | None = None
    if key:
        from vmsentinel.errors import SignatureError
        from vmsentinel.trust.signing import load_trusted_keys, verify_bytes

        keys = load_trusted_keys(key)

        def check(message: bytes, signature: bytes) -> str | None:
            try:
                verify_bytes(message, signature, keys, what="chain head")
                return None
            except SignatureError as exc:
                return str(exc)

    reports: list[ChainReport] = [verify_sqlite_file(p, check) for p in db or []]
    reports += [verify_ocsf_file(p, check) for p in ocsf or []]
    if json:
        print_json([r.to_json() for r in reports])
    else:
        for r in reports:
            state = "[green]intact[/]" if r.intact else "[bold red]DAMAGED[/]"
            heads = f"{r.signed_heads} signed heads (last at record {r.last_signed})" if r.signed_heads else "no signed heads"
            kept = f", {r.baselines} stored baselines" if r.baselines else ""
            out.print(f"{r.path}: {state}: {r.records} records, {heads}{kept}", highlight=False)
            for problem in r.problems[:50]:
                out.print(f"  {problem}", highlight=False, markup=False)
            if not key and r.signed_heads:
                out.print("  (heads not checked: give the record key's public key with --key)", highlight=False)
    if not all(r.intact for r in reports):
        raise typer.Exit(EXIT_NO)
