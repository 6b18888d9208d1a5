"""``vmsentinel key``: make a minisign key pair, sign a file, check a file's signature.

The files are the minisign CLI's and ``ssh-keygen -Y``'s own formats, so operators can sign
with the tools they already have and vmsentinel checks the result (and the other way round).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vmsentinel.cli.output import EXIT_ERROR, err, handle_errors, out, print_json
from vmsentinel.errors import SignatureError
from vmsentinel.trust.signing import find_signature, load_trusted_key, load_trusted_keys, new_key, sign_file, verify_file

app = typer.Typer(help="Ed25519 signing keys and signatures (minisign and ssh-keygen -Y compatible).", no_args_is_help=True)


@app.command("new")
@handle_errors
def new(
    prefix: Annotated[str, typer.Argument(help="Write PREFIX.key (secret, mode 0600) and PREFIX.pub (public).")],
    comment: Annotated[
        str, typer.Option("--comment", help="One-line comment stored in both key files.")
    ] = "vmsentinel signing key",
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Generate a minisign key pair (unencrypted secret key; existing files are never overwritten)."""
    secret, public = new_key(Path(prefix), comment)
    key_id = load_trusted_key(public).key_id
    if json:
        print_json({"secret_key": str(secret), "public_key": str(public), "key_id": key_id})
        return
    out.print(f"secret key: {secret}\npublic key: {public}\nkey id:     {key_id}", highlight=False, markup=False, soft_wrap=True)


@app.command("sign")
@handle_errors
def sign(
    file: Annotated[str, typer.Argument(help="The file to sign; the signature goes to FILE.minisig.")],
    key: Annotated[str, typer.Option("--key", "-k", help="The minisign secret key file (unencrypted).")],
    trusted_comment: Annotated[
        str | None, typer.Option("--trusted-comment", help="Signed comment (default: timestamp and file name).")
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Sign a file with a minisign secret key (prehashed format, as minisign 0.11 writes)."""
    signature = sign_file(file, key, trusted_comment)
    if json:
        print_json({"file": file, "signature": str(signature)})
        return
    out.print(f"signature written to {signature}", highlight=False, markup=False, soft_wrap=True)


@app.command("verify")
@handle_errors
def verify(
    file: Annotated[str, typer.Argument(help="The signed file.")],
    key: Annotated[
        list[str],
        typer.Option(
            "--key", "-k", help="A trusted minisign public key, OpenSSH public key or allowed_signers file (repeatable)."
        ),
    ],
    signature: Annotated[
        str | None, typer.Option("--signature", "-s", help="The signature file (default: FILE.minisig, else FILE.sig).")
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Check a file's minisign or SSH signature. Exit status 0: valid; 1: not valid (the reason is printed)."""
    sig_path: Path | None = None
    try:
        sig_path = Path(signature) if signature is not None else find_signature(file)
        keys = load_trusted_keys(key)
        verified = verify_file(file, sig_path, keys)
    except SignatureError as exc:
        if json:
            print_json(
                {"valid": False, "file": file, "signature": None if sig_path is None else str(sig_path), "reason": str(exc)}
            )
        else:
            err.print(f"invalid: {exc}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_ERROR) from None
    if json:
        print_json(
            {
                "valid": True,
                "file": file,
                "signature": str(sig_path),
                "kind": verified.kind,
                "signer": verified.signer,
                "key_source": verified.key_source,
                "trusted_comment": verified.trusted_comment,
            }
        )
        return
    out.print(f"valid: {file} signed by {verified.signer}", highlight=False, markup=False, soft_wrap=True)
    if verified.trusted_comment is not None:
        out.print(f"trusted comment: {verified.trusted_comment}", highlight=False, markup=False, soft_wrap=True)
