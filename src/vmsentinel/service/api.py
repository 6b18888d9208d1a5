"""The HTTP API: the same data as the CLI's ``--json``, for scripts and the dashboard. Every route
needs a token or a session; reading needs the ``viewer`` role, triage and responses ``analyst``,
users, tokens and the audit log ``admin``. Every change goes into the audit log."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field

from vmsentinel.service.accounts import ROLES, AccountError, Principal
from vmsentinel.service.alerts import ACTIONS, SEVERITIES, STATUSES, suppress, triage
from vmsentinel.service.alerts import Query as AlertQuery
from vmsentinel.service.alerts import end_suppression as end_suppression_of
from vmsentinel.service.context import GUEST_TIMEOUT, RESPONSE_TIMEOUT, ServiceContext
from vmsentinel.service.security import identify
from vmsentinel.watch.snapshot_views import SNAPSHOT_VIEWS

#: what a person may ask the hypervisor to do from the service
RESPONSES = ("pause", "resume", "dump", "cut_network")
#: seconds between keep-alive comments on an event stream
KEEPALIVE = 15.0


def ctx_of(request: Request) -> ServiceContext:
    return request.app.state.ctx  # type: ignore[no-any-return]


async def principal(request: Request) -> Principal:
    who = await identify(request, ctx_of(request).db)
    if who is None:
        raise HTTPException(401, "sign in, or send an API token as 'Authorization: Bearer TOKEN'", {"WWW-Authenticate": "Bearer"})
    return who


def role(needed: str) -> Any:
    async def check(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if not who.may(needed):
            raise HTTPException(403, f"this needs the {needed} role; {who.name} is {who.role}")
        return who

    return Depends(check)


Viewer = Annotated[Principal, role("viewer")]
Analyst = Annotated[Principal, role("analyst")]
Admin = Annotated[Principal, role("admin")]

router = APIRouter(prefix="/api")


def policy_in_force(ctx: ServiceContext) -> dict[str, Any]:
    """The policy as loaded at start, updated by the last reload that verified."""
    facts = dict(ctx.policy)
    if ctx.live.policy_loaded is not None:
        facts["loaded"], facts["description"] = ctx.live.policy_loaded
    return facts


def guest_list(ctx: ServiceContext) -> list[dict[str, Any]]:
    """Every guest of the watch with its health and open findings by severity."""
    counts = ctx.alerts.counts()
    out = []
    states: list[Any] = list(ctx.watcher.states)
    for state in states:
        health = ctx.live.guest(state.target).to_json()
        health.update(
            host=getattr(state, "host", ctx.host),
            interval=state.interval,
            baselined=state.baselined,
            ended=state.ended,
            open_findings=counts.get(state.target, {}),
        )
        out.append(health)
    return out


def _known(ctx: ServiceContext, guest: str) -> None:
    if not any(s.target == guest for s in ctx.watcher.states):
        raise HTTPException(404, f"no guest {guest!r} in this watch")


@router.get("/guests", summary="Every watched guest with its health")
def guests(request: Request, who: Viewer) -> list[dict[str, Any]]:
    return guest_list(ctx_of(request))


async def _view(ctx: ServiceContext, guest: str, name: str) -> dict[str, Any]:
    _known(ctx, guest)
    future = ctx.watcher.view(guest, name)
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), GUEST_TIMEOUT)
    except TimeoutError:
        raise HTTPException(504, f"guest {guest} did not answer within {GUEST_TIMEOUT:g} s (a long or hung sweep)") from None
    except ValueError as exc:
        raise HTTPException(404, str(exc)) from None
    except Exception as exc:  # its worker died or the guest failed: say so, do not fail the service
        raise HTTPException(503, f"guest {guest}: {exc}") from None


class ResponseRequest(BaseModel):
    action: Literal["pause", "resume", "dump", "cut_network"]
    reason: str = Field(min_length=3, max_length=2000)


async def carry_out(ctx: ServiceContext, guest: str, action: str, reason: str, who: Principal) -> list[dict[str, Any]]:
    """A response a person asked for, recorded in the audit log before and after."""
    _known(ctx, guest)
    ctx.db.audit(who.name, f"response.{action}", guest, "requested", reason)
    key = f"manual-{int(time.time())}-{who.name}"
    loop = asyncio.get_running_loop()
    watcher = ctx.watcher
    if getattr(watcher, "remote", False):  # a fleet's host is told who asked and why: its record says so
        run = functools.partial(watcher.act, guest, [action], key, by=who.name, reason=reason)  # type: ignore[call-arg]
    else:
        run = functools.partial(watcher.act, guest, [action], key)
    try:
        records = await asyncio.wait_for(loop.run_in_executor(None, run), RESPONSE_TIMEOUT)
    except TimeoutError:
        ctx.db.audit(who.name, f"response.{action}", guest, "no answer in time", reason)
        raise HTTPException(504, f"{action} of {guest} did not finish within {RESPONSE_TIMEOUT:g} s") from None
    out = [{"action": r.action, "ok": r.ok, "detail": r.detail, "time": r.time} for r in records]
    ctx.db.audit(
        who.name, f"response.{action}", guest, "; ".join(f"{'ok' if r.ok else 'failed'}: {r.detail}" for r in records), reason
    )
    return out


@router.post("/guests/{guest:path}/responses", summary="Pause, resume, dump or cut the network of a guest")
async def guest_response(request: Request, guest: str, body: ResponseRequest, who: Analyst) -> list[dict[str, Any]]:
    return await carry_out(ctx_of(request), guest, body.action, body.reason, who)


@router.get(
    "/guests/{guest:path}",
    summary="One guest (kernel, profile, paging, access path, health), or /api/guests/{guest}/{view}: a view of its"
    " latest snapshot (processes, modules, syscalls, hooks, idt, sockets)",
)
async def guest_detail(request: Request, guest: str, who: Viewer) -> dict[str, Any]:
    ctx = ctx_of(request)
    known = {s.target for s in ctx.watcher.states}
    head, _, view = guest.rpartition("/")
    if guest not in known and head in known:  # GUEST/VIEW (a guest's own name may hold slashes)
        if view not in SNAPSHOT_VIEWS:
            raise HTTPException(404, f"no view {view!r}: one of {', '.join(SNAPSHOT_VIEWS)}")
        return await _view(ctx, head, view)
    about = await _view(ctx, guest, "about")
    return {**about, "health": ctx.live.guest(guest).to_json(), "responses": ctx.alerts.responses(guest, 20)}


def alert_query(
    severity: Annotated[list[str] | None, Query()] = None,
    detector: str | None = None,
    guest: str | None = None,
    status: Annotated[list[str] | None, Query()] = None,
    since: float | None = None,
    until: float | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
    host: str | None = None,
) -> AlertQuery:
    for value, allowed, what in ((severity, SEVERITIES, "severity"), (status, STATUSES, "status")):
        bad = [v for v in value or [] if v not in allowed]
        if bad:
            raise HTTPException(422, f"{what} {bad[0]!r}: one of {', '.join(allowed)}")
    return AlertQuery(severity, detector, guest, host, status, since, until, limit, offset)


@router.get("/findings", summary="Findings, newest first, filtered by severity, detector, host, guest, status and time")
def findings(request: Request, who: Viewer, q: Annotated[AlertQuery, Depends(alert_query)]) -> dict[str, Any]:
    rows, total = ctx_of(request).alerts.page(q)
    return {"total": total, "offset": q.offset, "findings": rows}


@router.get("/findings/{finding_id}", summary="One finding with its evidence and triage state")
def finding(request: Request, finding_id: int, who: Viewer) -> dict[str, Any]:
    row = ctx_of(request).alerts.get(finding_id)
    if row is None:
        raise HTTPException(404, f"no finding {finding_id}")
    return row


class TriageRequest(BaseModel):
    ids: list[int] = Field(min_length=1, max_length=10_000)
    action: Literal["acknowledge", "assign", "close", "reopen"]
    reason: str = Field(min_length=3, max_length=2000)
    assignee: str | None = None


def apply_triage(ctx: ServiceContext, body: TriageRequest, who: Principal) -> dict[str, Any]:
    known = ctx.alerts.exists(body.ids)
    missing = sorted(set(body.ids) - set(known))
    if missing:
        raise HTTPException(404, f"no finding {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if body.action == "assign" and (not body.assignee or ctx.db.role_of(body.assignee) is None):
        raise HTTPException(422, f"assign to whom? {body.assignee!r} is no user")
    assert body.action in ACTIONS
    triage(ctx.db, known, body.action, who.name, body.reason, body.assignee)
    return {"changed": len(known)}


@router.post("/findings/triage", summary="Acknowledge, assign, close or reopen findings (bulk)")
def triage_findings(request: Request, body: TriageRequest, who: Analyst) -> dict[str, Any]:
    return apply_triage(ctx_of(request), body, who)


class SuppressionRequest(BaseModel):
    detector: str = Field(min_length=1, max_length=200, description="a detector name, or * for any")
    guest: str = Field(default="*", min_length=1, max_length=500, description="a guest, or * for any")
    days: float = Field(gt=0, le=365)
    reason: str = Field(min_length=3, max_length=2000)


@router.post("/suppressions", summary="Hide findings of a detector on a guest for a while (they are still stored)")
def add_suppression(request: Request, body: SuppressionRequest, who: Analyst) -> dict[str, Any]:
    return {"id": suppress(ctx_of(request).db, body.detector, body.guest, body.days, who.name, body.reason)}


@router.get("/suppressions", summary="Suppressions in force")
def suppressions(request: Request, who: Viewer) -> list[dict[str, Any]]:
    return ctx_of(request).db.rows("SELECT * FROM suppressions WHERE expires > ? ORDER BY id DESC", (time.time(),))


@router.delete("/suppressions/{sid}", summary="End a suppression now")
def end_suppression(request: Request, sid: int, who: Analyst, reason: Annotated[str, Query(min_length=3)]) -> dict[str, Any]:
    if not end_suppression_of(ctx_of(request).db, sid, who.name, reason):
        raise HTTPException(404, f"no suppression {sid} in force")
    return {"ended": sid}


@router.get("/events", summary="Live events as server-sent events (text/event-stream)")
async def events(request: Request, who: Viewer) -> StreamingResponse:
    live = ctx_of(request).live

    async def stream() -> AsyncIterator[str]:
        queue = live.subscribe()
        try:
            yield "retry: 2000\n\n"
            while True:
                try:
                    data = await asyncio.wait_for(queue.get(), KEEPALIVE)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield ": keep-alive\n\n"
                    continue
                if data is None:
                    return  # too far behind: the browser reconnects
                yield f"event: {data['kind']}\ndata: {json.dumps(data, default=str)}\n\n"
        finally:
            live.unsubscribe(queue)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )


@router.get("/policy", summary="The active policy: source, signer, when it loaded, reloads refused")
def policy(request: Request, who: Viewer) -> dict[str, Any]:
    ctx = ctx_of(request)
    return {
        **policy_in_force(ctx),
        "interval": ctx.watcher.interval,
        "detectors": list(ctx.watcher.compiled.enabled),
        "log": list(ctx.live.policy_log),
    }


@router.get("/audit", summary="The audit log, newest first")
def audit(request: Request, who: Admin, limit: Annotated[int, Query(ge=1, le=5000)] = 200) -> list[dict[str, Any]]:
    return ctx_of(request).db.audit_log(limit)


class UserRequest(BaseModel):
    name: str
    role: Literal["viewer", "analyst", "admin"]
    password: str = Field(min_length=12, max_length=1024)
    reason: str = Field(default="", max_length=2000)


@router.get("/users", summary="Users and their roles")
def users(request: Request, who: Admin) -> list[dict[str, Any]]:
    return ctx_of(request).db.users()


@router.post("/users", summary="Add a user", status_code=201)
def add_user(request: Request, body: UserRequest, who: Admin) -> dict[str, Any]:
    try:
        ctx_of(request).db.add_user(body.name, body.role, body.password, by=who.name, reason=body.reason)
    except AccountError as exc:
        raise HTTPException(422, str(exc)) from None
    return {"name": body.name, "role": body.role}


def remove_user_audited(ctx: ServiceContext, name: str, who: Principal, reason: str) -> None:
    """Remove a user (not oneself: an admin locked out by mistake is a lost service) and say who did."""
    if name == who.name:
        raise HTTPException(422, "you cannot remove yourself")
    try:
        ctx.db.remove_user(name, by=who.name, reason=reason)
    except AccountError as exc:
        raise HTTPException(404, str(exc)) from None


@router.delete("/users/{name}", summary="Remove a user (and their tokens and sessions)")
def remove_user(request: Request, name: str, who: Admin, reason: str = "") -> dict[str, Any]:
    remove_user_audited(ctx_of(request), name, who, reason)
    return {"removed": name}


class TokenRequest(BaseModel):
    user: str | None = None
    expires_days: float | None = Field(default=None, gt=0, le=3650)
    reason: str = Field(default="", max_length=2000)


@router.get("/tokens", summary="API tokens (an admin sees all, others their own); secrets are never shown again")
def tokens(request: Request, who: Viewer) -> list[dict[str, Any]]:
    return ctx_of(request).db.tokens(None if who.may("admin") else who.name)


@router.post("/tokens", summary="A new API token, shown once", status_code=201)
def new_token(request: Request, body: TokenRequest, who: Viewer) -> dict[str, Any]:
    user = body.user or who.name
    if user != who.name and not who.may("admin"):
        raise HTTPException(403, "only an admin makes tokens for someone else")
    try:
        token_id, secret = ctx_of(request).db.new_token(user, body.expires_days, by=who.name, reason=body.reason)
    except AccountError as exc:
        raise HTTPException(422, str(exc)) from None
    return {"id": token_id, "user": user, "token": secret}


@router.delete("/tokens/{token_id}", summary="Revoke a token")
def revoke_token(request: Request, token_id: str, who: Viewer, reason: str = "") -> dict[str, Any]:
    try:
        ctx_of(request).db.revoke_token(token_id, None if who.may("admin") else who.name, by=who.name, reason=reason)
    except AccountError as exc:
        raise HTTPException(404, str(exc)) from None
    return {"revoked": token_id}


health_router = APIRouter()


@health_router.get("/healthz", summary="Liveness: the service answers and its watch runs (no authentication)")
def healthz(request: Request) -> dict[str, Any]:
    ctx = ctx_of(request)
    return {"status": "ok", "guests": len(ctx.watcher.states), "uptime": round(time.time() - ctx.started, 1)}


@router.get("/hosts", summary="The fleet's hosts (serve --fleet): last heartbeat, events kept, duplicates and refusals")
def hosts(request: Request, who: Viewer) -> dict[str, Any]:
    ctx = ctx_of(request)
    hub = getattr(ctx.watcher, "hub", None)
    if hub is None:
        return {"fleet": False, "hosts": [{"host": ctx.host, "guests": len(ctx.watcher.states)}]}
    with hub._lock:
        states = [h.to_json() for h in hub.hosts.values()]
    stats = hub.stats
    return {
        "fleet": True,
        "bus": {"url": hub.options.url, "connected": hub.connected, "last_error": hub.last_error},
        "received": stats.received,
        "duplicates": stats.duplicates,
        "refused": stats.refused,
        "hosts": sorted(states, key=lambda h: h["host"]),
    }


@health_router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics of the watch")
def metrics(request: Request, who: Viewer) -> PlainTextResponse:
    return PlainTextResponse(ctx_of(request).metrics.text(), media_type="text/plain; version=0.0.4")


__all__ = ["RESPONSES", "ROLES", "guest_list", "health_router", "router"]
