"""``vmsentinel key``: make a minisign key pair, sign a file, check a file's signature.

The files are the minisign CLI's and ``ssh-keygen -Y``'s own formats, so operators can sign
with the tools they already have and vmsentinel checks the result (and the other way round).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vmsentinel.cli.app import App
from vmsentinel.cli.output import err, out, print_json, readable_file
from vmsentinel.cli.status import EXIT_NO, exit_status_help
from vmsentinel.errors import SignatureError
from vmsentinel.trust.signing import find_signature, load_trusted_key, load_trusted_keys, new_key, sign_file, verify_file

app = App(
    help="Make signing keys, sign files, check signatures.\n\n"
    "The keys are Ed25519; the files are those of minisign and ssh-keygen -Y.",
    no_args_is_help=True,
)

JSON = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


@app.command("new")
def new(
    prefix: Annotated[str, typer.Argument(metavar="PREFIX", help="Write PREFIX.key (secret, mode 0600) and PREFIX.pub.")],
    comment: Annotated[
        str, typer.Option("--comment", metavar="COMMENT", help="A one-line comment stored in both key files.")
    ] = "vmsentinel signing key",
    json: JSON = False,
) -> None:
    """Make a minisign key pair.

    The secret key is not encrypted. Existing files are never overwritten."""
    secret, public = new_key(Path(prefix), comment)
    key_id = load_trusted_key(public).key_id
    if json:
        print_json({"secret_key": str(secret), "public_key": str(public), "key_id": key_id})
        return
    out.print(f"secret key: {secret}\npublic key: {public}\nkey id:     {key_id}", highlight=False, markup=False, soft_wrap=True)


@app.command("sign")
def sign(
    file: Annotated[str, typer.Argument(metavar="FILE", help="The file to sign; the signature goes to FILE.minisig.")],
    key: Annotated[str, typer.Option("--key", "-k", metavar="KEY", help="The minisign secret key file (not encrypted).")],
    trusted_comment: Annotated[
        str | None,
        typer.Option("--trusted-comment", metavar="COMMENT", help="A signed comment (default: the time and the file name)."),
    ] = None,
    json: JSON = False,
) -> None:
    """Sign a file with a minisign secret key.

    The signature is in the prehashed format minisign 0.11 writes."""
    signature = sign_file(file, key, trusted_comment)
    if json:
        print_json({"file": file, "signature": str(signature)})
        return
    out.print(f"signature written to {signature}", highlight=False, markup=False, soft_wrap=True)


@app.command("verify", epilog=exit_status_help("valid", "not valid (the reason is printed)"))
def verify(
    file: Annotated[str, typer.Argument(metavar="FILE", help="The signed file.")],
    key: Annotated[
        list[str],
        typer.Option(
            "--key",
            "-k",
            metavar="KEY",
            help="A trusted minisign public key, OpenSSH public key or allowed_signers file (repeatable).",
        ),
    ],
    signature: Annotated[
        str | None,
        typer.Option("--signature", "-s", metavar="FILE", help="The signature file (default: FILE.minisig, else FILE.sig)."),
    ] = None,
    json: JSON = False,
) -> None:
    """Check a file's minisign or SSH signature.

    A key, file or signature file that cannot be read is an error; a missing default signature, or one
    that does not match or is not made by a trusted key, means the file is not valid."""
    keys = load_trusted_keys(key)
    readable_file(file, "file")
    if signature is not None:
        readable_file(signature, "signature")
    sig_path: Path | None = None
    try:
        sig_path = Path(signature) if signature is not None else find_signature(file)
        verified = verify_file(file, sig_path, keys)
    except SignatureError as exc:
        if json:
            print_json(
                {"valid": False, "file": file, "signature": None if sig_path is None else str(sig_path), "reason": str(exc)}
            )
        else:
            err.print(f"invalid: {exc}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_NO) from None
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
