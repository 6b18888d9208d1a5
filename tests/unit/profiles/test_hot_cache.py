"""Lookups made once are saved beside the cached profile and trusted only when well-formed."""

from __future__ import annotations

import json
from pathlib import Path

from tests.unit.profiles.test_image_profile_isf import synthetic_vmlinux

from vmsentinel.os.linux.profile.profile import profile_from_image
from vmsentinel.os.linux.profile.store import ProfileStore, forget_opened


def test_hot_symbols_and_layout_round_trip_and_bad_sidecars_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "vmlinux"
    path.write_bytes(synthetic_vmlinux())
    profile = profile_from_image(path)
    store = ProfileStore(tmp_path / "store")
    store.put(profile)
    banner_at = profile.symbol("linux_banner")
    profile.hot_layout["task_struct.pid"] = 0
    store.save_hot(profile)
    forget_opened()  # a new process, as far as the store can tell
    again = store.get(profile.identity.key)
    assert again is not None
    assert again.symbols.hot["linux_banner"] == banner_at and again.hot_layout == {"task_struct.pid": 0}
    assert again.symbol("linux_banner") == banner_at
    sidecar = store.path_for(profile.identity.key).with_suffix(".hot.json")
    sidecar.write_text(json.dumps({"symbols": {"linux_banner": "evil"}, "layout": {}}))
    forget_opened()
    third = store.get(profile.identity.key)
    assert third is not None and third.symbols.hot == {}  # not ints: ignored, rebuilt from the profile
    sidecar.write_text("{not json")
    forget_opened()
    fourth = store.get(profile.identity.key)
    assert fourth is not None and fourth.symbol("linux_banner") == banner_at


def test_a_process_opens_a_profile_once_and_again_only_when_its_file_is_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "vmlinux"
    path.write_bytes(synthetic_vmlinux())
    store = ProfileStore(tmp_path / "store")
    profile = profile_from_image(path)
    store.put(profile)
    first = store.get(profile.identity.key)
    assert first is not None and store.get(profile.identity.key) is first  # every guest of the build shares it
    assert ProfileStore(tmp_path / "store").get(profile.identity.key) is first  # whichever store asks
    store.put(profile)  # rewritten (a rebuilt profile): opened anew
    second = store.get(profile.identity.key)
    assert second is not None and second is not first and second.symbol("linux_banner") == profile.symbol("linux_banner")
