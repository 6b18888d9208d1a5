"""The scheme registry: registered schemes open, the image-path fallback, clear errors for unknown
schemes and missing paths, and the access layer's boundaries (no OS code, lazy lab and QMP)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from vmsentinel.access import Connector, open_connector, register_scheme, registry, schemes
from vmsentinel.errors import TargetError
from vmsentinel.memory import open_image

ACCESS = Path(registry.__file__).parent


@pytest.fixture
def own_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Schemes a test registers vanish with it."""
    registry.schemes()  # the built-in ones first
    monkeypatch.setattr(registry, "_schemes", dict(registry._schemes))


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    path = tmp_path / "guest.raw"
    path.write_bytes(bytes(range(256)) * 16)
    return path


def test_a_registered_scheme_opens_with_the_whole_spec(own_registry: None, raw: Path) -> None:
    seen: list[str] = []

    def opener(spec: str) -> Connector:
        seen.append(spec)
        return Connector(spec, open_image(raw), name="fake", layout_source="test")

    register_scheme("test-scheme:", opener, "test-scheme:WHAT")
    with open_connector("test-scheme:x,y=1") as guest:
        assert guest.memory.read(0, 4) == bytes(range(4)) and not guest.live and guest.name == "fake"
    assert seen == ["test-scheme:x,y=1"]
    assert "test-scheme:" in [s.prefix for s in schemes()]


def test_a_scheme_named_like_another_is_its_own(own_registry: None, raw: Path) -> None:
    register_scheme("qemu-pid:", lambda spec: Connector(spec, open_image(raw), name="pid"), "qemu-pid:PID")
    with open_connector("qemu-pid:1234") as guest:
        assert guest.name == "pid"  # not qemu:'s "-pid:1234" RAM file


def test_prefixes_are_checked() -> None:
    with pytest.raises(ValueError, match="target scheme"):
        register_scheme("Lab", lambda spec: Connector(spec, open_image(spec)), "Lab")


def test_builtin_schemes_are_listed() -> None:
    usages = {s.prefix: s.usage for s in schemes()}
    assert usages["lab:"] == "lab:NAME"
    assert usages["qemu:"] == "qemu:RAM_PATH[,qmp=SOCKET][,machine=pc|q35]"
    assert usages["libvirt:"] == "libvirt:[DOMAIN][,monitor=yes][?uri=URI]"


def test_unknown_scheme_error_lists_the_known_ones() -> None:
    with pytest.raises(TargetError) as err:
        open_connector("xen:dom1")
    text = str(err.value)
    assert "unknown target scheme 'xen:' in 'xen:dom1'" in text
    assert "lab:NAME" in text and "qemu:RAM_PATH" in text and "memory image path" in text


def test_missing_image_path_is_a_target_error(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match=r"no such memory image or target: '.*nope\.raw'; a TARGET is .*lab:NAME"):
        open_connector(str(tmp_path / "nope.raw"))


def test_an_image_path_opens_as_a_connector_without_control(raw: Path) -> None:
    with open_connector(str(raw)) as guest:
        assert guest.spec == str(raw) and guest.name == "guest" and guest.layout_source == "file"
        assert not guest.live and guest.control is None and guest.registers() is None


def test_an_existing_path_with_a_colon_is_an_image(tmp_path: Path) -> None:
    path = tmp_path / "vm:1.raw"
    path.write_bytes(bytes(4096))
    with open_connector(str(path)) as guest:
        assert guest.memory.kind == "raw"


def test_qemu_scheme_errors_name_the_target(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match=r"qemu:/x,frob=1: unknown option 'frob=1'"):
        open_connector("qemu:/x,frob=1")
    with pytest.raises(TargetError, match="RAM file /nonexistent/ram does not exist"):
        open_connector("qemu:/nonexistent/ram")


def test_qemu_ram_file_without_qmp_uses_the_machine_rule(tmp_path: Path) -> None:
    ram = tmp_path / "vm.ram"
    ram.write_bytes(bytes(1 << 20))
    with open_connector(f"qemu:{ram},machine=q35") as guest:
        assert guest.name == "vm" and guest.layout_source == "q35 machine rule" and not guest.live
        assert guest.memory.size() == 1 << 20


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at top level) for every import in a file."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, id(node) in top))
    return found


def test_access_knows_no_os_structures_and_loads_the_lab_lazily() -> None:
    forbidden = ("os", "detect", "pipeline", "watch", "cli", "sinks", "respond", "trust")
    for path in sorted(ACCESS.glob("*.py")):
        for module, top in _imports(path):
            assert not any(module == f"vmsentinel.{f}" or module.startswith(f"vmsentinel.{f}.") for f in forbidden), (
                path.name,
                module,
            )
            if module.startswith("vmsentinel.lab"):
                assert path.name == "lab.py" and not top, (path.name, module)


def test_an_image_needs_neither_qmp_nor_libvirt_nor_the_lab(raw: Path) -> None:
    code = (
        "import sys; from vmsentinel.access import open_connector\n"
        f"open_connector({str(raw)!r}).close()\n"
        "print(sorted(m for m in sys.modules if m.startswith(('qemu', 'asyncio', 'libvirt', 'vmsentinel.lab', 'vmsentinel.os'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
