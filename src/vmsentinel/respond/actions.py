"""Responses through the hypervisor: pause or resume the VM, dump its memory
as forensic evidence next to the alert, cut its network. Each response is
recorded with its outcome; a failed response never stops the others.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from vmsentinel.access.connector import HypervisorControl
from vmsentinel.detect.finding import Finding
from vmsentinel.errors import HypervisorError


@dataclass(frozen=True)
class ResponseRecord:
    time: float
    target: str
    finding_key: str
    action: str
    ok: bool
    detail: str


def _file_safe(text: str) -> str:
    """``text`` with everything but letters, digits, ``-`` and ``_`` made ``_``: a guest's name or a
    key as part of a file name."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def respond(
    target: str, control: HypervisorControl | None, finding: Finding | str, actions: list[str], dump_dir: Path
) -> list[ResponseRecord]:
    """Carry out ``actions`` for one finding through the target's hypervisor control (the connector's
    own: QEMU serves one QMP client at a time); dump before pausing so the image shows the attack live.
    A response a person asked for has no finding: ``finding`` is then the key it is recorded under."""
    records: list[ResponseRecord] = []
    key = finding if isinstance(finding, str) else finding.key
    order = sorted(actions, key=lambda a: ["alert", "dump", "cut_network", "pause", "resume"].index(a))

    def record(action: str, ok: bool, detail: str) -> None:
        records.append(ResponseRecord(time.time(), target, key, action, ok, detail))

    for action in order:
        if action == "alert":
            record(action, True, "alert written")
            continue
        if control is None:
            record(action, False, "no hypervisor control for this target (memory image?)")
            continue
        try:
            if action == "dump":
                dump_dir.mkdir(parents=True, exist_ok=True)
                path = dump_dir / f"{_file_safe(target)}-{_file_safe(key)}.core"
                control.dump(path.resolve())
                record(action, True, str(path))
            elif action == "pause":
                control.pause()
                record(action, True, f"VM status {control.status()}")
            elif action == "resume":
                control.resume()
                record(action, True, f"VM status {control.status()}")
            elif action == "cut_network":
                nics = control.set_links(False)
                record(action, bool(nics), f"link down: {', '.join(nics) or 'no NIC'}")
        except HypervisorError as exc:
            record(action, False, str(exc))
    return records
