"""Lookups made once are saved beside the cached profile and trusted only when well-formed."""

from __future__ import annotations

import json
from pathlib import Path

from tests.unit.profiles.test_image_profile_isf import synthetic_vmlinux

from vmsentinel.os.linux.profile.profile import profile_from_image
from vmsentinel.os.linux.profile.store import ProfileStore


def test_hot_symbols_and_layout_round_trip_and_bad_sidecars_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "vmlinux"
    path.write_bytes(synthetic_vmlinux())
    profile = profile_from_image(path)
    store = ProfileStore(tmp_path / "store")
    store.put(profile)
    banner_at = profile.symbol("linux_banner")
    profile.hot_layout["task_struct.pid"] = 0
    store.save_hot(profile)
    again = store.get(profile.identity.key)
    assert again is not None
    assert again.symbols.hot["linux_banner"] == banner_at and again.hot_layout == {"task_struct.pid": 0}
    assert again.symbol("linux_banner") == banner_at
    sidecar = store.path_for(profile.identity.key).with_suffix(".hot.json")
    sidecar.write_text(json.dumps({"symbols": {"linux_banner": "evil"}, "layout": {}}))
    third = store.get(profile.identity.key)
    assert third is not None and third.symbols.hot == {}  # not ints: ignored, rebuilt from the profile
    sidecar.write_text("{not json")
    fourth = store.get(profile.identity.key)
    assert fourth is not None and fourth.symbol("linux_banner") == banner_at
