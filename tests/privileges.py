"""Running the sentinel as a user with fewer privileges (``setpriv``), for the tests that check what it
says when it lacks one. Where that user cannot even start the test interpreter or import the project
(a checkout under a private folder such as /root), such a test cannot be run, and is skipped saying so."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

SETPRIV = shutil.which("setpriv")
NOBODY = ["--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def skip_unless_reachable(setpriv_args: list[str]) -> None:
    """Skip the calling test when a process dropped to ``setpriv_args`` cannot import vmsentinel here."""
    assert SETPRIV is not None
    reach = subprocess.run([SETPRIV, *setpriv_args, sys.executable, "-c", "import vmsentinel"], capture_output=True, text=True)
    if reach.returncode != 0:  # e.g. a project under /root (0700): the test cannot drop privileges here
        pytest.skip(f"user {setpriv_args} cannot run the test interpreter {sys.executable}: {reach.stderr.strip()[-200:]}")
