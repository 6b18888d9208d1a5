"""The control-console protocol against a fake guest agent (no VM)."""

from __future__ import annotations

import base64
import gzip
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vmsentinel.errors import GuestTimeout, LabError
from vmsentinel.lab.console import connect, run_in_guest, wait_ready


def _serve(path: Path, handler: Callable[[socket.socket], None]) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def loop() -> None:
        conn, _ = server.accept()
        try:
            handler(conn)
        finally:
            conn.close()
            server.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def _read_request(conn: socket.socket) -> tuple[str, str]:
    buf = b""
    while not buf.endswith(b"\n"):
        buf += conn.recv(4096)
    _, req_id, payload = buf.decode().split()
    return req_id, base64.b64decode(payload).decode()


def _reply(req_id: str, out: bytes, err: bytes, status: int) -> bytes:
    out64 = base64.encodebytes(gzip.compress(out)).decode()
    err64 = base64.encodebytes(err).decode()
    return f"@@OUT {req_id}\n{out64}@@ERR {req_id}\n{err64}@@END {req_id} {status}\n".encode()


@pytest.fixture
def sock_path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "ctl.sock"


def test_request_reply_with_stale_output_ignored(sock_path: Path, tmp_path: Path) -> None:
    seen: list[str] = []

    def agent(conn: socket.socket) -> None:
        req_id, script = _read_request(conn)
        seen.append(script)
        # an echo of the request and a stale reply to an older request come first
        conn.sendall(b"@@REQ echo\n" + _reply("deadbeef0000", b"stale", b"", 9))
        conn.sendall(_reply(req_id, b"hello\n" * 1000, b"warn\n", 3))

    _serve(sock_path, agent)
    result = run_in_guest(sock_path, "echo hello", tmp_path / "lock", timeout=5)
    assert seen == ["echo hello"]
    assert result.status == 3 and result.stdout == b"hello\n" * 1000 and result.stderr == b"warn\n"


def test_silent_guest_times_out(sock_path: Path, tmp_path: Path) -> None:
    def silent_agent(conn: socket.socket) -> None:
        _read_request(conn)
        conn.recv(1)  # never answers; returns when the client gives up

    _serve(sock_path, silent_agent)
    with pytest.raises(GuestTimeout):
        run_in_guest(sock_path, "sleep 100", tmp_path / "lock", timeout=0.3)


def test_guest_closing_the_console_is_an_error(sock_path: Path, tmp_path: Path) -> None:
    def closing_agent(conn: socket.socket) -> None:
        _read_request(conn)

    _serve(sock_path, closing_agent)
    with pytest.raises(LabError, match="closed"):
        run_in_guest(sock_path, "true", tmp_path / "lock", timeout=5)


def test_wait_ready_reads_release(sock_path: Path) -> None:
    _serve(sock_path, lambda conn: conn.sendall(b"boot noise\n@@READY 6.12.1-amd64\n"))
    sock = connect(sock_path)
    try:
        assert wait_ready(sock, 5) == "6.12.1-amd64"
    finally:
        sock.close()


def test_unreachable_console(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="cannot reach"):
        connect(tmp_path / "missing.sock", timeout=0.2)


def test_long_scripts_go_in_acknowledged_chunks(sock_path: Path, tmp_path: Path) -> None:
    script = "echo " + "x" * 20000
    received: list[str] = []

    def agent(conn: socket.socket) -> None:
        buf = b""
        chunks = []
        while True:
            while b"\n" not in buf:
                buf += conn.recv(65536)
            line, _, buf = buf.partition(b"\n")
            parts = line.decode().split()
            if parts[0] == "@@PUT":
                chunks.append(parts[2])
                conn.sendall(f"@@ACK {parts[1]}\n".encode())
            elif parts[0] == "@@REQ":
                assert len(parts) == 2  # the script came in chunks
                received.append(base64.b64decode("".join(chunks)).decode())
                conn.sendall(_reply(parts[1], b"ok", b"", 0))
                return

    _serve(sock_path, agent)
    result = run_in_guest(sock_path, script, tmp_path / "lock", timeout=5)
    assert result.stdout == b"ok" and received == [script]
