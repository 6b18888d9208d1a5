"""Detection latency: from an action inside a guest to the finding on disk.

A watcher (interval 1 s, memory scans every sweep) runs in a thread; the
benchmark repeats each technique N times inside a lab guest and measures the
time until the matching OCSF line is in the file, then prints p50/p99 and the
sweep cost. Latency is counted from the moment the action was done inside the
guest (the guest's clock, ``/proc/uptime`` in 10 ms steps, read right after the
action, mapped to the host's by an offset measured before each trial; its
uncertainty, half the round trip to the guest, is printed), and for comparison from the moment the host sent the
command (which adds the time the guest took to receive and run it: insmod under
TCG takes hundreds of ms).

    python benchmarks/bench_detection.py --trials 20

Techniques done by the test rootkit module are repeated too: each trial loads
it with one technique switched on, waits for the finding, and unloads it (the
module undoes its work on unload). Hiding the module itself cannot be undone
(a hidden module cannot be unloaded), so it is covered by the tests only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from _lab import lab_guest, scratch
from vmsentinel import lab
from vmsentinel.lab.kmod import ROOTKIT_SYMBOL_HELPER, build_module, insert_module
from vmsentinel.pipeline.policy import load_policy
from vmsentinel.sinks.ocsf import OcsfJsonl
from vmsentinel.watch.watcher import Watcher

ROOTKIT = Path(__file__).parents[1] / "src" / "vmsentinel" / "lab" / "rootkit"
#: technique -> (module parameters, text that marks its finding in the OCSF line)
MODULE_TECHNIQUES = {
    "syscall table hook": ("syscall_table=0x$(sym sys_call_table) syscall_nr=39", '"slot": "x64:39"'),
    "IDT hook": ("idt_table=0x$(sym idt_table) idt_vector=128", '"slot": "cpu0:128"'),
    "inline hook": ("patch_addr=0x$(sym __x64_sys_getpid)", "__x64_sys_getpid"),
    "kprobe hook": ("kprobe_hook=1", '"mechanism": "kprobe"'),
    "ftrace hook": ("ftrace_hook=1", '"mechanism": "ftrace"'),
    "hidden process": ("hide_pid={victim} tasklist_lock_addr=0x$(sym tasklist_lock)", "is hidden from the task list"),
    "root credentials": ("root_pid={victim}", "became root"),
}
BPF_PROGRAM = Path(__file__).parents[1] / "tests" / "guest" / "programs" / "bpfhook.c"

SIGMA_RULE = """title: Netcat listener
id: 1c2d3e4f-0000-4000-8000-000000000001
status: test
logsource: {category: process_creation, product: linux}
detection:
  sel: {CommandLine|contains|all: ['nc ', ' -l']}
  condition: sel
level: high
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--kernel", default=None)
    args = parser.parse_args()
    name = "bench-detect"
    with scratch() as work:
        programs = work / "programs"
        programs.mkdir()
        subprocess.run(["gcc", "-static", "-O2", "-o", str(programs / "bpfhook"), str(BPF_PROGRAM)], check=True)
        with lab_guest(lab.LabSpec(name=name, kernel=args.kernel, add=((str(programs), "/root/programs"),))) as guest:
            measure(args, guest, work)
    return 0


