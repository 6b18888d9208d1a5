"""The watcher as people run it: one process, many targets (live guests and
memory images), a guest killed in the middle, and a sentinel killed with -9
in the middle of its work: what it reported as written is on disk, intact."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.guest.conftest import STATE, Guest, LabPool, kill_matching, vmsentinel
from tests.guest.helpers import WatchRun, paused, qmp_of
from vmsentinel.access import open_connector
from vmsentinel.memory import open_image
from vmsentinel.memory.lime import write_lime

pytestmark = pytest.mark.guest


SWEEPS = 30


def test_six_targets_one_killed_the_others_go_on(lab_pool: LabPool, tmp_path: Path) -> None:
    a, b = lab_pool.fresh("6.1", "w1"), lab_pool.fresh("6.12", "w2")
    core, raw, lime, core2 = (tmp_path / n for n in ("a.core", "a.raw", "a.lime", "b.core"))
    with open_connector(a.target) as target, paused(qmp_of(target)):
        qmp_of(target).dump_guest_memory(str(core))
        qmp_of(target).command("pmemsave", val=0, size=target.memory.size(), filename=str(raw))
    with open_image(core) as c:
        write_lime(lime, [(r.start, c.read(r.start, r.length)) for r in c.ranges() if r.start < 1 << 32 and r.length > 1 << 20])
    with open_connector(b.target) as target, paused(qmp_of(target)):
        qmp_of(target).dump_guest_memory(str(core2))
    targets = [a.target, b.target, str(core), str(raw), str(lime), str(core2)]
    db, jsonl = tmp_path / "w.db", tmp_path / "w.jsonl"
    env = {**os.environ, "VMSENTINEL_STATE": STATE["dir"]}
    metrics = ["--metrics", str(tmp_path / "metrics.prom")]
    # enough sweeps that the guest killed after every first look still has some to miss: first looks of six
    # targets on two cores (vendor images, inventories) take longer than a handful of rounds
    watch = WatchRun(
        *targets, "--interval", "1", "--db", str(db), "--ocsf", str(jsonl), "--sweeps", str(SWEEPS), *metrics, env=env
    )
    try:
        # one guest dies in the middle: once every guest was swept a few times (how soon that is depends on
        # how fast the watch starts, so it is waited for, not guessed)
        for t in targets:
            watch.seen(f"{t}: baseline taken", timeout=120)
        time.sleep(2)
        vmsentinel("lab", "down", b.name)
        returncode = watch.proc.wait(timeout=300)
    finally:
        watch.end()
    stderr = watch.log
    assert returncode == 0, stderr
    for t in targets:
        assert f"{t}: baseline taken" in stderr, (t, stderr[-2000:])
    assert f"{b.target}: unreachable" in stderr, stderr
    sweeps = {}
    for line in stderr.splitlines():
        if " sweeps every " in line:
            name, rest = line.rsplit(": ", 1)
            sweeps[name] = int(rest.split()[0])
    assert sweeps[a.target] == SWEEPS and all(sweeps[t] == SWEEPS for t in targets[2:]), sweeps
    assert sweeps[b.target] < SWEEPS
    metrics = (tmp_path / "metrics.prom").read_text()
    assert f'vmsentinel_sweeps_total{{target="{a.target}"}} {SWEEPS}' in metrics
    assert f'vmsentinel_sweeps_missed_total{{target="{b.target}"}}' in metrics
    assert 'detector="hidden_process"' in metrics and "# TYPE vmsentinel_last_sweep_seconds gauge" in metrics


def test_kill_9_in_the_middle_loses_nothing_reported(lab_pool: LabPool, tmp_path: Path) -> None:
    guest = lab_pool.fresh("6.1", "k9")
    # a hidden-artifact trick that needs no module: a program running from /dev/shm, found every sweep
    vmsentinel("lab", "exec", guest.name, "--", "cp /bin/busybox /dev/shm/sleep; /dev/shm/sleep 100000 >/dev/null 2>&1 &")
    db, jsonl = tmp_path / "k.db", tmp_path / "k.jsonl"
    env = {**os.environ, "VMSENTINEL_STATE": STATE["dir"]}
    cmd = [sys.executable, "-m", "vmsentinel", "watch", guest.target, "--interval", "0.2", "--db", str(db), "--ocsf", str(jsonl)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    reported: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        if "FINDING" in line:  # printed only after every sink has written the finding
            reported.append(line.split("FINDING ", 1)[1].split(": ", 1)[1].strip())
            break
    # more work in flight: new processes (events) while it sweeps, then the hard kill
    vmsentinel("lab", "exec", guest.name, "--", "for i in 1 2 3; do /dev/shm/sleep 1000$i >/dev/null 2>&1 & done")
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    lines = jsonl.read_text().splitlines()
    events = [json.loads(line) for line in lines]  # every line is whole JSON
    assert all(e["class_uid"] == 2004 for e in events)
    store = sqlite3.connect(db)
    assert store.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {r[0] for r in store.execute("SELECT title FROM findings")}
    store.close()
    assert reported, "the watcher reported no finding before the kill"
    for title in reported:  # what was reported written is in both, whole
        assert title in {e["message"] for e in events} and title in stored
    # a restart goes on with the same files
    again = subprocess.run([*cmd, "--sweeps", "2"], capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert len(jsonl.read_text().splitlines()) >= len(lines)


def test_a_second_command_on_a_watched_guest_just_works(guest: Guest, tmp_path: Path) -> None:
    """QEMU serves one QMP client at a time: the watch holds the monitor only for each call, so a user's
    ps and idt (which asks QEMU for every vCPU's IDTR) run beside it."""
    env = {**os.environ, "VMSENTINEL_STATE": STATE["dir"]}
    watch = subprocess.Popen(
        [sys.executable, "-m", "vmsentinel", "watch", guest.target, "--interval", "0.2", "--sweeps", "40",
         "--db", str(tmp_path / "w.db"), "--ocsf", str(tmp_path / "w.jsonl")],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip
    try:
        time.sleep(3)  # the watch is sweeping (and asking QEMU for registers every sweep)
        assert watch.poll() is None
        for _ in range(3):
            ps = vmsentinel("ps", guest.target, "--json")
            idt = vmsentinel("idt", guest.target, "--json")
            assert {p["pid"] for p in json.loads(ps.stdout)} >= {1}
            assert {e["cpu"] for e in json.loads(idt.stdout)} == {0}  # the live IDTR, from QEMU
        assert watch.wait(timeout=120) == 0
    finally:
        if watch.poll() is None:
            watch.kill()
    log = watch.stderr.read() if watch.stderr else ""
    assert "unreachable" not in log and "40 sweeps" in log, log


def _worker_pids(parent: int) -> list[int]:
    """The watch's worker processes: its children that multiprocessing spawned (not its resource tracker)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"spawn_main" in cmdline:
            pids.append(int(proc.name))
    return sorted(pids)


def test_a_worker_killed_mid_watch_comes_back_and_nothing_is_reported_twice(guest: Guest, tmp_path: Path) -> None:
    """``watch --workers 2`` over a live guest and three images of another: each worker in turn is killed
    with SIGKILL; its guests are swept again within 2 s by the worker that replaces it, with the baselines
    they had, and every finding reported before is in both stores once."""
    core = tmp_path / "g.core"
    with open_connector(guest.target) as target, paused(qmp_of(target)):
        qmp_of(target).dump_guest_memory(str(core))
    images = []
    for i in range(3):
        (tmp_path / f"img{i}.core").symlink_to(core)
        images.append(str(tmp_path / f"img{i}.core"))
    guest.sh("cp /bin/busybox /dev/shm/sleep; /dev/shm/sleep 100004 >/dev/null 2>&1 &")
    db, jsonl = tmp_path / "w.db", tmp_path / "w.jsonl"
    env = {**os.environ, "VMSENTINEL_STATE": STATE["dir"]}
    watch = WatchRun(guest.target, *images, "--interval", "1", "--workers", "2", "--db", str(db), "--ocsf", str(jsonl), env=env)
    try:
        watch.seen(f"{guest.target}: FINDING", 0.0, 120.0)
        for name in images:
            watch.seen(f"{name}: baseline taken", 0.0, 60.0)
        workers = _worker_pids(watch.proc.pid)
        assert len(workers) == 2, workers
        reopened: set[str] = set()
        for pid in workers:
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            _, line = watch.seen("was killed by SIGKILL; restarted as pid", killed, 10.0)
            guests = line.split("opening again: ")[1].split(", ") if "opening again: " in line else []
            for name in guests:
                back, _ = watch.seen(f"{name}: watching", killed, 10.0)
                assert back - killed < 2.0, f"{name} was swept again {back - killed:.2f} s after its worker was killed"
            reopened.update(guests)
        assert reopened == {guest.target, *images}, reopened  # both workers held guests, and all came back
        time.sleep(2)
        assert watch.stop() == 0
    finally:
        watch.end()
        kill_matching(guest, "/dev/shm/sleep 100004")
        guest.sh("rm -f /dev/shm/sleep")
    lines = watch.lines
    log = "\n".join(line for _, line in lines)
    assert "baseline taken" not in log.split("was killed by SIGKILL")[1], log  # the baselines were taken back
    reported = [line.split("FINDING ", 1)[1].split(": ", 1)[1] for _, line in lines if "FINDING" in line]
    assert reported and len(reported) == len(set(reported)), log
    events = [json.loads(line) for line in jsonl.read_text().splitlines()]
    store = sqlite3.connect(db)
    stored = [r[0] for r in store.execute("SELECT title FROM findings")]
    store.close()
    for title in reported:  # once in each store, not again after the workers came back
        assert [e["message"] for e in events].count(title) == 1 and stored.count(title) == 1, title


def test_watch_says_how_kernel_code_is_followed_and_falls_back_to_hashing_every_page(guest: Guest, tmp_path: Path) -> None:
    """Host dirty tracking (QEMU's soft-dirty bits) is used only where the host kernel sets them and they
    pass their check against the guest's jiffies; otherwise every text page is hashed on every sweep,
    and the watch says which in its output and in its metrics. A memory image has nothing to track."""
    from vmsentinel.access.dirty_log import host_sets_soft_dirty

    core = tmp_path / "g.core"
    with open_connector(guest.target) as target, paused(qmp_of(target)):
        qmp_of(target).dump_guest_memory(str(core))
    metrics = tmp_path / "m.prom"
    env = {**os.environ, "VMSENTINEL_STATE": STATE["dir"], "COLUMNS": "400"}
    proc = subprocess.run(
        [sys.executable, "-m", "vmsentinel", "watch", guest.target, str(core), "--interval", "0.5", "--sweeps", "4",
         "--db", str(tmp_path / "w.db"), "--ocsf", str(tmp_path / "w.jsonl"), "--metrics", str(metrics)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    said = {line.split(": ", 1)[0]: line for line in proc.stderr.splitlines() if ": kernel code: " in line}
    assert said[str(core)].endswith("every page hashed on every sweep (a memory image: nothing changes)"), proc.stderr
    text = metrics.read_text()
    assert f'vmsentinel_code_tracking_incremental{{target="{core}"}} 0.0' in text
    if host_sets_soft_dirty():
        assert "only pages written since the last sweep are hashed again (soft-dirty bits of QEMU pid" in said[guest.target]
        assert f'vmsentinel_code_tracking_incremental{{target="{guest.target}"}} 1.0' in text
    else:  # this host's kernel is built without CONFIG_MEM_SOFT_DIRTY: the fall-back, for real
        assert said[guest.target].endswith(
            "every page hashed on every sweep (the host kernel sets no soft-dirty bits (built without CONFIG_MEM_SOFT_DIRTY))"
        ), proc.stderr
        assert f'vmsentinel_code_tracking_incremental{{target="{guest.target}"}} 0.0' in text
    assert "4 sweeps every 0.5 s" in proc.stderr and " 0 findings" in proc.stderr
