"""Shared CLI plumbing: one-line errors with a non-zero exit, JSON output,
progress on stderr so stdout stays clean for ``--json``."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console

from vmsentinel.cli.jsonout import json_text
from vmsentinel.errors import VmSentinelError

out = Console()
err = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")

EXIT_ERROR = 1


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn our errors into ``error: <reason>`` on stderr and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except VmSentinelError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(EXIT_ERROR) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def print_json(data: Any) -> None:
    sys.stdout.write(json_text(data))


@contextmanager
def progress(enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr whose text a long job updates step by step."""
    if not enabled or not err.is_terminal:
        yield lambda msg: err.print(f"[dim]… {msg}[/]", highlight=False) if enabled else None
        return
    with err.status("starting") as status:
        yield lambda msg: status.update(msg)


def hexaddr(value: int | None) -> str | None:
    return None if value is None else f"{value:#x}"
