"""``vmsentinel fleet``: credentials for a fleet's hosts and the NATS server settings that bind
each host to its own subjects."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vmsentinel.cli.app import App
from vmsentinel.cli.output import out, print_json

app = App(
    help="A fleet of sentinels on one NATS JetStream bus: per-host credentials and the server's settings.",
    no_args_is_help=True,
)


@app.command("creds")
def creds(
    hosts: Annotated[list[str], typer.Argument(metavar="HOST", help="Host ids to make credentials for.")],
    out_dir: Annotated[
        str, typer.Option("--out", "-o", metavar="DIR", help="Where the keys (HOST.nk, central.nk) and nats-server.conf go.")
    ] = "fleet",
    listen: Annotated[
        str, typer.Option("--listen", metavar="ADDR:PORT", help="Where the NATS server listens.")
    ] = "127.0.0.1:4222",
    store_dir: Annotated[
        str, typer.Option("--store-dir", metavar="DIR", help="The NATS server's JetStream storage.")
    ] = "/var/lib/nats",
    tls_cert: Annotated[
        str | None, typer.Option("--tls-cert", metavar="FILE", help="The server's TLS certificate (PEM): needed beyond loopback.")
    ] = None,
    tls_key: Annotated[str | None, typer.Option("--tls-key", metavar="FILE", help="Its private key (PEM).")] = None,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Make an NKey for each HOST and for the central service, and the nats-server configuration.

    Keys that exist in DIR are kept (running again adds hosts); nats-server.conf names every key in
    DIR. Each host's key may publish only under its own host id and read only requests for it; the
    central key reads everything and asks any host. Give HOST.nk to that host's sentinel
    (--bus-creds), central.nk to 'serve --fleet', and start the server with
    'nats-server -c DIR/nats-server.conf'. The seeds are secret (mode 0600). Beyond loopback the
    server needs TLS (--tls-cert, --tls-key): the sentinels then connect with tls://HOST:PORT."""
    from vmsentinel.cli.output import fail
    from vmsentinel.fleet.creds import make_fleet

    if (tls_cert is None) != (tls_key is None):
        fail("give both --tls-cert and --tls-key, or neither")
    tls = (tls_cert, tls_key) if tls_cert and tls_key else None
    ids, central, conf = make_fleet(Path(out_dir), hosts, listen=listen, store_dir=store_dir, tls=tls)
    if json:
        print_json(
            {
                "hosts": [{"host": i.name, "seed": str(i.seed_file), "public_key": i.public_key} for i in ids],
                "central": {"seed": str(central.seed_file), "public_key": central.public_key},
                "server_config": str(conf),
            }
        )
        return
    for i in ids:
        out.print(f"host {i.name}: {i.seed_file} ({i.public_key})", highlight=False, soft_wrap=True)
    out.print(f"central: {central.seed_file} ({central.public_key})", highlight=False, soft_wrap=True)
    out.print(f"server:  nats-server -c {conf}", highlight=False, soft_wrap=True)
