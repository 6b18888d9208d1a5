"""The Typer classes every ``vmsentinel`` command group is made of.

Help reads like a Unix tool's: plain text (no Rich panels and no Rich markup,
so ``socket:[inode]`` in a help string stays as written), arguments in capitals
(``TARGET``, ``PID``; ``[NAME]`` when optional, ``TARGET...`` when repeatable),
an option's value named after it (``--db FILE``), flags without a type. Every
option and argument gets a name: its own metavar, else its parameter name in
capitals.

A group is also the last net for errors: a vmsentinel error anywhere below it
is one ``error:`` line and exit status 2, Ctrl-C is 130 (see :mod:`.status`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperCommand, TyperGroup
from typer.models import CommandFunctionType

from vmsentinel.cli.output import errors_exit

if TYPE_CHECKING:
    from typer._click import Context, HelpFormatter, Parameter


def _name_values(params: Iterable[Parameter]) -> None:
    """Give every argument, and every option that takes a value, a name in capitals."""
    for param in params:
        takes_value = param.param_type_name == "argument" or not (
            getattr(param, "is_flag", False) or getattr(param, "count", False)
        )
        if param.metavar is None and takes_value:
            param.metavar = (param.name or "value").upper()


def _argument_name(param: Parameter) -> str:
    return f"{param.metavar}..." if param.nargs != 1 else str(param.metavar)


class Command(TyperCommand):
    """A command with Unix-style usage (``vmsentinel maps [OPTIONS] TARGET PID``) and help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _name_values(self.params)

    def collect_usage_pieces(self, ctx: Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = _argument_name(param)
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def format_options(self, ctx: Context, formatter: HelpFormatter) -> None:
        params = [p for p in self.get_params(ctx) if not getattr(p, "hidden", False)]
        arguments = [(_argument_name(p), getattr(p, "help", None) or "") for p in params if p.param_type_name == "argument"]
        options = [r for p in params if p.param_type_name == "option" for r in [p.get_help_record(ctx)] if r is not None]
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


class Group(TyperGroup):
    """A command group whose commands' vmsentinel errors end as one line and exit status 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _name_values(self.params)

    def invoke(self, ctx: Context) -> Any:
        with errors_exit():
            return super().invoke(ctx)


class App(typer.Typer):
    """``typer.Typer`` with plain help, :class:`Group` for itself and :class:`Command` for its commands."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", Group)
        kwargs.setdefault("rich_markup_mode", None)
        kwargs.setdefault("pretty_exceptions_enable", False)
        super().__init__(**kwargs)

    def command(self, name: str | None = None, **kwargs: Any) -> Callable[[CommandFunctionType], CommandFunctionType]:
        kwargs.setdefault("cls", Command)
        return super().command(name, **kwargs)
