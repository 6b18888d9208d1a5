"""A short run of the fuzz harness (benchmarks/fuzz.py runs a million cases): every parser and walker
on a few hundred hostile variants of valid inputs, with no exception but the project's own and no
case over the time bound. The harness itself is checked to see a crash and a hang for what they are."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.fuzz_targets import TARGETS, Built, Seed, Stats, Target, built, fuzz, remove_scratch

from vmsentinel.errors import BtfError

CASES = 250  # per target: 17 targets, a few thousand cases, a few seconds
#: fewer for a target whose case is a whole guest's snapshot (~35 ms each); benchmarks/fuzz.py runs thousands
CASES_OF = {"nt-guest": 100}
SEED = 20240611
BOUND = 5.0  # seconds per case: generous, the suite may share the machine with guests
#: targets that parse bytes of any length (the others read a fixed-size region of memory)
BYTES_TARGETS = ["btf", "kallsyms", "elf-core", "lime", "isf", "bundle", "allowlist-cpio", "allowlist-deb"]


@pytest.fixture(scope="module", autouse=True)
def _scratch() -> Iterator[None]:
    yield
    remove_scratch()


def _explain(stats: Stats) -> str:
    return "\n".join(f"{f.kind} at case {f.case}: {f.error} at {f.where}\n{f.trace}" for f in stats.failures) + "\n".join(
        stats.seed_problems
    )


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_no_crash_and_no_hang(name: str) -> None:
    cases = CASES_OF.get(name, CASES)
    stats = fuzz(TARGETS[name], cases, seed=SEED, timeout=BOUND)
    assert stats.cases == cases
    assert not stats.seed_problems, _explain(stats)  # the seeds are valid: mutations start from deep code
    assert stats.crashes == 0 and stats.hangs == 0, _explain(stats)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(TARGETS)), case=st.integers(min_value=0, max_value=1 << 40))
def test_any_case_of_any_target(name: str, case: int) -> None:
    """Hypothesis picks the cases: any index of any target is a reproducible input."""
    stats = fuzz(TARGETS[name], 1, seed=SEED, timeout=BOUND, first_case=case)
    assert stats.crashes == 0 and stats.hangs == 0, _explain(stats)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(BYTES_TARGETS), data=st.binary(max_size=600))
def test_arbitrary_bytes(name: str, data: bytes) -> None:
    """Short inputs of any bytes, which mutations of large seeds rarely make (run as a one-seed target,
    under the same timer and classification)."""
    stats = fuzz(_target(built(TARGETS[name]).run, data), 1, seed=SEED, timeout=BOUND)
    assert stats.crashes == 0 and stats.hangs == 0, _explain(stats)


def _target(run: object, seed: bytes = b"seed bytes") -> Target:
    return Target(f"check-{id(run)}", "a check of the harness", lambda: Built([Seed(seed)], run))  # type: ignore[arg-type]


def test_an_index_error_in_a_parser_is_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run above fails when a parser raises IndexError: a real parser, made to raise one on
    mutated input, is reported as crashing, with where and how."""
    from vmsentinel.os.linux.profile import kallsyms

    real = kallsyms.decode

    def decode(buf: bytes, layout: kallsyms.KallsymsLayout | None = None) -> kallsyms.KernelSymbols:
        symbols = real(buf, layout)
        if len(buf) % 7 == 3:
            raise IndexError("index out of range")
        return symbols

    monkeypatch.setattr(kallsyms, "decode", decode)
    stats = fuzz(TARGETS["kallsyms"], 300, seed=SEED, timeout=BOUND)
    assert stats.crashes > 0
    assert stats.failures[0].kind == "crash" and stats.failures[0].error.startswith("IndexError")
    assert "kallsyms" in stats.failures[0].trace


def test_a_hang_is_counted_even_when_the_parser_catches_everything() -> None:
    """The timer's exception is no Exception, so ``except Exception`` in a parser cannot hide a hang."""

    def stubborn(data: bytes) -> None:
        with contextlib.suppress(Exception):  # what a careless parser does
            time.sleep(1.0)

    stats = fuzz(_target(stubborn), 2, seed=SEED, timeout=0.2)
    assert stats.hangs == 2 and stats.crashes == 0


def test_project_errors_are_rejections_and_other_errors_crashes() -> None:
    def picky(data: bytes) -> None:
        if data.startswith(b"seed"):
            raise BtfError("refused")
        raise KeyError("oops")

    stats = fuzz(_target(picky), 200, seed=SEED, timeout=BOUND)
    assert stats.rejected + stats.crashes == 200 and stats.rejected >= 1 and stats.crashes >= 1
    assert stats.seed_problems  # the seed itself is refused: the target is broken, and says so
