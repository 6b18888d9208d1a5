"""Shared CLI plumbing: one-line errors with the exit status of :mod:`.status`,
JSON output, progress on stderr so stdout stays clean for ``--json``."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from vmsentinel.cli.jsonout import json_text
from vmsentinel.cli.status import EXIT_ERROR, EXIT_INTERRUPTED
from vmsentinel.errors import VmSentinelError, host_error_text

out = Console(emoji=False)  # a domain named "x" must not print as an emoji in "libvirt:x:"
err = Console(stderr=True, emoji=False)

P = ParamSpec("P")
R = TypeVar("R")


def fail(message: str) -> NoReturn:
    """``error: <message>`` on one line of stderr, then exit status 2."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_ERROR)


def readable_file(path: str, what: str) -> None:
    """Exit with status 2 unless ``path`` is a file this process can read (``what`` names it)."""
    if not os.path.exists(path):
        fail(f"{what} {path} does not exist")
    if not os.path.isfile(path):
        fail(f"{what} {path} is not a file")
    if not os.access(path, os.R_OK):
        fail(f"cannot read {what} {path}: permission denied")


@contextmanager
def errors_exit() -> Iterator[None]:
    """Our errors become one ``error:`` line and exit status 2; Ctrl-C, ``interrupted`` and 130."""
    try:
        yield
    except VmSentinelError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:  # the reader went away (``| head``): what was asked for did not arrive
        raise typer.Exit(EXIT_ERROR) from None
    except OSError as exc:  # the host refused something (a file, a socket): one line, not a traceback
        fail(host_error_text(exc))


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Run a command inside :func:`errors_exit`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with errors_exit():
            return fn(*args, **kwargs)

    return wrapper


def print_json(data: Any) -> None:
    sys.stdout.write(json_text(data))


@contextmanager
def progress(enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr whose text a long job updates step by step."""
    if not enabled or not err.is_terminal:
        yield lambda msg: err.print(f"[dim]… {escape(msg)}[/]", highlight=False) if enabled else None
        return
    with err.status("starting") as status:
        yield lambda msg: status.update(escape(msg))


def hexaddr(value: int | None) -> str | None:
    return None if value is None else f"{value:#x}"
