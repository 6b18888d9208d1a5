"""The core-text mask of a build, kept in the cache and mapped: another process (here: this one after
letting go of what it held) finds it by build and size; a file of another size, or page digests cut
short or damaged, are not taken; where the cache cannot be written, the mask is held in memory."""

from __future__ import annotations

import mmap
from pathlib import Path

import pytest

from vmsentinel.os.linux.views import build_masks

PAGE = 4096


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VMSENTINEL_CACHE", str(tmp_path / "cache"))
    build_masks.forget()
    yield tmp_path / "cache"
    build_masks.forget()


def mask_of(pages: int) -> bytes:
    return bytes([0xFF, 0x31, 0x00, 0xFF]) * (pages * PAGE // 4)


def test_a_kept_mask_is_mapped_from_the_cache_and_found_again_after_the_process_let_go(cache: Path) -> None:
    mask = mask_of(3)
    digests = [f"{i:016x}" for i in range(3)]
    build_masks.keep("6.1.0-57-amd64/abc", mask, digests)
    held = build_masks.shared("6.1.0-57-amd64/abc", len(mask))
    assert held is not None and isinstance(held.mask, mmap.mmap) and bytes(held.mask) == mask
    assert held.digests == digests and held.locks[:2] == [1, 5]
    build_masks.forget()
    again = build_masks.shared("6.1.0-57-amd64/abc", len(mask))
    assert again is not None and bytes(again.mask) == mask and again.digests == digests
    assert build_masks.shared("6.1.0-57-amd64/abc", len(mask) + PAGE) is None  # another text size
    assert build_masks.shared("6.12.0-1-amd64/def", len(mask)) is None  # another build
    files = sorted(p.name for p in (cache / build_masks.CACHE_FOLDER).iterdir())
    assert len(files) == 2 and all("/" not in f for f in files)


def test_damaged_files_are_not_taken(cache: Path) -> None:
    mask = mask_of(2)
    build_masks.keep("b", mask, ["0" * 16, "1" * 16])
    mask_file, pages_file = build_masks._files("b", len(mask))
    build_masks.forget()
    pages_file.write_text("0" * 16)  # one page digest for two pages
    assert build_masks.shared("b", len(mask)) is None
    pages_file.write_text("0" * 16 + "\nshort")
    assert build_masks.shared("b", len(mask)) is None
    pages_file.write_text("0" * 16 + "\n" + "1" * 16)
    mask_file.write_bytes(mask[:PAGE])  # cut short
    assert build_masks.shared("b", len(mask)) is None
    mask_file.write_bytes(mask)
    assert build_masks.shared("b", len(mask)) is not None
    build_masks.forget(files=True)
    assert not any((cache / build_masks.CACHE_FOLDER).iterdir())


def test_an_unwritable_cache_keeps_the_mask_in_memory(cache: Path) -> None:
    cache.mkdir(parents=True)
    (cache / build_masks.CACHE_FOLDER).write_text("a file where the folder should be")  # even root cannot
    mask = mask_of(1)
    build_masks.keep("b", mask, ["0" * 16])
    held = build_masks.shared("b", len(mask))
    assert held is not None and held.mask == mask
