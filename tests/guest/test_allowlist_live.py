"""Only signed code runs: a lab guest watched with a signed policy bundle whose signed allowlist was
built from the guest's own initramfs. Allowlisted programs give nothing; a new static binary copied in
and run is found within two sweeps; so is a module that is not on the list. The record of it all is
hash-chained, its head signed, and `alerts verify` finds an edited alert."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.guest.conftest import KERNEL_SERIES, Guest, LabPool, guest_sh, vmsentinel
from vmsentinel import lab
from vmsentinel.lab.kmod import build_module, insert_module
from vmsentinel.pipeline.loading import PolicyLoader
from vmsentinel.sinks.ocsf import OcsfJsonl
from vmsentinel.sinks.sqlite_store import SqliteStore
from vmsentinel.trust.bundle import pack_bundle
from vmsentinel.trust.signing import new_key, secret_key_signer, sign_file
from vmsentinel.watch.watcher import Watcher

pytestmark = pytest.mark.guest
ROOTKIT = Path(__file__).parents[2] / "src" / "vmsentinel" / "lab" / "rootkit"
NEW_PROGRAM = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) { volatile unsigned long marker = 0x%016xUL; for (;;) { pause(); } return (int)marker; }
"""


@pytest.fixture(scope="module", params=KERNEL_SERIES)
def protected(request: pytest.FixtureRequest, lab_pool: LabPool) -> Guest:
    return lab_pool.fresh(request.param, "allow")


def test_only_allowlisted_code_runs_quietly(protected: Guest, tmp_path: Path) -> None:
    secret, public = new_key(tmp_path / "ops")
    folder = tmp_path / "policy"
    (folder / "allowlists").mkdir(parents=True)
    (folder / "keys").mkdir()
    (folder / "keys" / "ops.pub").write_bytes(public.read_bytes())
    built = vmsentinel(
        "allowlist",
        "build",
        "--from",
        str(lab.load(protected.name).initrd),
        "-o",
        str(folder / "allowlists" / "lab.json"),
        "--json",
    )
    assert json.loads(built.stdout)["files"] > 0
    sign_file(folder / "allowlists" / "lab.json", secret)
    (folder / "policy.toml").write_text(
        'interval = 1.0\n[allowlist]\nfiles = ["allowlists/lab.json"]\ntrusted_keys = ["keys/ops.pub"]\n'
    )
    bundle = tmp_path / "policy.vmspolicy"
    pack_bundle(folder, bundle)
    sign_file(bundle, secret)
    active = PolicyLoader(bundle=str(bundle), trusted_keys=[str(public)]).load()
    assert active.allowlist is not None

    ocsf, db = tmp_path / "f.jsonl", tmp_path / "f.db"
    signer = secret_key_signer(secret)
    jsonl, store = OcsfJsonl(ocsf, signer), SqliteStore(db, signer)
    watcher = Watcher([protected.target], 1.0, [jsonl, store], policy=active.policy, allowlist=active.allowlist)
    try:
        watcher.run(max_sweeps=2)  # baseline, then a sweep of the guest as it booted: all of it allowlisted
        assert store.findings() == [], store.findings()
        # allowlisted programs (busybox applets, the test programs packed in the initramfs) stay quiet
        guest_sh(protected, "sleep 100000 >/dev/null 2>&1 & /root/programs/threads >/dev/null 2>&1 & ls / >/dev/null")
        watcher.run(max_sweeps=2)
        assert store.findings() == [], store.findings()
        # a new static binary, copied in and run
        source = tmp_path / "newbin.c"
        source.write_text(NEW_PROGRAM % 0x5EC0DE5EC0DE)
        binary = tmp_path / "newbin"
        subprocess.run(["gcc", "-static", "-Os", "-o", str(binary), str(source)], check=True)
        data = base64.b64encode(binary.read_bytes()).decode()
        assert lab.run(protected.name, f"echo '{data}' | base64 -d > /tmp/newbin && chmod +x /tmp/newbin").status == 0
        pid = int(guest_sh(protected, "/tmp/newbin >/dev/null 2>&1 & echo $!").strip())
        watcher.run(max_sweeps=2)
        code = [r for r in store.findings() if r["detector"] == "code_not_allowlisted"]
        assert any(
            json.loads(str(r["evidence"])).get("path") == "/tmp/newbin" and json.loads(str(r["evidence"]))["pid"] == pid
            for r in code
        ), code
        # a kernel module that is not on the list
        insert_module(protected.name, build_module(str(protected.info["kernel_package"]), ROOTKIT, tmp_path))
        watcher.run(max_sweeps=2)
    finally:
        watcher.close()
        jsonl.close()
        store.close()
        active.remove()
    rows = SqliteStore(db).findings()
    modules = [json.loads(str(r["evidence"])).get("module") for r in rows if r["detector"] == "code_not_allowlisted"]
    assert "vmsrootkit" in modules, rows
    assert {r["detector"] for r in rows} <= {"code_not_allowlisted", "unsigned_module", "kernel_taint", "injected_code"}, rows

    # the record: intact, heads signed with the record key, and an edited alert is found where it is
    verify = vmsentinel("alerts", "verify", "--db", str(db), "--ocsf", str(ocsf), "--key", str(public), "--json")
    reports = json.loads(verify.stdout)
    assert all(r["intact"] and r["signed_heads"] >= 1 for r in reports), reports
    raw = sqlite3.connect(db)
    with raw:
        raw.execute("UPDATE findings SET severity = 'low' WHERE seq = 1")
    raw.close()
    lines = ocsf.read_text().splitlines()
    lines[-1] = lines[-1].replace('"Critical"', '"Low"').replace('"High"', '"Low"').replace('"Medium"', '"Low"')
    ocsf.write_text("\n".join(lines) + "\n")
    broken = vmsentinel("alerts", "verify", "--db", str(db), "--ocsf", str(ocsf), "--key", str(public), check=False)
    assert broken.returncode == 1
    assert (
        "row 1: record 1 was altered" in broken.stdout and f"line {len(lines)}: record {len(lines)} was altered" in broken.stdout
    )
