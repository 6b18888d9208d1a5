"""A cache or state folder that cannot be made is a one-line error naming it and the variable to set."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmsentinel.errors import VmSentinelError
from vmsentinel.paths import cache_dir, state_dir


def test_an_unusable_folder_names_itself_and_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("VMSENTINEL_CACHE", str(blocker / "cache"))
    monkeypatch.setenv("VMSENTINEL_STATE", str(tmp_path / "state"))
    with pytest.raises(VmSentinelError, match=r"cannot use .*file/cache as the cache folder.*\$VMSENTINEL_CACHE"):
        cache_dir()
    assert state_dir() == tmp_path / "state" and (tmp_path / "state").is_dir()
