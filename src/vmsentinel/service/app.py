"""The service's web application: the API (``/api``, OpenAPI at ``/api/openapi.json``), health and
metrics, and the dashboard, on one FastAPI app built around a :class:`ServiceContext`."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from vmsentinel.service import api, pages
from vmsentinel.service.context import ServiceContext
from vmsentinel.version import __version__

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self';"
        " frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def create_app(ctx: ServiceContext) -> FastAPI:
    app = FastAPI(
        title="vmsentinel",
        version=__version__,
        description="A security sentinel that watches virtual machines from outside. Authenticate with "
        "'Authorization: Bearer TOKEN' (vmsentinel token new --user NAME).",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.include_router(api.health_router)
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=str(Path(__file__).parent / "static")), name="static")

    @app.middleware("http")
    async def headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        response: Response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if not request.url.path.startswith("/static"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(pages.SignIn)
    async def sign_in(request: Request, exc: pages.SignIn) -> Response:
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if _wants_json(request):
            return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
        return pages.templates.TemplateResponse(
            request, "error.html", {"who": None, "status": exc.status_code, "detail": exc.detail}, status_code=exc.status_code
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        if _wants_json(request):
            return JSONResponse({"detail": problems}, 422)
        return pages.templates.TemplateResponse(
            request, "error.html", {"who": None, "status": 422, "detail": "; ".join(problems)}, status_code=422
        )

    return app


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith(("/api", "/metrics", "/healthz")) or "application/json" in request.headers.get(
        "accept", ""
    )


__all__ = ["HTMLResponse", "create_app"]
