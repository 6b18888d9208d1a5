"""``vmsentinel policy pack|verify``: make a policy bundle from a folder, and check one as the sentinel will."""

from __future__ import annotations

from typing import Annotated

import typer

from vmsentinel.cli.app import App
from vmsentinel.cli.output import err, fail, out, print_json, readable_file
from vmsentinel.cli.status import EXIT_NO, exit_status_help
from vmsentinel.errors import VmSentinelError

app = App(help="Pack policy bundles and check them.", no_args_is_help=True)


@app.command("pack")
def pack(
    folder: Annotated[
        str, typer.Argument(metavar="DIR", help="A folder with policy.toml and the files it names (rules, allowlists, keys).")
    ],
    output: Annotated[str, typer.Option("-o", "--output", metavar="FILE", help="The bundle to write.")],
    json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Pack a policy folder into one bundle.

    Then sign the bundle with minisign, 'ssh-keygen -Y sign -n vmsentinel' or 'vmsentinel key sign'."""
    from vmsentinel.pipeline.loading import pack_policy_bundle

    manifest = pack_policy_bundle(folder, output)
    if json:
        print_json({"bundle": output, **manifest})
        return
    files = manifest["files"]
    assert isinstance(files, dict)
    out.print(f"{output}: {len(files)} files packed from {folder}", highlight=False)
    err.print(f"now sign it, e.g.: minisign -S -m {output}   or   vmsentinel key sign {output} --key KEY", highlight=False)


@app.command("verify", epilog=exit_status_help("accepted", "refused (the reason is printed)"))
def verify(
    bundle: Annotated[str, typer.Argument(metavar="BUNDLE", help="The policy bundle.")],
    trusted_key: Annotated[
        list[str] | None,
        typer.Option("--trusted-key", metavar="KEY", help="A trusted key (repeatable; default: as for watch and check)."),
    ] = None,
    signature: Annotated[
        str | None, typer.Option("--signature", metavar="FILE", help="The signature (default: BUNDLE.minisig or BUNDLE.sig).")
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Check a bundle as watch and check will load it.

    The signature, the manifest, the policy and its allowlists are checked, and every YARA and Sigma
    rule is compiled (a broken one is refused with its file and line). A bundle, key or signature file
    that cannot be read is an error; a bundle that does not verify is refused."""
    from vmsentinel.pipeline.compiled import CompiledPolicy
    from vmsentinel.pipeline.loading import PolicyLoader, trusted_key_files
    from vmsentinel.trust.signing import load_trusted_keys

    readable_file(bundle, "policy bundle")
    if signature is not None:
        readable_file(signature, "signature")
    if not load_trusted_keys(trusted_key_files(trusted_key)):  # a key that cannot be read fails here, with status 2
        fail("no trusted keys: give --trusted-key KEY, or set $VMSENTINEL_TRUSTED_KEYS")
    try:
        active = PolicyLoader(bundle=bundle, trusted_keys=trusted_key, signature=signature).load()
        try:
            CompiledPolicy.compile(active.policy, active.allowlist)  # exactly what watch does next
        except VmSentinelError:
            active.remove()
            raise
    except VmSentinelError as exc:
        if json:
            print_json({"bundle": bundle, "accepted": False, "reason": str(exc)})
        else:
            err.print(f"refused: {exc}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_NO) from None
    try:
        policy = active.policy
        summary = {
            "bundle": bundle,
            "accepted": True,
            "signed_by": active.description,
            "detectors": policy.detectors,
            "sigma_rules": len(policy.sigma_rules),
            "yara_rules": len(policy.yara_rules),
            "allowlists": len(policy.allowlists),
            "responses": {**policy.by_severity, **policy.by_detector},
        }
        if json:
            print_json(summary)
        else:
            out.print(f"{bundle}: accepted; {active.description}", highlight=False, soft_wrap=True)
    finally:
        active.remove()
