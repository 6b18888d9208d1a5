"""The watch's line for a guest's first look: which vendor image its kernel was compared with and
how many differences there were, or why it could not be compared."""

from __future__ import annotations

from vmsentinel.events import FirstLook
from vmsentinel.sinks.console import describe


def test_a_first_look_says_what_the_kernel_was_compared_with_or_why_not() -> None:
    found = FirstLook("lab:web", "/boot/vmlinuz-6.1.0-57-amd64", 21 << 20, 0)
    assert describe(found) == "first look: kernel compared with /boot/vmlinuz-6.1.0-57-amd64: 21 MiB, 0 differences"
    missing = FirstLook("lab:web", "", 0, 0, "no vendor image of 6.1.0-57-amd64 (build id ab) in /boot")
    assert describe(missing) == (
        "first look: no vendor image of 6.1.0-57-amd64 (build id ab) in /boot: kernel code not compared with the vendor's"
    )
