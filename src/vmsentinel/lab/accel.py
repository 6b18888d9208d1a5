"""Which QEMU accelerator a lab guest boots with: TCG (QEMU's emulator, the
default), or KVM when asked for and ``/dev/kvm`` runs a guest. The device can
exist and still refuse (in a container, or nested without support), so ``--accel
kvm`` first runs one ``hlt`` in a tiny VM, in a child process with a timeout
since a broken KVM may hang, and refuses with the reason. The probe cannot
promise more: on the development machine it passes, yet a Linux guest under KVM
makes no progress there (``lab up`` then times out with the console's tail), so
the tests run TCG.

    accel, why = choose_accel("kvm")      # ("kvm", "/dev/kvm runs a guest"), or LabError with the reason
"""

from __future__ import annotations

import subprocess
import sys

from vmsentinel.errors import LabError

KVM_DEVICE = "/dev/kvm"
ACCELS = ("tcg", "kvm")
PROBE_SECONDS = 10.0
KVM_EXIT_HLT = 5


def _run_hlt(device: str) -> int:
    """Create a VM with one vCPU and one page holding ``hlt``, run it, return the exit reason."""
    import ctypes
    import fcntl
    import mmap
    import os
    import struct

    kvm = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    if fcntl.ioctl(kvm, 0xAE00, 0) != 12:  # KVM_GET_API_VERSION
        raise OSError("KVM API version is not 12")
    vm = fcntl.ioctl(kvm, 0xAE01, 0)  # KVM_CREATE_VM
    page = mmap.mmap(-1, 0x1000, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, mmap.PROT_READ | mmap.PROT_WRITE)
    page.write(b"\xf4")  # hlt
    host = ctypes.addressof(ctypes.c_char.from_buffer(page))
    fcntl.ioctl(vm, 0x4020AE46, struct.pack("<IIQQQ", 0, 0, 0, 0x1000, host))  # KVM_SET_USER_MEMORY_REGION
    cpu = fcntl.ioctl(vm, 0xAE41, 0)  # KVM_CREATE_VCPU
    run = mmap.mmap(cpu, fcntl.ioctl(kvm, 0xAE04, 0), mmap.MAP_SHARED, mmap.PROT_READ)  # KVM_GET_VCPU_MMAP_SIZE
    sregs = bytearray(312)
    fcntl.ioctl(cpu, 0x8138AE83, sregs)  # KVM_GET_SREGS
    struct.pack_into("<QIH", sregs, 0, 0, 0xFFFF, 0)  # real mode, CS base and selector 0
    fcntl.ioctl(cpu, 0x4138AE84, bytes(sregs))  # KVM_SET_SREGS
    regs = bytearray(144)
    struct.pack_into("<QQ", regs, 128, 0, 2)  # rip 0, rflags 2
    fcntl.ioctl(cpu, 0x4090AE82, bytes(regs))  # KVM_SET_REGS
    fcntl.ioctl(cpu, 0xAE80, 0)  # KVM_RUN
    return int(struct.unpack_from("<I", run, 8)[0])


def kvm_problem(device: str = KVM_DEVICE) -> str | None:
    """Why KVM cannot run a guest here, or None when it can."""
    try:
        probe = subprocess.run(
            [sys.executable, "-m", "vmsentinel.lab.accel", device], capture_output=True, text=True, timeout=PROBE_SECONDS
        )
    except subprocess.TimeoutExpired:
        return f"{device}: a test VM did not finish one instruction in {PROBE_SECONDS:.0f} s"
    if probe.returncode != 0:
        return (probe.stderr.strip().splitlines() or [f"{device}: the KVM probe failed"])[-1]
    if probe.stdout.strip() != str(KVM_EXIT_HLT):
        return f"{device}: a test VM stopped for reason {probe.stdout.strip()}, not at its hlt"
    return None


def choose_accel(requested: str, device: str = KVM_DEVICE) -> tuple[str, str]:
    """The accelerator to boot with and why: ``kvm`` only where the probe passes (an error otherwise)."""
    if requested not in ACCELS:
        raise LabError(f"--accel takes {', '.join(ACCELS)}, not {requested!r}")
    if requested == "tcg":
        return "tcg", "asked for"
    problem = kvm_problem(device)
    if problem is None:
        return "kvm", f"{device} runs a guest"
    raise LabError(f"--accel kvm: {problem}; use --accel tcg")


if __name__ == "__main__":  # the probe's child process
    try:
        print(_run_hlt(sys.argv[1] if len(sys.argv) > 1 else KVM_DEVICE))
    except OSError as exc:
        sys.exit(f"{sys.argv[1] if len(sys.argv) > 1 else KVM_DEVICE}: {exc.strerror or exc}")
