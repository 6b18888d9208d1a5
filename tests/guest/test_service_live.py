"""The service on real guests: ``vmsentinel serve`` (the real command, its own process) watches a
lab guest; in Debian's Chromium, driven by Selenium, a person logs in, sees the test rootkit's
findings arrive live without reloading, opens the evidence, acknowledges it, pauses the guest
(QEMU's query-status says paused, the audit log says who and why) and logs out. A restart of the
service mid-watch loses no finding and keeps the triage. Screenshots go to $VMSENTINEL_SCREENSHOTS
(the ones in docs/ were taken so)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.guest.conftest import KERNEL_SERIES, Guest, LabPool
from vmsentinel.lab.kmod import build_module, insert_module

pytestmark = pytest.mark.guest
ROOTKIT = Path(__file__).parents[2] / "src" / "vmsentinel" / "lab" / "rootkit"
PASSWORD = "correct horse battery staple"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    """A running ``vmsentinel serve`` over one lab guest, and an admin's API token for it."""

    guest: Guest
    state: Path
    port: int
    token: str = ""
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=lambda: Path("/dev/null"))
    rootkit: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, stdin: str | None = None) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "vmsentinel", *args, "--state-dir", str(self.state)],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def start(self) -> None:
        self.log = self.state / f"serve-{int(time.time() * 1000)}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "vmsentinel",
                    "serve",
                    self.guest.target,
                    "--state-dir",
                    str(self.state),
                    "--listen",
                    f"127.0.0.1:{self.port}",
                    "--workers",
                    "1",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait(lambda: any(g["state"] == "watching" for g in self.api("/api/guests")), 180, "the guest watched")

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=120)
        self.process = None
        return code

    def api(self, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        )
        if body is not None:
            request.data = json.dumps(body).encode()
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.load(answer)

    def wait(self, done: Any, seconds: float, what: str) -> None:
        ends = time.monotonic() + seconds
        while time.monotonic() < ends:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"vmsentinel serve ended ({self.process.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                if done():
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.5)
        raise AssertionError(f"waited {seconds:g} s for {what}:\n{self.log.read_text()[-3000:]}")

    def load_rootkit(self, tmp: Path) -> None:
        """The test rootkit's inline hook, syscall hook and hidden module (once per guest)."""
        if self.rootkit:
            return
        ko = build_module(str(self.guest.info["kernel_package"]), ROOTKIT, tmp)
        insert_module(
            self.guest.name,
            ko,
            "hide_self=1 syscall_table=0x$(sym sys_call_table) syscall_nr=39 patch_addr=0x$(sym __x64_sys_getpid)",
        )
        self.rootkit = True


@pytest.fixture(scope="module", params=KERNEL_SERIES)
def served(request: pytest.FixtureRequest, lab_pool: LabPool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    guest = lab_pool.fresh(request.param, "svc")
    run = Served(guest, tmp_path_factory.mktemp("service"), _free_port())
    run.cli("user", "add", "ana", "--role", "admin", stdin=PASSWORD + "\n")
    run.token = json.loads(run.cli("token", "new", "--user", "ana", "--json"))["token"]
    run.start()
    yield run
    if run.process is not None:
        run.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000", "--lang=en-GB"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))  # Debian's driver: nothing downloaded
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver: Any, name: str, tmp: Path) -> None:
    folder = Path(os.environ.get("VMSENTINEL_SCREENSHOTS", str(tmp)))
    folder.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(folder / f"{name}.png"))


def _until(driver: Any, seconds: float, check: Any, what: str) -> Any:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.2, ignored_exceptions=(WebDriverException,)).until(check)
    except Exception as exc:
        raise AssertionError(f"waited {seconds:g} s for {what} on {driver.current_url}") from exc


