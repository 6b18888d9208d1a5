"""Host side of the lab control console (the second serial line of a lab guest).

Serves tests and demos only: the sentinel's own view of a guest never uses it.
One request at a time per guest, serialised with a lock file so that several
processes can ``lab exec`` into the same guest::

    result = run_in_guest(ctl_socket, "cat /proc/version", lock_path)
    print(result.stdout.decode(), result.status)
"""

from __future__ import annotations

import base64
import fcntl
import gzip
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from vmsentinel.errors import GuestTimeout, LabError


@dataclass(frozen=True)
class ExecResult:
    """What a command run in the guest gave back."""

    status: int
    stdout: bytes
    stderr: bytes


class _LineReader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def readline(self, deadline: float) -> bytes:
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise LabError("the guest's control console closed (QEMU exited?)")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.rstrip(b"\r")


def connect(ctl_socket: Path, timeout: float = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock.connect(str(ctl_socket))
            return sock
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if time.monotonic() > deadline:
                raise LabError(f"cannot reach the control console at {ctl_socket}: {exc}") from exc
            time.sleep(0.05)


def wait_ready(sock: socket.socket, timeout: float) -> str:
    """Wait for the agent's ``@@READY <release>`` line; return the release."""
    reader = _LineReader(sock)
    deadline = time.monotonic() + timeout
    try:
        while True:
            line = reader.readline(deadline)
            if line.startswith(b"@@READY "):
                return line.split()[1].decode()
    except TimeoutError:
        raise GuestTimeout(f"the guest agent did not report ready within {timeout:.0f} s") from None


def run_in_guest(ctl_socket: Path, script: str, lock_path: Path, timeout: float = 120.0) -> ExecResult:
    """Run a shell script as root in the guest; wait for its output and status."""
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sock = connect(ctl_socket)
        try:
            return _request(sock, script, timeout)
        finally:
            sock.close()


CHUNK = 1024  # base64 characters per line: well inside the guest tty's 4 KiB buffer


def _request(sock: socket.socket, script: str, timeout: float) -> ExecResult:
    req_id = secrets.token_hex(6)
    payload = base64.b64encode(script.encode()).decode()
    reader = _LineReader(sock)
    deadline = time.monotonic() + timeout
    if len(payload) <= CHUNK:
        sock.sendall(f"@@REQ {req_id} {payload}\n".encode())
    else:
        for start in range(0, len(payload), CHUNK):
            sock.sendall(f"@@PUT {req_id} {payload[start : start + CHUNK]}\n".encode())
            _wait_for(reader, f"@@ACK {req_id}".encode(), deadline)
        sock.sendall(f"@@REQ {req_id}\n".encode())
    out: list[bytes] = []
    err: list[bytes] = []
    target: list[bytes] | None = None
    try:
        while True:
            line = reader.readline(deadline)
            parts = line.split()
            if len(parts) >= 2 and parts[0].startswith(b"@@") and parts[1].decode(errors="replace") != req_id:
                target = None  # a stale reply to someone else's request
                continue
            if parts[:1] == [b"@@OUT"]:
                target = out
            elif parts[:1] == [b"@@ERR"]:
                target = err
            elif parts[:1] == [b"@@END"] and len(parts) == 3:
                stdout = gzip.decompress(base64.b64decode(b"".join(out)))
                return ExecResult(int(parts[2]), stdout, base64.b64decode(b"".join(err)))
            elif target is not None:
                target.append(line)
    except TimeoutError:
        raise GuestTimeout(f"command did not finish in the guest within {timeout:.0f} s") from None


def _wait_for(reader: _LineReader, expected: bytes, deadline: float) -> None:
    try:
        while reader.readline(deadline) != expected:
            pass
    except TimeoutError:
        raise GuestTimeout("the guest agent stopped acknowledging a long command") from None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False
