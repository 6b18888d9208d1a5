"""The whole test session: no large file is left under pytest's temporary folder.

Guest tests delete their memory dumps when each is done (tests/guest/conftest.py); this is the net
for anything that got past them: at the end of the session, every file of 50 MiB or more under the
session's base temporary folder is deleted (``VMSENTINEL_KEEP_DUMPS=1`` keeps them, to debug), and
the summary says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

#: what the end-of-session sweep deleted, for the summary
SWEPT: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def _no_large_files_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    from tests.guest.helpers import LARGE_FILE, remove_dumps

    SWEPT.extend(remove_dumps(tmp_path_factory.getbasetemp(), min_size=LARGE_FILE))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SWEPT:
        terminalreporter.write_line(f"removed {len(SWEPT)} file(s) of 50 MiB or more that tests left behind, e.g. {SWEPT[0]}")