def test_a_person_sees_the_rootkit_live_triages_it_and_pauses_the_guest(served: Served, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from vmsentinel.access.qmp import Qmp

    d, url = browser, served.url
    d.get(url + "/alerts")
    assert d.current_url.endswith("/login")  # no session: the login page
    d.find_element(By.ID, "username").send_keys("ana")
    d.find_element(By.ID, "password").send_keys(PASSWORD)
    d.find_element(By.ID, "login").click()
    _until(d, 10, lambda d: d.find_elements(By.ID, "guests"), "the overview")
    _shot(d, "overview", tmp_path)

    d.get(url + "/alerts?status=")
    _until(d, 10, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-stream") == "open", "the event stream")
    d.execute_script("window.__notReloaded = true")
    before = len(d.find_elements(By.CSS_SELECTOR, "#queue tbody tr[data-id]"))
    loader = threading.Thread(target=served.load_rootkit, args=(tmp_path,))
    loader.start()
    rows = _until(
        d,
        120,
        lambda d: [r for r in d.find_elements(By.CSS_SELECTOR, "#queue tbody tr[data-id]") if "kernel_code_modified" in r.text],
        "the inline hook in the queue",
    )
    loader.join()
    assert d.execute_script("return window.__notReloaded === true"), "the page was reloaded"
    assert len(d.find_elements(By.CSS_SELECTOR, "#queue tbody tr[data-id]")) > before
    _shot(d, "alerts-live", tmp_path)

    rows[0].find_element(By.TAG_NAME, "a").click()
    _until(d, 10, lambda d: d.find_elements(By.ID, "code"), "the finding's code evidence")
    observed = d.find_element(By.CSS_SELECTOR, ".code-observed .disasm").text
    expected = d.find_element(By.CSS_SELECTOR, ".code-expected .disasm").text
    assert observed and expected and observed != expected  # the hook's bytes, as instructions
    assert "T1014" in d.find_element(By.ID, "finding-title").find_element(By.XPATH, "..").text
    _shot(d, "finding", tmp_path)
    Select(d.find_element(By.ID, "triage-action")).select_by_value("acknowledge")
    d.find_element(By.ID, "triage-reason").send_keys("seen in the browser test")
    d.find_element(By.ID, "triage-submit").click()
    _until(d, 10, lambda d: "acknowledged" in d.find_element(By.ID, "finding-status").text, "the acknowledged status")
    assert "finding.acknowledge" in d.find_element(By.ID, "finding-audit").text

    d.get(url + "/guests/" + served.guest.target)
    Select(d.find_element(By.ID, "response-action")).select_by_value("pause")
    d.find_element(By.ID, "response-reason").send_keys("contain the rootkit")
    d.find_element(By.ID, "response-submit").click()
    _until(d, 5, lambda d: d.switch_to.alert, "the confirmation").accept()
    _until(d, 60, lambda d: "VM status paused" in d.find_element(By.ID, "responses").text, "the pause on the guest page")
    assert (
        "response.pause" in d.find_element(By.ID, "guest-audit").text
        and "contain the rootkit" in d.find_element(By.ID, "guest-audit").text
    )
    assert d.find_element(By.ID, "guest-state").text == "paused"
    d.execute_script("document.getElementById('responses').scrollIntoView()")
    _shot(d, "guest-paused", tmp_path)
    audit = [a for a in served.api("/api/audit") if a["action"] == "response.pause"]
    assert audit and audit[0]["user"] == "ana" and audit[0]["reason"] == "contain the rootkit"

    d.find_element(By.ID, "logout").click()
    _until(d, 10, lambda d: d.current_url.endswith("/login"), "the login page")
    d.get(url + "/alerts")
    assert d.current_url.endswith("/login")  # the session is over

    served.stop()  # QEMU serves one QMP client at a time: ask it once the sentinel has let go
    qmp = Qmp(str(served.guest.info["qmp_socket"]))
    qmp.connect()
    try:
        assert qmp.status() == "paused"
        qmp.cont()
    finally:
        qmp.close()
    served.start()


def test_a_restart_mid_watch_loses_no_finding_and_keeps_triage(served: Served, tmp_path: Path) -> None:
    served.load_rootkit(tmp_path)
    served.wait(lambda: served.api("/api/findings?detector=kernel_code_modified")["total"] > 0, 120, "the inline hook found")
    before = served.api("/api/findings?limit=500")
    first = before["findings"][-1]["id"]
    served.api("/api/findings/triage", {"ids": [first], "action": "close", "reason": "closed before the restart"})
    assert served.stop() == 0
    lines = (served.state / "findings.jsonl").read_text().splitlines()
    assert len(lines) >= before["total"]  # every stored finding is in the OCSF file too
    served.start()
    after = served.api("/api/findings?limit=500")
    kept = {f["id"]: f for f in after["findings"]}
    assert {f["id"] for f in before["findings"]} <= set(kept), "a finding was lost across the restart"
    assert kept[first]["status"] == "closed" and kept[first]["triage_reason"] == "closed before the restart"
    served.wait(lambda: served.api("/api/guests")[0]["sweeps"] >= 2, 60, "sweeps after the restart")
