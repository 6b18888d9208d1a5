"""The exit status of every ``vmsentinel`` command, in one place.

The Typer application and the quick JSON path (:mod:`vmsentinel.cli.entry`)
both take their codes from here, so a script sees the same status whichever
path answered. Nothing here imports Typer or Rich.
"""

from __future__ import annotations

#: done: the job is done, the guest is clean, the file is valid
EXIT_OK = 0
#: the check ran and the answer is no: findings (``check``); a signature, bundle or
#: alert record that does not verify (``key verify``, ``policy verify``, ``alerts verify``)
EXIT_NO = 1
#: could not do the job: a bad target, an unreadable file, a refused policy, any
#: vmsentinel error, a usage error (Click's own code for those is 2 as well)
EXIT_ERROR = 2
#: interrupted (Ctrl-C): 128 + SIGINT, as shells report it
EXIT_INTERRUPTED = 130

#: the table at the end of ``vmsentinel --help`` (``\b``: Click keeps the lines as they are)
EXIT_STATUS_HELP = f"""Exit status:

\b
  {EXIT_OK}    done: the job is done, the guest is clean, the file is valid
  {EXIT_NO}    the check ran and the answer is no: check found something, or
       a signature, bundle or alert record does not verify
  {EXIT_ERROR}    could not do the job: bad target, unreadable file, refused
       policy, usage error
  {EXIT_INTERRUPTED}  interrupted"""


def exit_status_help(ok: str, no: str | None = None) -> str:
    """One line for a command's help: what 0 (and 1, for a check) mean for it."""
    codes = [f"{EXIT_OK} {ok}", *([f"{EXIT_NO} {no}"] if no else []), f"{EXIT_ERROR} error", f"{EXIT_INTERRUPTED} interrupted"]
    return "Exit status: " + ", ".join(codes) + "."
