"""The service's HTTP API on a real watcher (stand-in guests, real SQLite store): every route
refuses the unauthenticated and the wrong role, sessions need their CSRF token for changes,
tokens expire, failed logins are rate-limited, triage and suppressions change what the queue
shows, every change is in the audit log, and a hung guest answers 504 instead of stalling."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from tests.unit.watch.test_watcher import FakeGuest

from vmsentinel.pipeline.policy import Policy
from vmsentinel.service import api
from vmsentinel.service.accounts import ServiceDb
from vmsentinel.service.alerts import Alerts
from vmsentinel.service.app import create_app
from vmsentinel.service.context import ServiceContext
from vmsentinel.service.live import LiveFeed
from vmsentinel.sinks.metrics import MetricsSink
from vmsentinel.sinks.sqlite_store import SqliteStore
from vmsentinel.watch.watcher import Watcher

PASSWORD = "a long enough password"


@dataclass
class Stack:
    ctx: ServiceContext
    client: TestClient
    store: SqliteStore
    tokens: dict[str, str]
    app: FastAPI

    def as_(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


def build(folder: Path, watcher: Watcher | None = None, name: str = "g") -> tuple[ServiceContext, SqliteStore]:
    db = ServiceDb(folder / "service.db")
    store = SqliteStore(folder / "findings.db")
    live = LiveFeed()
    alerts = Alerts(store.path, db)
    live.locate = alerts.locate
    metrics = MetricsSink(None)
    if watcher is None:
        guest = FakeGuest(name, hooked=[False, True])
        guest.target = SimpleNamespace(control=None, live=False, spec="g")
        about = {
            "os": "linux",
            "release": "6.1-test",
            "build_id": "ab12",
            "profile": "cache",
            "paging_levels": 5,
            "access": "raw g",
        }
        guest.about = lambda: about  # type: ignore[method-assign]
        watcher = Watcher(
            [name],
            interval=0.01,
            sinks=[store, live, metrics],
            open_guest=lambda _t: guest,
            policy=Policy(detectors=["syscall_hook"]),
        )
        watcher.run(max_sweeps=4)  # a baseline, then the hook: one finding in the store
    return ServiceContext(db, alerts, live, watcher, metrics, policy={"source": None, "loaded": time.time()}), store


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    ctx, store = build(tmp_path)
    tokens = {}
    for role in ("viewer", "analyst", "admin"):
        ctx.db.add_user(role, role, PASSWORD, by="test")
        tokens[role] = ctx.db.new_token(role, by="test")[1]
    app = create_app(ctx)
    with TestClient(app) as client:
        yield Stack(ctx, client, store, tokens, app)
    ctx.alerts.close()
    store.close()
    ctx.db.close()


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda m: "1" if "id" in m.group(0) else "g", path)


def test_every_api_route_refuses_a_request_without_credentials(stack: Stack) -> None:
    schema = stack.client.get("/api/openapi.json").json()["paths"]  # every documented route
    routes = [(m.upper(), p) for p, methods in schema.items() for m in methods if p.startswith("/api")]
    assert len(routes) >= 15
    for method, path in routes:
        answer = stack.client.request(method, _concrete(path), json={})
        assert answer.status_code == 401, (method, path, answer.status_code)
    assert stack.client.get("/metrics").status_code == 401
    assert stack.client.get("/healthz").json()["status"] == "ok"  # liveness needs no credentials
    assert stack.client.get("/api/guests", headers={"Authorization": "Bearer vms_not-a-token"}).status_code == 401


def test_roles_limit_what_a_token_may_do(stack: Stack) -> None:
    ids = [f["id"] for f in stack.client.get("/api/findings", headers=stack.as_("viewer")).json()["findings"]]
    assert ids, "the watch found the hook"
    triage = {"ids": ids, "action": "acknowledge", "reason": "seen it"}
    assert stack.client.post("/api/findings/triage", json=triage, headers=stack.as_("viewer")).status_code == 403
    assert (
        stack.client.post(
            "/api/guests/g/responses", json={"action": "pause", "reason": "test"}, headers=stack.as_("viewer")
        ).status_code
        == 403
    )
    assert stack.client.get("/api/users", headers=stack.as_("analyst")).status_code == 403
    assert stack.client.get("/api/audit", headers=stack.as_("analyst")).status_code == 403
    assert stack.client.post("/api/findings/triage", json=triage, headers=stack.as_("analyst")).status_code == 200
    assert stack.client.get("/api/users", headers=stack.as_("admin")).status_code == 200


def test_an_expired_or_revoked_token_is_refused(stack: Stack) -> None:
    token_id, secret = stack.ctx.db.new_token("viewer", expires_days=1, by="test")
    headers = {"Authorization": f"Bearer {secret}"}
    assert stack.client.get("/api/guests", headers=headers).status_code == 200
    with stack.ctx.db.lock, stack.ctx.db.db:
        stack.ctx.db.db.execute("UPDATE tokens SET expires = ? WHERE id = ?", (time.time() - 1, token_id))
    assert stack.client.get("/api/guests", headers=headers).status_code == 401
    other_id, other = stack.ctx.db.new_token("viewer", by="test")
    assert stack.client.delete(f"/api/tokens/{other_id}", headers=stack.as_("admin")).status_code == 200
    assert stack.client.get("/api/guests", headers={"Authorization": f"Bearer {other}"}).status_code == 401
    assert any(a["action"] == "token.revoke" for a in stack.ctx.db.audit_log())


def _login(client: TestClient, user: str, password: str) -> httpx.Response:
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    return client.post("/login", data={"username": user, "password": password, "csrf": csrf.group(1)}, follow_redirects=False)


def test_a_session_change_needs_the_csrf_token(stack: Stack) -> None:
    assert _login(stack.client, "analyst", PASSWORD).status_code == 303
    ids = [f["id"] for f in stack.client.get("/api/findings").json()["findings"]]
    body = {"ids": ids, "action": "close", "reason": "a test"}
    assert stack.client.post("/api/findings/triage", json=body).status_code == 403  # the cookie alone is not enough
    page = stack.client.get("/alerts")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    assert stack.client.post("/api/findings/triage", json=body, headers={"X-CSRF-Token": "wrong"}).status_code == 403
    assert stack.client.post("/api/findings/triage", json=body, headers={"X-CSRF-Token": csrf.group(1)}).status_code == 200
    form = stack.client.post("/alerts/triage", data={"id": ids, "action": "reopen", "reason": "form"}, follow_redirects=False)
    assert form.status_code == 403
    form = stack.client.post(
        "/alerts/triage", data={"id": ids, "action": "reopen", "reason": "form", "csrf": csrf.group(1)}, follow_redirects=False
    )
    assert form.status_code == 303


def test_failed_logins_are_rate_limited_and_audited(stack: Stack) -> None:
    for _ in range(5):
        assert "wrong user name or password" in _login(stack.client, "viewer", "wrong password!!").text
    refused = _login(stack.client, "viewer", PASSWORD)  # the right password too, for a while
    assert refused.status_code == 200 and "too many failed logins" in refused.text
    log = [a["action"] for a in stack.ctx.db.audit_log()]
    assert log.count("login.failed") == 5 and "login.refused" in log
    assert stack.client.get("/api/guests").status_code == 401


def test_triage_and_suppression_change_the_queue_and_the_audit_log(stack: Stack) -> None:
    h = stack.as_("analyst")
    rows = stack.client.get("/api/findings", params={"status": "open"}, headers=h).json()
    assert rows["total"] == 1
    fid = rows["findings"][0]["id"]
    assign = {"ids": [fid], "action": "assign", "assignee": "admin", "reason": "for the admin"}
    assert stack.client.post("/api/findings/triage", json=assign, headers=h).status_code == 200
    got = stack.client.get(f"/api/findings/{fid}", headers=h).json()
    assert (got["status"], got["assignee"], got["triaged_by"]) == ("acknowledged", "admin", "analyst")
    assert stack.client.get("/api/findings", params={"status": "open"}, headers=h).json()["total"] == 0
    bad = stack.client.post("/api/findings/triage", json={"ids": [fid, 999999], "action": "close", "reason": "x y z"}, headers=h)
    assert bad.status_code == 404
    assert (
        stack.client.post(
            "/api/findings/triage", json={"ids": [fid], "action": "reopen", "reason": "again"}, headers=h
        ).status_code
        == 200
    )
    sup = stack.client.post(
        "/api/suppressions", json={"detector": "syscall_hook", "guest": "g", "days": 1, "reason": "lab noise"}, headers=h
    )
    assert sup.status_code == 200
    # reopened and suppressed: the analyst's word wins over the suppression
    assert stack.client.get(f"/api/findings/{fid}", headers=h).json()["status"] == "open"
    stack.client.post("/api/findings/triage", json={"ids": [fid], "action": "close", "reason": "done"}, headers=h)
    with stack.ctx.db.lock, stack.ctx.db.db:
        stack.ctx.db.db.execute("DELETE FROM triage")
    assert stack.client.get(f"/api/findings/{fid}", headers=h).json()["status"] == "suppressed"
    assert stack.client.get("/api/findings", params={"severity": "low"}, headers=h).json()["total"] == 0
    assert stack.client.get("/api/findings", params={"guest": "g", "detector": "syscall_hook"}, headers=h).json()["total"] == 1
    assert stack.client.get("/api/findings", params={"severity": "bogus"}, headers=h).status_code == 422
    actions = [a["action"] for a in stack.client.get("/api/audit", headers=stack.as_("admin")).json()]
    assert {"finding.assign", "finding.reopen", "finding.close", "suppression.add"} <= set(actions)


def test_views_come_from_the_latest_snapshot_and_a_hung_guest_answers_504(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    h = stack.as_("viewer")
    assert stack.client.get("/api/guests/g/processes", headers=h).json()["records"][0]["pid"] == 1
    assert stack.client.get("/api/guests/nope/processes", headers=h).status_code == 404
    assert stack.client.get("/api/guests/g/bogus", headers=h).status_code == 404
    detail = stack.client.get("/api/guests/g", headers=h)
    assert detail.status_code == 200, detail.text
    assert (detail.json()["release"], detail.json()["paging_levels"], detail.json()["access"]) == ("6.1-test", 5, "raw g")
    never: Future[dict[str, object]] = Future()
    monkeypatch.setattr(stack.ctx.watcher, "view", lambda _t, _n: never)
    monkeypatch.setattr(api, "GUEST_TIMEOUT", 0.2)
    assert stack.client.get("/api/guests/g/processes", headers=h).status_code == 504
    assert stack.client.get("/api/guests", headers=h).status_code == 200  # the rest of the API is unaffected


def test_a_response_is_carried_out_and_audited_before_and_after(stack: Stack) -> None:
    answer = stack.client.post(
        "/api/guests/g/responses", json={"action": "pause", "reason": "contain it"}, headers=stack.as_("analyst")
    )
    assert answer.status_code == 200
    assert answer.json()[0]["ok"] is False and "no hypervisor control" in answer.json()[0]["detail"]  # a stand-in guest has none
    audit = [a for a in stack.ctx.db.audit_log() if a["action"] == "response.pause"]
    assert [a["detail"] for a in audit][::-1][0] == "requested" and len(audit) == 2 and audit[0]["reason"] == "contain it"
    assert stack.store.responses()[-1]["action"] == "pause"


def test_users_and_tokens_by_the_api_are_audited(stack: Stack) -> None:
    h = stack.as_("admin")
    assert (
        stack.client.post("/api/users", json={"name": "eve", "role": "viewer", "password": "short"}, headers=h).status_code == 422
    )
    assert (
        stack.client.post(
            "/api/users", json={"name": "eve", "role": "viewer", "password": PASSWORD, "reason": "new hire"}, headers=h
        ).status_code
        == 201
    )
    token = stack.client.post("/api/tokens", json={"user": "eve", "expires_days": 2}, headers=h).json()["token"]
    assert stack.client.get("/api/guests", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert (
        stack.client.post("/api/tokens", json={"user": "admin"}, headers={"Authorization": f"Bearer {token}"}).status_code == 403
    )
    assert stack.client.delete("/api/users/eve", headers=h).status_code == 200
    assert (
        stack.client.get("/api/guests", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    )  # her tokens went with her
    actions = [a["action"] for a in stack.ctx.db.audit_log()]
    assert {"user.add", "token.new", "user.remove"} <= set(actions)


def test_the_event_stream_delivers_a_finding_with_its_stored_id(stack: Stack) -> None:
    from vmsentinel.events import FindingRaised

    stored = stack.client.get("/api/findings", headers=stack.as_("viewer")).json()["findings"][0]
    finding = stack.ctx.alerts.get(stored["id"])
    assert finding is not None
    from vmsentinel.service.evidence import finding_of

    raised = FindingRaised(finding_of(finding))
    got: list[str] = []
    with stack.client.stream("GET", "/api/events", headers=stack.as_("viewer")) as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith("retry:")
        threading.Timer(0.2, lambda: stack.ctx.live.handle([raised])).start()
        for line in lines:
            if line.startswith("data:"):
                got.append(line)
                break
    assert f'"id": {stored["id"]}' in got[0] and '"kind": "FindingRaised"' in got[0]


def test_triage_survives_a_restart_of_the_service(tmp_path: Path) -> None:
    ctx, store = build(tmp_path)
    ctx.db.add_user("ana", "analyst", PASSWORD, by="test")
    fid = ctx.alerts.page(api.AlertQuery())[0][0]["id"]
    from vmsentinel.service.alerts import triage

    triage(ctx.db, [fid], "close", "ana", "benign")
    ctx.alerts.close()
    store.close()
    ctx.db.close()
    again, store2 = build(tmp_path, watcher=ctx.watcher)
    row = again.alerts.get(fid)
    assert row is not None and row["status"] == "closed" and row["triage_reason"] == "benign"
    assert again.db.check_password("ana", PASSWORD) is not None
    again.alerts.close()
    store2.close()
    again.db.close()


def test_every_page_renders_for_a_signed_in_admin_and_sends_others_to_the_login(stack: Stack) -> None:
    assert stack.client.get("/alerts", follow_redirects=False).headers["location"] == "/login"
    assert _login(stack.client, "admin", PASSWORD).status_code == 303
    fid = stack.client.get("/api/findings").json()["findings"][0]["id"]
    expect = {
        "/": 'id="guests"',
        "/alerts": 'id="queue"',
        "/alerts?severity=critical&status=open": 'id="queue"',
        "/guests/g": 'id="view-table"',
        "/guests/g?view=syscalls": "read",
        f"/findings/{fid}": 'id="ocsf"',
        "/live": 'id="live-events"',
        "/policy": 'id="policy-log"',
        "/admin": 'id="audit"',
    }
    for path, marker in expect.items():
        answer = stack.client.get(path)
        assert answer.status_code == 200 and marker in answer.text, path
        assert "script-src 'self'" in answer.headers["content-security-policy"]
    assert stack.client.get("/findings/999999").status_code == 404


def test_a_finding_page_shows_expected_and_observed_code_disassembled(tmp_path: Path) -> None:
    from vmsentinel.detect.finding import ROOTKIT, Finding, Severity
    from vmsentinel.service.evidence import explain, finding_of

    evidence = {
        "first_byte": "0xffffffff81000000",
        "expected": "0f1f440000c3",
        "observed": "e911223344c3",
        "symbol": "x64_sys_call+0x0",
    }
    row = {
        "detector": "kernel_code_modified",
        "title": "t",
        "severity": "critical",
        "attack": "T1014",
        "target": "g",
        "evidence": evidence,
        "time": 1.0,
        "confirmed": 1,
    }
    shown = explain(row)
    (before, after) = shown["code"]
    assert before["instructions"][0]["text"].startswith("nop") and after["instructions"][0]["text"].startswith("jmp")
    assert [i["changed"] for i in after["instructions"]] == [True, False]  # the ret after the hook is as it was
    assert shown["attack_url"] == "https://attack.mitre.org/techniques/T1014/"
    assert finding_of(row) == Finding(
        "kernel_code_modified", "t", Severity.CRITICAL, ROOTKIT, "g", evidence, time=1.0, confirmed=True
    )
    assert (shown["ocsf"]["class_name"], shown["ocsf"]["severity_id"]) == ("Detection Finding", 5)


def test_a_guest_named_by_a_path_has_its_detail_and_views(tmp_path: Path) -> None:
    ctx, store = build(tmp_path, name="/images/web 1.core")
    ctx.db.add_user("v", "viewer", PASSWORD, by="test")
    h = {"Authorization": f"Bearer {ctx.db.new_token('v', by='test')[1]}"}
    with TestClient(create_app(ctx)) as client:
        quoted = "%2Fimages%2Fweb%201.core"
        assert client.get(f"/api/guests/{quoted}", headers=h).json()["target"] == "/images/web 1.core"
        assert client.get(f"/api/guests/{quoted}/modules", headers=h).json()["records"] == []
        assert client.get(f"/api/guests/{quoted}/processes", headers=h).json()["records"][0]["pid"] == 1
        assert client.get(f"/api/guests/{quoted}/nothing", headers=h).status_code == 404
        assert client.get("/api/guests/%2Fimages", headers=h).status_code == 404
    ctx.alerts.close()
    store.close()
    ctx.db.close()


def test_a_form_goes_back_only_to_a_page_of_this_site(stack: Stack) -> None:
    assert _login(stack.client, "analyst", PASSWORD).status_code == 303
    csrf = re.search(r'name="csrf" value="([^"]+)"', stack.client.get("/alerts").text)
    assert csrf is not None
    fid = stack.client.get("/api/findings").json()["findings"][0]["id"]
    for target, where in (
        ("/findings/1", "/findings/1"),
        ("//evil.example/x", "/alerts"),
        ("/\\evil.example", "/alerts"),
        ("https://evil.example", "/alerts"),
    ):
        form = {"id": [str(fid)], "action": "acknowledge", "reason": "redirect test", "csrf": csrf.group(1), "next": target}
        answer = stack.client.post("/alerts/triage", data=form, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == where, target


def test_the_service_puts_memory_dumps_under_its_state_folder(tmp_path: Path) -> None:
    from vmsentinel.pipeline.loading import ActivePolicy
    from vmsentinel.service.runner import Service

    relative = ActivePolicy(Policy(), None, "built-in", False)
    service = Service([], relative, tmp_path / "state")
    try:
        assert service.watcher.policy.dumps == str(tmp_path / "state" / "vmsentinel-dumps")
    finally:
        service.watcher.close()
        service.close()
    absolute = Policy()
    absolute.dumps = "/srv/dumps"
    service = Service([], ActivePolicy(absolute, None, "built-in", False), tmp_path / "state")
    try:
        assert service.watcher.policy.dumps == "/srv/dumps"
    finally:
        service.watcher.close()
        service.close()


def test_suppressions_policy_tokens_and_metrics_read_back(stack: Stack) -> None:
    h, admin = stack.as_("analyst"), stack.as_("admin")
    sid = stack.client.post(
        "/api/suppressions", json={"detector": "*", "guest": "g", "days": 2, "reason": "maintenance"}, headers=h
    ).json()["id"]
    assert [s["id"] for s in stack.client.get("/api/suppressions", headers=h).json()] == [sid]
    assert stack.client.get("/api/findings", params={"status": "suppressed"}, headers=h).json()["total"] == 1
    assert stack.client.delete(f"/api/suppressions/{sid}", params={"reason": "maintenance over"}, headers=h).status_code == 200
    assert stack.client.get("/api/suppressions", headers=h).json() == []
    assert stack.client.delete(f"/api/suppressions/{sid}", params={"reason": "again"}, headers=h).status_code == 404
    assert stack.client.get("/api/findings", params={"status": "open"}, headers=h).json()["total"] == 1
    assert "suppression.end" in [a["action"] for a in stack.ctx.db.audit_log()]
    policy = stack.client.get("/api/policy", headers=stack.as_("viewer")).json()
    assert policy["detectors"] == ["syscall_hook"] and policy["interval"] == 0.01
    mine = stack.client.get("/api/tokens", headers=stack.as_("viewer")).json()
    assert {t["user"] for t in mine} == {"viewer"}
    assert {t["user"] for t in stack.client.get("/api/tokens", headers=admin).json()} == {"viewer", "analyst", "admin"}
    metrics = stack.client.get("/metrics", headers=stack.as_("viewer")).text
    assert 'vmsentinel_sweeps_total{target="g"}' in metrics and 'vmsentinel_findings_total{target="g"} 1.0' in metrics


def test_the_process_tree_survives_cyclic_and_self_parent_links() -> None:
    from vmsentinel.service.pages import process_tree

    hostile = [
        {"pid": 1, "ppid": 0, "name": "init"},
        {"pid": 5, "ppid": 6, "name": "a"},  # 5 and 6 are each other's parent: no root reaches them
        {"pid": 6, "ppid": 5, "name": "b"},
        {"pid": 7, "ppid": 7, "name": "self"},
        {"pid": 8, "ppid": 1, "name": "child"},
    ]
    tree = process_tree(hostile)
    assert sorted(r["pid"] for r in tree) == [1, 5, 6, 7, 8]  # every process once, none lost, no endless loop
    assert [r["pid"] for r in tree[:3]] == [1, 8, 7] and tree[1]["name"].endswith("└ child")
