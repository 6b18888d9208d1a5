"""The ``vmsentinel`` executable's first stop.

A view asked for as JSON (``vmsentinel ps IMAGE --json``) is what scripts and
other tools call in a loop, so it is answered here without loading Typer, Rich
and everything else the full command line needs (about 100 ms of imports for
a job that takes 15 ms). Anything else, and anything this module does not
fully understand (``--help``, an unknown option, a bad PID), goes to the Typer
application, which explains and fails properly. ``VMSENTINEL_QUICK=0`` turns
the short path off. Both paths exit with the codes of :mod:`.status`.
"""

from __future__ import annotations

import os
import sys


def quick_view_args(argv: list[str]) -> tuple[str, str, int | None, dict[str, bool]] | None:
    """(view, target, pid, options) when ``argv`` is a view with ``--json`` and nothing unusual."""
    from vmsentinel.cli.view_records import PID_VIEWS, VIEW_FLAGS, VIEWS

    if not argv or argv[0] not in VIEWS or "--json" not in argv:
        return None
    view, flags = argv[0], VIEW_FLAGS.get(argv[0], {})
    positional: list[str] = []
    options: dict[str, bool] = {}
    for token in argv[1:]:
        if token == "--json":
            continue
        if token in flags:
            key, value = flags[token]
            options[key] = value
        elif token.startswith("-"):
            return None  # --help, -v, an option this path does not know: Typer decides
        else:
            positional.append(token)
    wanted = 2 if view in PID_VIEWS else 1
    if len(positional) != wanted:
        return None
    pid = None
    if view in PID_VIEWS:
        if not positional[1].isdigit():
            return None
        pid = int(positional[1])
    return view, positional[0], pid, options


def _quick(args: tuple[str, str, int | None, dict[str, bool]]) -> int:
    from vmsentinel.cli.jsonout import json_text
    from vmsentinel.cli.status import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK
    from vmsentinel.cli.view_records import read_view, view_json
    from vmsentinel.errors import VmSentinelError, host_error_text

    view, target, pid, options = args
    try:
        result = read_view(view, target, pid, **options)
    except VmSentinelError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_ERROR
    except BrokenPipeError:
        return EXIT_ERROR
    except OSError as exc:  # as the full command line says it (cli/output.py: errors_exit)
        sys.stderr.write(f"error: {host_error_text(exc)}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return EXIT_INTERRUPTED
    for problem in result.problems[:20]:
        sys.stderr.write(f"warning: {problem}\n")
    if len(result.problems) > 20:
        sys.stderr.write(f"warning: … and {len(result.problems) - 20} more\n")
    sys.stdout.write(json_text(view_json(view, result)))
    return EXIT_OK


def main() -> None:
    if os.environ.get("VMSENTINEL_QUICK", "1") != "0":
        args = quick_view_args(sys.argv[1:])
        if args is not None:
            from vmsentinel.cli.status import EXIT_ERROR

            status = _quick(args)
            # everything is written and the guest is closed: skip tearing down the interpreter
            try:
                sys.stdout.flush()
            except OSError:  # e.g. a closed pipe: what was asked for did not arrive
                status = status or EXIT_ERROR
            sys.stderr.flush()
            os._exit(status)
    from vmsentinel.cli.main import main as full

    full()
