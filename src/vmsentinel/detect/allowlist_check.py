"""Code not on the signed allowlist: the detector behind "only signed code runs".

A protected guest is meant to run a known set of programs. Every executable
page mapped from a file in a process must be a page of a file on the
allowlist, at the same file offset; every loaded kernel module must be on it by
name. Anything else is reported with its path and hash, whatever its name
claims (a binary copied over an allowlisted path has other page hashes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmsentinel.detect.finding import KERNEL_MODULES, MALICIOUS_FILE, Finding, Severity

if TYPE_CHECKING:
    from vmsentinel.detect.baseline import Baseline
    from vmsentinel.detect.registry import Detector
    from vmsentinel.os.snapshot import GuestSnapshot
    from vmsentinel.trust.allowlist import Allowlist


def allowlist_detector(allowlist: Allowlist) -> Detector:
    def code_not_allowlisted(
        target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None
    ) -> list[Finding]:
        """Executable file pages and kernel modules that the signed allowlist does not hold (ATT&CK
        T1204.002 for programs, T1547.006 for modules)."""
        out = []
        names = {t.pid: t.name for t in snap.tasks.tasks}
        for pid, pages in (snap.exec_pages or {}).items():
            reported: set[str] = set()
            for page in pages:
                if page.path in reported or allowlist.page_allowed(page.path, page.file_offset, page.digest):
                    continue
                reported.add(page.path)
                known = allowlist.knows(page.path)
                why = "its code differs from the allowlisted file" if known else "the file is not on the allowlist"
                out.append(
                    Finding(
                        "code_not_allowlisted",
                        f"process {pid} ({names.get(pid, '?')}) runs code not on the signed allowlist: {page.path} ({why})",
                        Severity.HIGH,
                        MALICIOUS_FILE,
                        target,
                        {
                            "pid": pid,
                            "name": names.get(pid),
                            "path": page.path,
                            "file_offset": page.file_offset,
                            "address": f"{page.address:#x}",
                            "page_hash": page.digest,
                            "path_on_allowlist": known,
                        },
                    )
                )
        for m in snap.modules.modules:
            if m.name not in allowlist.modules:
                out.append(
                    Finding(
                        "code_not_allowlisted",
                        f"kernel module {m.name} is not on the signed allowlist",
                        Severity.HIGH,
                        KERNEL_MODULES,
                        target,
                        {"module": m.name, "base": f"{m.base:#x}", "size": m.size, "sources": list(m.sources)},
                        m.sources,
                    )
                )
        return out

    return code_not_allowlisted
