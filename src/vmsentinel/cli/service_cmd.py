"""``vmsentinel serve`` (the watch with an HTTP API and dashboard), the service's users and API
tokens, and ``service install`` (a hardened systemd unit)."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vmsentinel.cli.app import App
from vmsentinel.cli.detect_cmd import (
    POLICY,
    SIGNATURE,
    TRUSTED,
    UNSIGNED,
    _announce,
    interval_loader,
    policy_loader,
    split_targets,
)
from vmsentinel.cli.output import err, fail, handle_errors, out, print_json
from vmsentinel.cli.params import (
    BUS,
    BUS_CREDS,
    BUS_TLS_CA,
    HOST_ID,
    KERNEL_IMAGES,
    bus_options,
    host_id_of,
    use_kernel_images,
)

if TYPE_CHECKING:
    from vmsentinel.service.accounts import ServiceDb

STATE = Annotated[
    str | None,
    typer.Option(
        "--state-dir",
        metavar="DIR",
        help="The service's folder: users, tokens, triage, audit, findings (default: $VMSENTINEL_STATE/service).",
    ),
]
JSON = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _state(state_dir: str | None) -> Path:
    if state_dir:
        return Path(state_dir)
    from vmsentinel.paths import state_dir as default

    return default() / "service"


def _db(state_dir: str | None) -> ServiceDb:
    from vmsentinel.service.accounts import ServiceDb

    return ServiceDb(_state(state_dir) / "service.db")


def _done(json: bool, data: dict[str, str], text: str) -> None:
    """What a change did: one JSON object on stdout, or a line on stderr."""
    if json:
        print_json(data)
    else:
        err.print(text, highlight=False)


def _operator() -> str:
    """Who made a change from the command line, for the audit log."""
    try:
        return f"{getpass.getuser()} (cli)"
    except (KeyError, OSError):
        return f"uid {os.getuid()} (cli)"


@handle_errors
def serve(
    targets: Annotated[
        list[str] | None,
        typer.Argument(metavar="TARGET", help="Guests to watch (any TARGET form; libvirt: follows every domain)."),
    ] = None,
    policy: POLICY = None,
    trusted_key: TRUSTED = None,
    policy_signature: SIGNATURE = None,
    unsigned_policy: UNSIGNED = False,
    listen: Annotated[
        str | None,
        typer.Option("--listen", metavar="ADDR:PORT", help="Where to serve HTTP (default: 127.0.0.1:8787, this host only)."),
    ] = None,
    tls_cert: Annotated[
        str | None, typer.Option("--tls-cert", metavar="FILE", help="TLS certificate (PEM); needed to listen beyond this host.")
    ] = None,
    tls_key: Annotated[str | None, typer.Option("--tls-key", metavar="FILE", help="The certificate's private key (PEM).")] = None,
    insecure_http: Annotated[
        bool, typer.Option("--insecure-http", help="Serve plain HTTP beyond this host (passwords and tokens in clear).")
    ] = False,
    state_dir: STATE = None,
    interval: Annotated[
        float | None, typer.Option(metavar="SECONDS", help="Time between sweeps (default: the policy's).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(metavar="N", min=0, help="Worker processes (default: one per core; 0: threads).")
    ] = None,
    config: Annotated[
        str | None, typer.Option("--config", metavar="FILE", help="A TOML file with these settings (options given here win).")
    ] = None,
    kernel_images: KERNEL_IMAGES = None,
    bus: BUS = None,
    bus_creds: BUS_CREDS = None,
    bus_tls_ca: BUS_TLS_CA = None,
    host_id: HOST_ID = None,
    fleet: Annotated[
        bool,
        typer.Option(
            "--fleet",
            help="Be a fleet's central service: keep and show every host's events from --bus (no guests of its own).",
        ),
    ] = False,
) -> None:
    """Watch guests and serve the HTTP API and dashboard.

    Open http://127.0.0.1:8787/ and log in as a user made with 'vmsentinel user add'. The API is
    under /api (OpenAPI schema at /api/openapi.json) and takes 'Authorization: Bearer TOKEN'
    ('vmsentinel token new'); /metrics serves Prometheus, /healthz liveness. Findings, triage and
    the audit log live in --state-dir and survive restarts. SIGTERM or Ctrl-C stops.

    A fleet: each host runs 'serve' or 'watch' with --bus URL --bus-creds FILE --host-id NAME; one
    central 'serve --fleet --bus URL --bus-creds FILE' keeps every host's events exactly once and shows
    them with their host ('vmsentinel fleet creds' makes the keys and the NATS server's settings)."""
    from vmsentinel.service.runner import DEFAULT_LISTEN, Service, check_listen, parse_listen, port_free

    if config is not None:
        from vmsentinel.service.config import load_config

        settings = load_config(config)
        targets = targets or settings.get("targets")
        listen = listen or settings.get("listen")
        tls_cert, tls_key = tls_cert or settings.get("tls_cert"), tls_key or settings.get("tls_key")
        insecure_http = insecure_http or settings.get("insecure_http", False)
        state_dir = state_dir or settings.get("state_dir")
        policy, trusted_key = policy or settings.get("policy"), trusted_key or settings.get("trusted_keys")
        policy_signature = policy_signature or settings.get("policy_signature")
        unsigned_policy = unsigned_policy or settings.get("unsigned_policy", False)
        interval = interval if interval is not None else settings.get("interval")
        workers = workers if workers is not None else settings.get("workers")
        kernel_images = kernel_images or settings.get("kernel_images")
        bus, bus_creds = bus or settings.get("bus"), bus_creds or settings.get("bus_creds")
        bus_tls_ca, host_id = bus_tls_ca or settings.get("bus_tls_ca"), host_id or settings.get("host_id")
        fleet = fleet or settings.get("fleet", False)
    use_kernel_images(kernel_images)
    options = bus_options(bus, bus_creds, bus_tls_ca)
    host = host_id_of(host_id)
    if fleet and options is None:
        fail("--fleet reads every host's events from a bus: give --bus URL (and --bus-creds FILE)")
    if fleet and targets:
        fail("a fleet's central service watches no guests of its own: give the targets to the hosts' sentinels")
    where = parse_listen(listen or DEFAULT_LISTEN)
    if (tls_cert is None) != (tls_key is None):
        fail("give both --tls-cert and --tls-key, or neither")
    tls = (tls_cert, tls_key) if tls_cert and tls_key else None
    warning = check_listen(where, tls, insecure_http)
    if warning:
        err.print(f"[bold red]{warning}[/]", highlight=False, soft_wrap=True)
    if not port_free(where):
        fail(f"cannot listen on {where.host}:{where.port}: the address is in use or not on this host")
    state = _state(state_dir)
    from vmsentinel.service.accounts import ServiceDb

    if not ServiceDb(state / "service.db").users():
        err.print(
            f"note: no user yet; add one with: vmsentinel user add NAME --role admin --state-dir {state}",
            highlight=False,
            soft_wrap=True,
        )
    loader = policy_loader(policy, trusted_key, policy_signature, unsigned_policy)
    load = interval_loader(loader, interval)
    active = load()
    _announce(active)
    single, sources = split_targets(targets or [])
    if workers is None:
        workers = len(os.sched_getaffinity(0))
    service = Service(
        single,
        active,
        state,
        policy_source=policy,
        sources=sources,
        workers=workers,
        loader=load if policy is not None else None,
        secure_cookies=tls is not None,
        host=host,
        bus=options,  # type: ignore[arg-type]
        fleet=fleet,
    )
    active.remove()
    scheme = "https" if tls else "http"
    err.print(
        f"serving {scheme}://{where.host}:{where.port}/ ; "
        + (f"the fleet on {options.url}" if fleet and options else f"{len(targets or [])} target(s)")  # type: ignore[attr-defined]
        + (f"; publishing to {options.url} as host {host}" if options and not fleet else "")  # type: ignore[attr-defined]
        + f"; state in {state}",
        highlight=False,
        soft_wrap=True,
    )
    service.run(where, tls)


user_app = App(help="Users of the service (Argon2id password hashes, roles viewer, analyst, admin).")


def _password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        fail("the passwords differ")
    return first


@user_app.command("add")
@handle_errors
def user_add(
    name: Annotated[str, typer.Argument(help="The user name.")],
    role: Annotated[
        str, typer.Option("--role", metavar="ROLE", help="viewer (reads), analyst (+ triage and responses) or admin (+ users).")
    ] = "viewer",
    state_dir: STATE = None,
    json: JSON = False,
) -> None:
    """Add a user; the password is read from standard input when it is not a terminal (one line)."""
    _db(state_dir).add_user(name, role, _password(), by=_operator())
    _done(json, {"user": name, "role": role}, f"user {name} added ({role})")


@user_app.command("passwd")
@handle_errors
def user_passwd(name: Annotated[str, typer.Argument(help="The user name.")], state_dir: STATE = None, json: JSON = False) -> None:
    """Set a user's password (ends their browser sessions)."""
    _db(state_dir).set_password(name, _password(), by=_operator())
    _done(json, {"user": name, "password": "set"}, f"password of {name} set")


@user_app.command("remove")
@handle_errors
def user_remove(name: Annotated[str, typer.Argument(help="The user name.")], state_dir: STATE = None, json: JSON = False) -> None:
    """Remove a user with their tokens and sessions."""
    _db(state_dir).remove_user(name, by=_operator())
    _done(json, {"removed": name}, f"user {name} removed")


@user_app.command("list")
@handle_errors
def user_list(state_dir: STATE = None, json: JSON = False) -> None:
    """List users and their roles."""
    users = _db(state_dir).users()
    if json:
        print_json(users)
        return
    for u in users:
        out.print(f"{u['name']}\t{u['role']}", highlight=False)


token_app = App(help="API tokens: sent as 'Authorization: Bearer TOKEN'; shown once, kept only as a hash.")


@token_app.command("new")
@handle_errors
def token_new(
    user: Annotated[str, typer.Option("--user", metavar="NAME", help="Whose token (it has their role).")],
    expires: Annotated[
        float | None, typer.Option("--expires", metavar="DAYS", help="Lifetime in days (default: until revoked).")
    ] = None,
    state_dir: STATE = None,
    json: JSON = False,
) -> None:
    """Make an API token and print it (once: it cannot be shown again)."""
    token_id, secret = _db(state_dir).new_token(user, expires, by=_operator())
    if json:
        print_json({"id": token_id, "user": user, "token": secret})
    else:
        out.print(secret, highlight=False)
        err.print(f"token {token_id} for {user}" + (f", expires in {expires:g} days" if expires else ", until revoked"))


@token_app.command("list")
@handle_errors
def token_list(state_dir: STATE = None, json: JSON = False) -> None:
    """List tokens (never their secrets)."""
    tokens = _db(state_dir).tokens()
    if json:
        print_json(tokens)
        return
    for t in tokens:
        out.print(f"{t['id']}\t{t['user']}\texpires {t['expires'] or 'never'}", highlight=False)


@token_app.command("revoke")
@handle_errors
def token_revoke(
    token_id: Annotated[str, typer.Argument(metavar="ID", help="The token's id (token list).")],
    state_dir: STATE = None,
    json: JSON = False,
) -> None:
    """Revoke a token."""
    _db(state_dir).revoke_token(token_id, by=_operator())
    _done(json, {"revoked": token_id}, f"token {token_id} revoked")


service_app = App(help="Run vmsentinel serve as a system service.")


@service_app.command("install")
@handle_errors
def service_install(
    unit_dir: Annotated[str, typer.Option("--unit-dir", metavar="DIR", help="Where to write the unit.")] = "/etc/systemd/system",
    args: Annotated[str, typer.Option("--args", metavar="ARGS", help="Arguments of vmsentinel serve in the unit.")] = "libvirt:",
    state_dir: Annotated[str, typer.Option("--state-dir", metavar="DIR", help="The service's folder.")] = "/var/lib/vmsentinel",
    json: JSON = False,
) -> None:
    """Write a hardened systemd unit for 'vmsentinel serve' (then: systemctl daemon-reload; systemctl enable --now vmsentinel)."""
    from vmsentinel.service.systemd import unit_text

    path = Path(unit_dir) / "vmsentinel.service"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        unit_text(
            Path(sys.argv[0]).resolve() if Path(sys.argv[0]).name == "vmsentinel" else Path(sys.executable).parent / "vmsentinel",
            args,
            Path(state_dir),
        )
    )
    if json:
        print_json({"unit": str(path)})
    else:
        err.print(f"wrote {path}; now: systemctl daemon-reload && systemctl enable --now vmsentinel")
