"""One declaration per view: a frozen dataclass whose fields (and their
metadata) give the JSON keys, the terminal table's columns, and later the
SQLite columns and the Sigma/OCSF field mapping.

    @dataclass(frozen=True)
    class Module:
        name: str = column("Name")
        base: int = column("Base", hex=True)

    records_to_json(mods); records_table(mods, title="modules")
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table


def column(
    title: str,
    *,
    hex: bool = False,
    table: bool = True,
    sql: str | None = None,
    joiner: str = ",",
    default: Any = dataclasses.MISSING,
) -> Any:
    """A view field: ``title`` heads its table column; ``hex`` prints ints as 0x...; ``table=False`` keeps it
    JSON-only; ``joiner`` joins a sequence in the table; ``default`` as in a dataclass field."""
    return dataclasses.field(default=default, metadata={"title": title, "hex": hex, "table": table, "sql": sql, "joiner": joiner})


def _json_value(value: Any, hexed: bool) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int) and hexed:
        return f"{value:#x}"
    if isinstance(value, tuple | list):
        return [_json_value(v, hexed) for v in value]
    if isinstance(value, frozenset | set):
        return sorted(_json_value(v, hexed) for v in value)
    return value


_JSON_FIELDS: dict[type, list[tuple[str, bool]]] = {}


def record_to_json(record: Any) -> dict[str, Any]:
    fields = _JSON_FIELDS.get(type(record))
    if fields is None:
        fields = _JSON_FIELDS[type(record)] = [(f.name, f.metadata.get("hex", False)) for f in dataclasses.fields(record)]
    return {name: _json_value(getattr(record, name), hexed) for name, hexed in fields}


def records_to_json(records: Sequence[Any]) -> list[dict[str, Any]]:
    return [record_to_json(r) for r in records]


def _cell(value: Any, hexed: bool, joiner: str = ",") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and hexed:
        return f"{value:#x}"
    if isinstance(value, tuple | list | frozenset | set):
        items = sorted(value) if isinstance(value, frozenset | set) else value
        return joiner.join(_cell(v, hexed) for v in items)
    return str(value)


_SQL_TYPES = {int: "INTEGER", str: "TEXT", bool: "INTEGER", float: "REAL"}


def sqlite_columns(record_type: type) -> list[tuple[str, str]]:
    """(column, SQLite type) for a view, from the same declaration: sequences become JSON text."""
    import typing

    hints = typing.get_type_hints(record_type)
    columns = []
    for f in dataclasses.fields(record_type):
        declared = f.metadata.get("sql")
        if declared:
            columns.append((f.name, declared))
            continue
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        base = args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1 else hint
        columns.append((f.name, _SQL_TYPES.get(base, "TEXT")))
    return columns


def records_table(records: Sequence[Any], record_type: type, title: str | None = None) -> Table:
    fields = [f for f in dataclasses.fields(record_type) if f.metadata.get("table", True)]
    from rich.table import Table  # only terminal output needs Rich

    table = Table(*[f.metadata.get("title", f.name) for f in fields], title=title)
    for r in records:
        table.add_row(*[_cell(getattr(r, f.name), f.metadata.get("hex", False), f.metadata.get("joiner", ",")) for f in fields])
    return table
