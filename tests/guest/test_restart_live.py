"""A sentinel restart does not re-bless a guest, on real guests (6.1 and 6.12, KASLR on). A clean guest's
first look (every detector, the vendor comparison included) finds nothing. The baseline
a watch took is kept in its store, signed with the record key; a module loaded while no sentinel ran
taints the kernel, and the next watch with that store compares the guest with the stored baseline and
reports the taint, where a watch with an empty store takes the tainted kernel as its baseline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.guest.conftest import KERNEL_SERIES, STATE, Guest, LabPool, guest_sh, vmsentinel
from vmsentinel.lab.kmod import build_module, insert_module

pytestmark = pytest.mark.guest
ROOTKIT = Path(__file__).parents[2] / "src" / "vmsentinel" / "lab" / "rootkit"


@pytest.fixture(scope="module", params=KERNEL_SERIES)
def untainted(request: pytest.FixtureRequest, lab_pool: LabPool) -> Guest:
    return lab_pool.fresh(request.param, "restart")


def _watch(target: str, db: Path, jsonl: Path, key: Path, sweeps: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VMSENTINEL_STATE": STATE["dir"], "COLUMNS": "400"}
    proc = subprocess.run(
        [sys.executable, "-m", "vmsentinel", "watch", target, "--interval", "0.5", "--sweeps", str(sweeps),
         "--db", str(db), "--ocsf", str(jsonl), "--record-key", str(key)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc


def _detectors(jsonl: Path) -> list[str]:
    records = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
    return [r["finding_info"]["analytic"]["name"] for r in records if r["activity_name"] == "Create"]


def test_a_restarted_watch_compares_with_the_baseline_it_kept(untainted: Guest, tmp_path: Path) -> None:
    clean = vmsentinel("check", untainted.target, "--json")  # a clean guest's first look: nothing at all
    assert json.loads(clean.stdout) == [], clean.stdout
    vmsentinel("key", "new", str(tmp_path / "record"))
    key = tmp_path / "record.key"
    db, jsonl = tmp_path / "w.db", tmp_path / "w.jsonl"
    first = _watch(untainted.target, db, jsonl, key, 1)
    assert f"{untainted.target}: baseline taken" in first.stderr, first.stderr
    assert "kernel_taint" not in _detectors(jsonl)

    ko = build_module(str(untainted.info["kernel_package"]), ROOTKIT, tmp_path)
    assert insert_module(untainted.name, ko, "") == ""  # no action: it only taints the kernel (out of tree, unsigned)
    try:
        again = _watch(untainted.target, db, jsonl, key, 2)
        assert f"{untainted.target}: compared with its stored baseline of " in again.stderr, again.stderr
        assert f"{untainted.target}: baseline taken" not in again.stderr, again.stderr
        assert "kernel_taint" in _detectors(jsonl), again.stderr

        # a watch with an empty store trusts what it sees first: the taint becomes its baseline
        other = tmp_path / "other.jsonl"
        blessed = _watch(untainted.target, tmp_path / "other.db", other, key, 2)
        assert f"{untainted.target}: baseline taken" in blessed.stderr
        assert "kernel_taint" not in _detectors(other)
    finally:
        guest_sh(untainted, "rmmod vmsrootkit; true")

    verify = vmsentinel("alerts", "verify", "--db", str(db), "--key", str(tmp_path / "record.pub"), "--json")
    (report,) = json.loads(verify.stdout)
    assert report["intact"] and report["baselines"] == 1, report
