"""``vmsentinel policy pack|verify``: make a policy bundle from a folder, and check one as the sentinel will."""

from __future__ import annotations

from typing import Annotated

import typer

from vmsentinel.cli.output import err, handle_errors, out, print_json

app = typer.Typer(help="Signed policy bundles: pack a policy folder, check a bundle.", no_args_is_help=True)


@app.command("pack")
@handle_errors
def pack(
    folder: Annotated[str, typer.Argument(help="Folder with policy.toml and the files it names (rules, allowlists, keys).")],
    output: Annotated[str, typer.Option("-o", "--output", help="The bundle to write.")],
    json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Pack a policy folder into one bundle; then sign the bundle with minisign, `ssh-keygen -Y sign -n vmsentinel`
    or `vmsentinel key sign`."""
    from vmsentinel.pipeline.loading import pack_policy_bundle

    manifest = pack_policy_bundle(folder, output)
    if json:
        print_json({"bundle": output, **manifest})
        return
    files = manifest["files"]
    assert isinstance(files, dict)
    out.print(f"{output}: {len(files)} files packed from {folder}", highlight=False)
    err.print(f"now sign it, e.g.: minisign -S -m {output}   or   vmsentinel key sign {output} --key KEY", highlight=False)


@app.command("verify")
@handle_errors
def verify(
    bundle: Annotated[str, typer.Argument(help="The policy bundle.")],
    trusted_key: Annotated[
        list[str] | None, typer.Option("--trusted-key", help="Trusted key (repeatable; default: as watch/check).")
    ] = None,
    signature: Annotated[str | None, typer.Option("--signature", help="Default: BUNDLE.minisig or BUNDLE.sig.")] = None,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Check a bundle exactly as watch and check will load it (signature, manifest, policy, allowlists, and
    every Sigma and YARA rule compiled: a broken rule is refused with its file and line).
    Exit 0 when it would be accepted, 1 with the reason when not."""
    from vmsentinel.pipeline.compiled import CompiledPolicy
    from vmsentinel.pipeline.loading import PolicyLoader

    active = PolicyLoader(bundle=bundle, trusted_keys=trusted_key, signature=signature).load()
    try:
        CompiledPolicy.compile(active.policy, active.allowlist)  # a rule that does not compile refuses the bundle
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
