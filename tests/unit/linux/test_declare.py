"""One declaration per view gives JSON keys, table columns and SQLite columns."""

from __future__ import annotations

from vmsentinel.os.declare import records_table, records_to_json, sqlite_columns
from vmsentinel.os.linux.views.sockets import Socket
from vmsentinel.os.records import Module, Task

TASK = Task(
    pid=7,
    ppid=1,
    tgid=7,
    name="sh",
    comm="sh",
    state="S",
    kernel_thread=False,
    flags=0x400100,
    uid=0,
    gid=0,
    euid=0,
    egid=0,
    suid=0,
    fsuid=0,
    cap_effective=0x1FF,
    start_time_ns=5,
    threads=(7, 8),
    exe="/bin/sh",
    cmdline=("sh", "-c", "x"),
    sources=("pid_table", "task_list"),
    address=0xFFFF888000001000,
)


def test_json_keys_follow_the_declaration_and_hex_fields_are_strings() -> None:
    data = records_to_json([TASK])[0]
    assert list(data) == [f for f, _ in sqlite_columns(Task)]
    assert data["address"] == "0xffff888000001000" and data["cap_effective"] == "0x1ff"
    assert data["cmdline"] == ["sh", "-c", "x"] and data["pid"] == 7


def test_table_columns_are_the_declared_titles() -> None:
    table = records_table([TASK], Task)
    titles = [str(c.header) for c in table.columns]
    assert titles[:3] == ["PID", "PPID", "NAME"] and "ARGS" in titles and "TASK" not in titles
    args_col = titles.index("ARGS")
    assert table.columns[args_col]._cells == ["sh -c x"]


def test_sqlite_columns_from_the_declaration() -> None:
    cols = dict(sqlite_columns(Task))
    assert cols["pid"] == "INTEGER" and cols["name"] == "TEXT" and cols["kernel_thread"] == "INTEGER"
    assert cols["exe"] == "TEXT" and cols["cmdline"] == "TEXT"  # optional and sequence fields
    assert dict(sqlite_columns(Module))["size"] == "INTEGER"
    assert dict(sqlite_columns(Socket))["local_port"] == "INTEGER"
