"""--accel: TCG needs nothing; KVM is refused with the reason where /dev/kvm cannot run a guest."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmsentinel.errors import LabError
from vmsentinel.lab.accel import choose_accel, kvm_problem


def test_tcg_needs_no_probe() -> None:
    assert choose_accel("tcg", "/nonexistent/kvm") == ("tcg", "asked for")


def test_kvm_is_refused_with_the_reason_where_the_device_cannot_run_a_guest(tmp_path: Path) -> None:
    missing = str(tmp_path / "kvm")
    assert kvm_problem(missing) == f"{missing}: No such file or directory"
    with pytest.raises(LabError, match=r"--accel kvm: .*No such file.*use --accel tcg"):
        choose_accel("kvm", missing)
    with pytest.raises(LabError, match="Inappropriate ioctl"):  # a device that is no KVM
        choose_accel("kvm", "/dev/null")


def test_an_unknown_accelerator_is_refused() -> None:
    with pytest.raises(LabError, match="tcg, kvm"):
        choose_accel("hvf")
