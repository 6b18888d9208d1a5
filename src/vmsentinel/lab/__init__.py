"""Disposable real test guests (Debian kernel + busybox under QEMU/TCG)."""

from vmsentinel.lab.machine import LabGuest, LabSpec, down, list_labs, load, run, up

__all__ = ["LabGuest", "LabSpec", "down", "list_labs", "load", "run", "up"]
