"""The whole test session: no large file is left under pytest's temporary folder.

Guest tests delete their memory dumps when each is done (tests/guest/conftest.py); this is the net
for anything that got past them: at the end of the session, every file of 50 MiB or more under the
session's base temporary folder is deleted (``VMSENTINEL_KEEP_DUMPS=1`` keeps them, to debug).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _no_large_files_left(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    from tests.guest.helpers import LARGE_FILE, remove_dumps

    base = tmp_path_factory.getbasetemp()
    removed = remove_dumps(base, min_size=LARGE_FILE)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if removed and reporter is not None:
        reporter.write_line(f"removed {len(removed)} large files a test left under {base}, e.g. {removed[0]}")
