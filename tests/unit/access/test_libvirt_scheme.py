"""The libvirt scheme without libvirt: TARGET parsing and its one canonical form, expansion of a
TARGET that names several guests, and finding a domain's QEMU process by its command line."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmsentinel.access import Connector, expand_targets, register_scheme, registry
from vmsentinel.access import libvirt as lvs
from vmsentinel.access.libvirt import LibvirtTarget, libvirt_target, parse_target, with_uri
from vmsentinel.errors import TargetError
from vmsentinel.memory import open_image


def test_targets_parse_to_one_canonical_form() -> None:
    assert parse_target("libvirt:web1") == LibvirtTarget("web1", "qemu:///system", False)
    assert parse_target("libvirt:web1,monitor=yes") == LibvirtTarget("web1", "qemu:///system", True)
    assert parse_target("libvirt:web1,monitor=off?uri=qemu:///session") == LibvirtTarget("web1", "qemu:///session")
    # the URI takes the rest of the TARGET, its own '?' and '&' included
    ssh = "qemu+ssh://root@host/system?keyfile=/k&no_verify=1"
    assert parse_target(f"libvirt:db?uri={ssh}").uri == ssh
    assert parse_target("libvirt:") == LibvirtTarget("", "qemu:///system") and parse_target("libvirt:?uri=x:///").uri == "x:///"
    assert libvirt_target("web1") == "libvirt:web1?uri=qemu:///system"
    assert libvirt_target("web1", "qemu:///session", True) == "libvirt:web1,monitor=yes?uri=qemu:///session"
    assert parse_target(libvirt_target("a b", "qemu:///session", True)).spec == "libvirt:a b,monitor=yes?uri=qemu:///session"
    assert with_uri("libvirt:web1", "qemu:///session") == "libvirt:web1?uri=qemu:///session"
    assert with_uri("libvirt:web1?uri=test:///default", "qemu:///session") == "libvirt:web1?uri=test:///default"
    assert with_uri("lab:web1", "qemu:///session") == "lab:web1"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("libvirt:web1,frob=1", "unknown option 'frob=1' (know: monitor=yes|no)"),
        ("libvirt:web1,monitor=maybe", "unknown option 'monitor=maybe'"),
        ("libvirt:web1?url=qemu:///system", "after '?' comes uri=URI"),
        ("libvirt:web1?uri=qemu:///system,monitor=yes", "options come before '?uri='"),
        ("libvirt:a/b", "has no '/'"),
    ],
)
def test_bad_targets_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(TargetError, match=re.escape(message)):
        parse_target(spec)


def test_the_scheme_is_registered_with_its_usage() -> None:
    assert {s.prefix: s.usage for s in registry.schemes()}["libvirt:"] == "libvirt:[DOMAIN][,monitor=yes][?uri=URI]"


def test_a_target_for_one_guest_expands_to_itself(tmp_path: Path) -> None:
    assert expand_targets("lab:web1") == ["lab:web1"]
    assert expand_targets(str(tmp_path / "guest.raw")) == [str(tmp_path / "guest.raw")]
    assert expand_targets("libvirt:web1") == ["libvirt:web1"]


def test_a_scheme_expands_a_target_that_names_several(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    registry.schemes()
    monkeypatch.setattr(registry, "_schemes", dict(registry._schemes))
    raw = tmp_path / "g.raw"
    raw.write_bytes(bytes(4096))

    def several(spec: str) -> list[str] | None:
        return [f"many:{n}" for n in ("a", "b")] if spec == "many:" else None

    register_scheme("many:", lambda spec: Connector(spec, open_image(raw)), "many:[NAME]", several)
    assert expand_targets("many:") == ["many:a", "many:b"]
    assert expand_targets("many:a") == ["many:a"]


@pytest.fixture
def fake_qemu() -> Iterator[tuple[int, str, str]]:
    """A process whose command line looks like one libvirt starts (python ignores the arguments)."""
    name, uid = "web,1", str(uuid.uuid4())
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "-name", "guest=web,,1,debug-threads=on", "-uuid", uid]
    )
    deadline = time.monotonic() + 10
    while b"-uuid" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)  # until the exec
    try:
        yield proc.pid, name, uid
    finally:
        proc.kill()
        proc.wait()


def test_the_qemu_process_is_found_by_its_uuid_and_name(
    fake_qemu: tuple[int, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid, name, uid = fake_qemu
    assert lvs.qemu_identity(pid) == (name, uid)  # ',,' is a comma of the name
    assert lvs.find_qemu_pid(name, uid.upper(), "qemu:///session") == pid  # no pid file: the /proc scan
    assert lvs.find_qemu_pid("web", uid, "qemu:///session") is None  # the uuid alone is not enough
    monkeypatch.setattr(lvs, "SYSTEM_PID_DIR", tmp_path)
    (tmp_path / f"{name}.pid").write_text(f"{pid}\n")
    assert lvs.find_qemu_pid(name, uid, "qemu:///system") == pid
    (tmp_path / f"{name}.pid").write_text("1\n")  # a stale or lying pid file is checked, then passed over
    assert lvs.find_qemu_pid(name, uid, "qemu:///system") == pid
    assert lvs.find_qemu_pid(name, str(uuid.uuid4()), "qemu:///system") is None
