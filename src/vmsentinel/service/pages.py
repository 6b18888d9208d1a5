"""The dashboard: server-rendered pages (Jinja2) over the same data as the API, with a little
JavaScript for the live parts (server-sent events). Forms post with the session's CSRF token;
every change is also in the audit log. A page asked for without a session goes to the login."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from vmsentinel.service.accounts import ROLES, AccountError, Principal
from vmsentinel.service.alerts import SEVERITIES, STATUSES, suppress
from vmsentinel.service.alerts import Query as AlertQuery
from vmsentinel.service.api import (
    RESPONSES,
    TriageRequest,
    _view,
    apply_triage,
    carry_out,
    ctx_of,
    guest_list,
    policy_in_force,
    remove_user_audited,
)
from vmsentinel.service.charts import bars, lines
from vmsentinel.service.evidence import explain
from vmsentinel.service.security import LOGIN_CSRF_COOKIE, SESSION_COOKIE, identify, same
from vmsentinel.watch.snapshot_views import SNAPSHOT_VIEWS

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
templates.env.filters["cell"] = lambda v: "-" if v is None else " ".join(map(str, v)) if isinstance(v, list | tuple) else v
templates.env.filters["when"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t))) if t else "-"
router = APIRouter(include_in_schema=False)
#: the reason the audit log gives for a user or token change made on the admin page
FROM_DASHBOARD = "from the dashboard"


#: the columns a person wants first in each view (the API gives every field)
VIEW_COLUMNS = {
    "processes": ("pid", "ppid", "name", "state", "uid", "euid", "cap_effective", "exe", "cmdline", "sources"),
    "modules": ("name", "size", "state", "base", "taints", "sig_ok", "used_by", "sources"),
}


def process_tree(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Processes in tree order (each after its parent), the name indented by depth."""
    by_pid = {r["pid"]: r for r in records}
    children: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        children.setdefault(r["ppid"] if r["ppid"] in by_pid and r["ppid"] != r["pid"] else -1, []).append(r)
    out: list[dict[str, Any]] = []
    stack = [(r, 0) for r in reversed(children.get(-1, []))]
    seen: set[int] = set()
    while stack:
        r, depth = stack.pop()
        if r["pid"] in seen:  # a cycle in hostile parent links: each process once
            continue
        seen.add(r["pid"])
        out.append({**r, "name": "\u00a0\u00a0" * depth + ("└ " if depth else "") + str(r["name"])})
        stack.extend((c, depth + 1) for c in reversed(children.get(r["pid"], [])))
    out.extend(r for r in records if r["pid"] not in seen)
    return out


class SignIn(Exception):
    """No session: the page answers with the login page instead."""


async def person(request: Request, role: str = "viewer") -> Principal:
    who = await identify(request, ctx_of(request).db)
    if who is None:
        raise SignIn
    if not who.may(role):
        raise HTTPException(403, f"this page needs the {role} role; {who.name} is {who.role}")
    return who


def page(request: Request, name: str, who: Principal | None, **values: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, {"who": who, "csrf": who.csrf if who else None, **values})