def measure(args: argparse.Namespace, guest: lab.LabGuest, work: Path) -> None:
    """Every technique ``args.trials`` times on ``guest``, then the percentiles and the sweep cost."""
    name = guest.name
    ko = build_module(guest.kernel_package, ROOTKIT, work)
    insert_module(name, ko)  # copied into the guest once; every trial loads that copy
    lab.run(name, "rmmod vmsrootkit")
    (work / "sigma").mkdir()
    (work / "sigma" / "nc.yml").write_text(SIGMA_RULE)
    (work / "policy.toml").write_text('interval = 1.0\n[sigma]\nrules = ["sigma"]\n')
    jsonl_path = work / "findings.jsonl"
    sink = OcsfJsonl(jsonl_path)
    watcher = Watcher([f"lab:{name}"], 1.0, [sink], policy=load_policy(work / "policy.toml"), scan_every=1)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    while not watcher.states[0].baselined:
        time.sleep(0.1)
    lab.run(name, "cp /bin/busybox /dev/shm/sleep")

    rtts: list[float] = []
    sent_latency: dict[str, list[float]] = {}

    def guest_clock() -> float:
        """The guest's clock (its uptime) minus the host's, from the middle of one round trip."""
        before = time.time()
        guest_now = float(lab.run(name, "cut -d' ' -f1 /proc/uptime").stdout.decode().split()[-1])
        after = time.time()
        rtts.append(after - before)
        return guest_now - (before + after) / 2

    def trial(action: str, needle: str, technique: str) -> float:
        """Seconds from the action done in the guest to its finding on disk (and from the command sent)."""
        written = len(jsonl_path.read_bytes()) if jsonl_path.exists() else 0
        offset = guest_clock()
        sent = time.time()
        done_at = float(lab.run(name, f"{action}\ncut -d' ' -f1 /proc/uptime").stdout.decode().split()[-1]) - offset
        while time.time() - sent < 30:
            text = jsonl_path.read_bytes()[written:].decode() if jsonl_path.exists() else ""
            if needle in text:
                found = time.time()
                sent_latency.setdefault(technique, []).append(found - sent)
                return found - done_at
            time.sleep(0.01)
        raise SystemExit(f"no finding for {action!r} within 30 s")

    def settle() -> None:
        """Wait for a full sweep after an undo, so the next trial's finding counts as new."""
        done = watcher.states[0].sweeps
        while watcher.states[0].sweeps < done + 2:
            time.sleep(0.05)

    def start_victim() -> int:
        """A process running as nobody, for the hiding and root-credential techniques."""
        out = lab.run(name, "su -s /bin/sh nobody -c 'exec sleep 300000' >/dev/null 2>&1 & sleep 0.2; pidof sleep")
        return max(int(p) for p in out.stdout.decode().split())

    victim = start_victim()
    settle()
    results: dict[str, list[float]] = {"exec from /dev/shm": [], "sigma process_creation": [], "eBPF kprobe": []}
    results.update({technique: [] for technique in MODULE_TECHNIQUES})
    for i in range(args.trials):
        results["exec from /dev/shm"].append(
            trial(f"/dev/shm/sleep {200000 + i} >/dev/null 2>&1 &", f"/dev/shm/sleep {200000 + i}", "exec from /dev/shm")
        )
        results["sigma process_creation"].append(
            trial(f"nc -l -p {5000 + i} >/dev/null 2>&1 &", f"nc -l -p {5000 + i}", "sigma process_creation")
        )
        results["eBPF kprobe"].append(
            trial("/root/programs/bpfhook >/dev/null 2>&1 &", "eBPF kprobe program vms_hook", "eBPF kprobe")
        )
        lab.run(name, "kill $(pidof bpfhook)")
        for technique, (params, needle) in MODULE_TECHNIQUES.items():
            insmod = f"{ROOTKIT_SYMBOL_HELPER}insmod /tmp/{ko.name} {params.format(victim=victim)}"
            results[technique].append(trial(insmod, needle, technique))
            lab.run(name, f"rmmod vmsrootkit; kill {victim}")
            victim = start_victim()
            settle()  # the undo is seen and the new victim is known as non-root before the next trial
    watcher.stop()
    thread.join(timeout=30)
    watcher.close()
    sink.close()
    lines = [json.loads(line) for line in jsonl_path.read_text().splitlines()]
    sweeps = sorted(watcher.states[0].sweep_seconds)
    print(f"guest lab:{name}, watcher interval 1.0 s, every sweep a full one, {args.trials} trials each")
    print(
        f"latency from the action done in the guest (guest clock; uncertainty ±{statistics.median(rtts) * 500:.0f} ms, "
        f"half the median round trip) to the finding on disk; in brackets from the command sent by the host"
    )
    for technique, values in results.items():
        sent = sent_latency[technique]
        print(
            f"  {technique:24s} p50 {percentile(values, 0.5) * 1000:6.0f} ms, p99 {percentile(values, 0.99) * 1000:6.0f} ms, "
            f"mean {statistics.mean(values) * 1000:6.0f} ms  [sent: p50 {percentile(sent, 0.5) * 1000:5.0f}, "
            f"p99 {percentile(sent, 0.99) * 1000:5.0f}]"
        )
    print(
        f"  sweep cost per guest: median {sweeps[len(sweeps) // 2] * 1000:.1f} ms, "
        f"max {sweeps[-1] * 1000:.1f} ms over {len(sweeps)} sweeps; {len(lines)} findings written"
    )


if __name__ == "__main__":
    sys.exit(main())
