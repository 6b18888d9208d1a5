"""A finding's evidence as a person reads it: code bytes as hex and as instructions (Capstone),
expected beside observed, and the ATT&CK technique with its link; the raw OCSF record as the
sinks wrote it."""

from __future__ import annotations

from typing import Any

from vmsentinel.detect import finding as finding_module
from vmsentinel.detect.finding import Attack, Finding, Severity
from vmsentinel.sinks.ocsf import to_ocsf

#: every ATT&CK technique a detector names, by id
TECHNIQUES = {a.technique_id: a for a in vars(finding_module).values() if isinstance(a, Attack)}
MAX_CODE = 256


def attack_link(technique_id: str) -> str:
    """The technique's page on attack.mitre.org (sub-techniques as T1547/006)."""
    return "https://attack.mitre.org/techniques/" + technique_id.replace(".", "/") + "/"


def finding_of(row: dict[str, Any]) -> Finding:
    """The finding a stored row holds (for its OCSF record)."""
    attack = TECHNIQUES.get(str(row["attack"]), Attack(str(row["attack"]), "", "", ""))
    return Finding(
        str(row["detector"]),
        str(row["title"]),
        Severity[str(row["severity"]).upper()],
        attack,
        str(row["target"]),
        dict(row["evidence"]),
        time=float(row["time"]),
        confirmed=bool(row["confirmed"]),
    )


def disassemble(code: bytes, address: int) -> list[dict[str, Any]]:
    """x86-64 instructions of ``code`` at ``address``; bytes that decode to nothing are shown as data."""
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs

    md = Cs(CS_ARCH_X86, CS_MODE_64)
    out, offset = [], 0
    code = code[:MAX_CODE]
    while offset < len(code):
        for insn in md.disasm(code[offset:], address + offset):
            out.append(
                {"address": f"{insn.address:#x}", "bytes": insn.bytes.hex(" "), "text": f"{insn.mnemonic} {insn.op_str}".strip()}
            )
            offset += insn.size
        if offset < len(code):  # capstone stops at bytes it cannot decode: show one as data, go on
            out.append({"address": f"{address + offset:#x}", "bytes": f"{code[offset]:02x}", "text": "(data)"})
            offset += 1
    return out


def code_panels(evidence: dict[str, Any]) -> list[dict[str, Any]]:
    """Expected and observed code, when the evidence carries bytes (``expected``/``observed`` hex from
    ``first_byte``, the first byte that changed)."""
    try:
        at = int(str(evidence["first_byte"]), 16)
    except (KeyError, ValueError):
        return []
    codes: dict[str, bytes] = {}
    for label in ("expected", "observed"):
        raw = evidence.get(label)
        if isinstance(raw, str):
            try:
                codes[label] = bytes.fromhex(raw)
            except ValueError:
                continue
    before, now = codes.get("expected", b""), codes.get("observed", b"")
    differ = {i for i in range(max(len(before), len(now))) if before[i : i + 1] != now[i : i + 1]}
    panels = []
    for label, code in codes.items():
        rows = disassemble(code, at)
        for row in rows:  # an instruction with a byte that differs between the two is marked
            start, size = int(row["address"], 16) - at, len(row["bytes"].split())
            row["changed"] = any(start + k in differ for k in range(size))
        panels.append({"label": label, "hex": code.hex(" "), "instructions": rows})
    return panels


def explain(row: dict[str, Any]) -> dict[str, Any]:
    """What the finding page shows beyond the row itself."""
    technique = TECHNIQUES.get(str(row["attack"]))
    return {
        "technique": technique,
        "attack_url": attack_link(str(row["attack"])),
        "code": code_panels(row["evidence"]),
        "ocsf": to_ocsf(finding_of(row)),
    }