def back(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# -- signing in and out ---------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, error: str | None = None) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = page(request, "login.html", None, login_csrf=token, error=error)
    response.set_cookie(
        LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=ctx_of(request).secure_cookies, path="/login"
    )
    return response


@router.post("/login")
def login(
    request: Request, username: Annotated[str, Form()], password: Annotated[str, Form()], csrf: Annotated[str, Form()]
) -> Response:
    ctx = ctx_of(request)
    if not same(csrf, request.cookies.get(LOGIN_CSRF_COOKIE)):
        raise HTTPException(403, "CSRF check failed: load the login page again")
    client = request.client.host if request.client else "unknown"
    keys = (f"addr:{client}", f"user:{username}")
    wait = ctx.limiter.blocked(*keys)
    if wait > 0:
        ctx.db.audit(username, "login.refused", "service", f"rate limited, from {client}")
        return login_page(request, f"too many failed logins: try again in {int(wait) + 1} s")
    who = ctx.db.check_password(username, password)
    if who is None:
        ctx.limiter.failed(*keys)
        ctx.db.audit(username, "login.failed", "service", f"from {client}")
        return login_page(request, "wrong user name or password")
    ctx.limiter.succeeded(username)
    secret, _csrf = ctx.db.new_session(who.name)
    ctx.db.audit(who.name, "login", "service", f"from {client}")
    response = back("/")
    response.set_cookie(SESSION_COOKIE, secret, httponly=True, samesite="strict", secure=ctx.secure_cookies, path="/")
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    who = await person(request)
    ctx_of(request).db.end_session(request.cookies.get(SESSION_COOKIE, ""))
    ctx_of(request).db.audit(who.name, "logout", "service")
    response = back("/login")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# -- the pages --------------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request) -> HTMLResponse:
    who = await person(request)
    ctx = ctx_of(request)
    guests = guest_list(ctx)
    totals = {s: sum(g["open_findings"].get(s, 0) for g in guests) for s in SEVERITIES}
    now = time.time()
    per_hour = ctx.alerts.over_time(now - 24 * 3600, 3600)
    series = {g: [(t - now, s * 1000) for t, s in ctx.live.guest(g).times] for g in (x["target"] for x in guests)}
    return page(
        request,
        "overview.html",
        who,
        guests=guests,
        totals=totals,
        severities=SEVERITIES,
        findings_chart=bars(per_hour, "findings per hour, last 24 h"),
        sweep_chart=lines(series, "sweep time (ms), last 5 minutes"),
    )


@router.post("/guests/{guest:path}/respond")
async def guest_respond(request: Request, guest: str, action: Annotated[str, Form()], reason: Annotated[str, Form()]) -> Response:
    who = await person(request, "analyst")
    if action not in RESPONSES or len(reason.strip()) < 3:
        raise HTTPException(422, f"a response is one of {', '.join(RESPONSES)}, with a reason of 3 characters or more")
    await carry_out(ctx_of(request), guest, action, reason.strip(), who)
    return back(f"/guests/{guest}")


@router.get("/guests/{guest:path}", response_class=HTMLResponse)
async def guest_page(request: Request, guest: str, view: str = "processes") -> HTMLResponse:
    who = await person(request)
    ctx = ctx_of(request)
    if view not in SNAPSHOT_VIEWS:
        view = "processes"
    try:
        about = await _view(ctx, guest, "about")
        shown = await _view(ctx, guest, view)
        problem = None
    except HTTPException as exc:
        if exc.status_code == 404:
            raise
        about, shown, problem = {"target": guest}, {"records": [], "problems": []}, exc.detail
    records = shown["records"]
    if view == "processes":
        records = process_tree(records)
    preferred = VIEW_COLUMNS.get(view, ())
    columns = [c for c in preferred if records and c in records[0]] or (list(records[0]) if records else [])
    return page(
        request,
        "guest.html",
        who,
        guest=guest,
        about=about,
        health=ctx.live.guest(guest).to_json(),
        view=view,
        views=SNAPSHOT_VIEWS,
        columns=columns,
        records=records,
        problems=shown.get("problems", []),
        problem=problem,
        responses=ctx.alerts.responses(guest, 20),
        audit=ctx.db.audit_log(20, guest),
        actions=RESPONSES,
        sweep_chart=lines({guest: [(t - time.time(), s * 1000) for t, s in ctx.live.guest(guest).times]}, "sweep time (ms)"),
    )


@router.get("/alerts", response_class=HTMLResponse)
async def alert_queue(
    request: Request,
    severity: str = "",
    detector: str = "",
    guest: str = "",
    status: str = "open",
    hours: float = 0,
    page_no: Annotated[int, Query(alias="page", ge=0)] = 0,
    host: str = "",
) -> HTMLResponse:
    who = await person(request)
    ctx = ctx_of(request)
    q = AlertQuery(
        [severity] if severity in SEVERITIES else None,
        detector or None,
        guest or None,
        host or None,
        [status] if status in STATUSES else None,
        time.time() - hours * 3600 if hours > 0 else None,
        None,
        50,
        max(0, page_no) * 50,
    )
    rows, total = ctx.alerts.page(q)
    from urllib.parse import urlencode

    kept = {k: v for k, v in request.query_params.items() if k != "page"}
    newer = f"/alerts?{urlencode({**kept, 'page': page_no - 1})}" if page_no > 0 else None
    older = f"/alerts?{urlencode({**kept, 'page': page_no + 1})}" if (page_no + 1) * 50 < total else None
    return page(
        request,
        "alerts.html",
        who,
        rows=rows,
        total=total,
        newer=newer,
        older=older,
        filters={"severity": severity, "detector": detector, "guest": guest, "host": host, "status": status, "hours": hours},
        hosts=ctx.alerts.hosts(),
        severities=SEVERITIES,
        statuses=STATUSES,
        detectors=ctx.alerts.detectors(),
        guests=[s.target for s in ctx.watcher.states],
        users=[u["name"] for u in ctx.db.users()],
    )


@router.post("/alerts/triage")
async def alert_triage(request: Request) -> Response:
    who = await person(request, "analyst")
    form = await request.form()
    ids = [int(v) for v in form.getlist("id") if isinstance(v, str) and v.isdigit()]
    try:
        body = TriageRequest(ids=ids, action=form.get("action"), reason=form.get("reason"), assignee=form.get("assignee") or None)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise HTTPException(
            422, "choose findings, an action and a reason (3 characters or more): " + exc.errors()[0]["msg"]
        ) from None
    apply_triage(ctx_of(request), body, who)
    target = form.get("next")
    local = isinstance(target, str) and target.startswith("/") and not target.startswith("//") and "\\" not in target
    return back(target if local and isinstance(target, str) else "/alerts")  # never to another site


@router.post("/alerts/suppress")
async def alert_suppress(
    request: Request,
    detector: Annotated[str, Form()],
    guest: Annotated[str, Form()],
    days: Annotated[float, Form()],
    reason: Annotated[str, Form()],
) -> Response:
    who = await person(request, "analyst")
    if len(reason.strip()) < 3:
        raise HTTPException(422, "a suppression needs a reason")
    try:
        suppress(ctx_of(request).db, detector or "*", guest or "*", days, who.name, reason.strip())
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return back("/alerts")


@router.get("/findings/{finding_id}", response_class=HTMLResponse)
async def finding_page(request: Request, finding_id: int) -> HTMLResponse:
    who = await person(request)
    ctx = ctx_of(request)
    row = ctx.alerts.get(finding_id)
    if row is None:
        raise HTTPException(404, f"no finding {finding_id}")
    process = None
    pid = row["evidence"].get("pid")
    if isinstance(pid, int):
        try:
            procs = await _view(ctx, row["target"], "processes")
            process = next((p for p in procs["records"] if p.get("pid") == pid), None)
        except HTTPException:
            process = None
    audit = ctx.db.audit_log(50, f"finding:{finding_id}")
    return page(
        request,
        "finding.html",
        who,
        f=row,
        x=explain(row),
        process=process,
        audit=audit,
        users=[u["name"] for u in ctx.db.users()],
    )


@router.get("/live", response_class=HTMLResponse)
async def live_page(request: Request) -> HTMLResponse:
    who = await person(request)
    return page(request, "live.html", who, recent=list(ctx_of(request).live.recent)[-50:][::-1])


@router.get("/policy", response_class=HTMLResponse)
async def policy_page(request: Request) -> HTMLResponse:
    who = await person(request)
    ctx = ctx_of(request)
    return page(
        request,
        "policy.html",
        who,
        policy=policy_in_force(ctx),
        interval=ctx.watcher.interval,
        detectors=list(ctx.watcher.compiled.enabled),
        log=list(ctx.live.policy_log),
    )


@router.get("/admin", response_class=HTMLResponse)
async def admin_page(request: Request, new_token: str | None = None) -> HTMLResponse:
    who = await person(request, "admin")
    ctx = ctx_of(request)
    secret = request.cookies.get("vms_new_token")  # shown once: the cookie is dropped with this answer
    response = page(
        request,
        "admin.html",
        who,
        users=ctx.db.users(),
        tokens=ctx.db.tokens(),
        roles=ROLES,
        audit=ctx.db.audit_log(100),
        secret=secret,
    )
    response.delete_cookie("vms_new_token", path="/admin")
    return response


@router.post("/admin/users")
async def admin_add_user(
    request: Request, name: Annotated[str, Form()], role: Annotated[str, Form()], password: Annotated[str, Form()]
) -> Response:
    who = await person(request, "admin")
    try:
        ctx_of(request).db.add_user(name, role, password, by=who.name, reason=FROM_DASHBOARD)
    except AccountError as exc:
        raise HTTPException(422, str(exc)) from None
    return back("/admin")


@router.post("/admin/users/{name}/remove")
async def admin_remove_user(request: Request, name: str) -> Response:
    who = await person(request, "admin")
    remove_user_audited(ctx_of(request), name, who, FROM_DASHBOARD)
    return back("/admin")


@router.post("/admin/tokens")
async def admin_new_token(request: Request, user: Annotated[str, Form()], days: Annotated[str, Form()] = "") -> Response:
    who = await person(request, "admin")
    try:
        _, secret = ctx_of(request).db.new_token(user, float(days) if days.strip() else None, by=who.name, reason=FROM_DASHBOARD)
    except (AccountError, ValueError) as exc:
        raise HTTPException(422, str(exc)) from None
    response = back("/admin")
    response.set_cookie(
        "vms_new_token",
        secret,
        httponly=True,
        samesite="strict",
        secure=ctx_of(request).secure_cookies,
        path="/admin",
        max_age=60,
    )
    return response


@router.post("/admin/tokens/{token_id}/revoke")
async def admin_revoke_token(request: Request, token_id: str) -> Response:
    who = await person(request, "admin")
    try:
        ctx_of(request).db.revoke_token(token_id, by=who.name, reason=FROM_DASHBOARD)
    except AccountError as exc:
        raise HTTPException(404, str(exc)) from None
    return back("/admin")
