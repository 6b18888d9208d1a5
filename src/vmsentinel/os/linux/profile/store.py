"""The profile cache: one file per kernel build under ``cache_dir()/profiles``,
plus a small index of the banners seen and where in physical memory they sat,
so a second look at a running kernel skips the scan entirely::

    store = ProfileStore()
    store.put(profile, banner_phys=0x8161900)
    store.match(memory)        # -> (profile, banner_phys) or None, in microseconds
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from vmsentinel.errors import ProfileError
from vmsentinel.memory.base import PhysicalMemory
from vmsentinel.os.linux.profile.profile import KernelProfile
from vmsentinel.paths import cache_dir, write_atomic

MAX_HINTS = 16

#: profiles opened in this process, by file and version: every guest of one kernel build shares one
#: profile (its decoded symbols and types are tens of MB), whichever store or thread opened it
_OPEN: dict[tuple[str, int, int, int], KernelProfile] = {}
_OPEN_LOCK = threading.Lock()


def forget_opened() -> None:
    """Let go of the profiles this process opened (the next ``get`` maps and decodes the file again)."""
    with _OPEN_LOCK:
        _OPEN.clear()


class ProfileStore:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_dir() / "profiles"
        self.root.mkdir(parents=True, exist_ok=True)
        self.index_path = self.root / "index.json"

    def path_for(self, key: str) -> Path:
        safe = "".join(c for c in key if c.isalnum() or c in "-_")
        return self.root / f"{safe}.vmsprofile"

    def _index(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self.index_path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _write_index(self, index: dict[str, dict[str, object]]) -> None:
        write_atomic(self.index_path, json.dumps(index, indent=1).encode())

    def put(self, profile: KernelProfile, banner_phys: int | None = None) -> Path:
        path = self.path_for(profile.identity.key)
        profile.save(path)
        self.remember(profile, banner_phys)
        return path

    def remember(self, profile: KernelProfile, banner_phys: int | None) -> None:
        index = self._index()
        entry = index.setdefault(profile.identity.key, {"banner": profile.identity.banner, "hints": []})
        hints = [h for h in entry.get("hints", []) if isinstance(h, int)]  # type: ignore[attr-defined]
        if banner_phys is not None and banner_phys not in hints:
            hints = [banner_phys, *hints][:MAX_HINTS]
        entry["hints"] = hints
        self._write_index(index)

    def get(self, key: str) -> KernelProfile | None:
        """The profile cached for ``key``; the one this process already opened from the same file (not
        rewritten since) if there is one."""
        path = self.path_for(key)
        try:
            st = path.stat()
        except OSError:
            return None
        version = (str(path), st.st_ino, st.st_mtime_ns, st.st_size)
        with _OPEN_LOCK:
            profile = _OPEN.get(version)
            if profile is not None:
                return profile
            try:
                profile = KernelProfile.load(path)
            except (ProfileError, OSError, ValueError, KeyError):
                return None  # a damaged cache entry is rebuilt, never trusted
            self._load_hot(profile)
            for old in [v for v in _OPEN if v[0] == version[0]]:  # the file was rewritten: the old one goes
                del _OPEN[old]
            _OPEN[version] = profile
            return profile

    def _hot_path(self, key: str) -> Path:
        return self.path_for(key).with_suffix(".hot.json")

    def _load_hot(self, profile: KernelProfile) -> None:
        """What earlier looks resolved (symbol addresses, member offsets): saves rebuilding indexes."""
        try:
            hot = json.loads(self._hot_path(profile.identity.key).read_text())
            symbols, layout = hot["symbols"], hot["layout"]
            if not all(isinstance(v, int) for v in (*symbols.values(), *layout.values())):
                return
        except (OSError, ValueError, KeyError, AttributeError):
            return
        profile.symbols.hot.update(symbols)
        profile.hot_layout.update(layout)

    def save_hot(self, profile: KernelProfile) -> None:
        path = self._hot_path(profile.identity.key)
        if not self.path_for(profile.identity.key).exists():
            return
        data = {"symbols": profile.symbols.hot, "layout": profile.hot_layout}
        try:
            if json.loads(path.read_text()) == data:
                return
        except (OSError, ValueError):
            pass
        write_atomic(path, json.dumps(data).encode())

    def match(self, mem: PhysicalMemory) -> tuple[KernelProfile, int] | None:
        """A cached profile whose banner sits at a remembered physical address in ``mem``."""
        for key, entry in self._index().items():
            banner = str(entry.get("banner", "")).encode() + b"\n\0"
            for hint in entry.get("hints", []):  # type: ignore[attr-defined]
                if isinstance(hint, int) and mem.is_valid(hint, len(banner)) and mem.read(hint, len(banner)) == banner:
                    profile = self.get(key)
                    if profile is not None:
                        return profile, hint
        return None
