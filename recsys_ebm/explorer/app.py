"""The temperature explorer's web app: a FastAPI backend with a JSON API behind one plain
HTML + JavaScript page shipped in the package (no build step, nothing fetched from elsewhere),
served by uvicorn on 127.0.0.1 only.

Endpoints: ``GET /`` the page; ``GET /api/info``, ``/api/users``, ``/api/items``; ``POST
/api/recommend`` with ``{"user": ...}`` or ``{"history": [...]}`` plus ``k``, ``temperature``,
``seed``, and for a taste mix of two trained users ``{"user": u, "mix_with": v, "lam": λ}`` (see :meth:`recsys_ebm.explorer.core.Explorer.explore`). Bad requests answer 400
with ``{"detail": message}``.
"""

from __future__ import annotations

import logging
import socket
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware

from recsys_ebm.explorer.core import Explorer

logger = logging.getLogger(__name__)

#: The only address the explorer listens on: it has no authentication.
LOCAL_HOST = "127.0.0.1"
#: Everything the page loads comes from the app itself.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class RecommendBody(BaseModel):
    """A request of the page: one trained user, one new user's history, or the taste mix
    E_λ = (1 − λ) E_user + λ E_mix_with of two trained users."""

    user: str | None = None
    history: list[str] | None = None
    ratings: list[float] | None = None
    mix_with: str | None = None
    lam: float = Field(0.0, ge=0.0, le=1.0)
    k: int = Field(10, ge=1, le=1000)
    temperature: float = Field(0.0, ge=0.0)
    seed: int = Field(0, ge=0)


def check_host(host: str) -> str:
    """``host`` when it is 127.0.0.1; ``ValueError`` otherwise (the app has no authentication)."""
    if host != LOCAL_HOST:
        raise ValueError(f"--host {host!r}: the explorer listens on {LOCAL_HOST} only (it has no "
                         "authentication); from another machine, reach it through an SSH tunnel "
                         f"(ssh -L PORT:{LOCAL_HOST}:PORT)")
    return host


def create_app(explorer: Explorer) -> FastAPI:
    """The FastAPI app of ``explorer`` (no OpenAPI pages: they would load scripts from a CDN)."""
    app = FastAPI(title="recsys-ebm temperature explorer", docs_url=None, redoc_url=None,
                  openapi_url=None)
    # a page on another site cannot reach the app through a DNS name pointed at 127.0.0.1
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=[LOCAL_HOST, "localhost"])
    app.mount("/static", StaticFiles(packages=[("recsys_ebm.explorer", "static")]), name="static")
    page = resources.files("recsys_ebm.explorer").joinpath("static", "index.html").read_text("utf-8")

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/info")
    def info() -> dict:
        return explorer.info()

    @app.get("/api/users")
    def users() -> dict:
        return {"users": explorer.users()}

    @app.get("/api/items")
    def items() -> dict:
        return {"items": explorer.items()}

    @app.post("/api/recommend")
    def recommend(body: RecommendBody):
        try:
            return explorer.explore(**body.model_dump())
        except (ValueError, KeyError, IndexError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            return JSONResponse({"detail": str(message)}, status_code=400)

    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; ``ValueError`` says why it cannot be had."""
    check_host(host)
    if not 1 <= port <= 65535:
        raise ValueError(f"--port {port}: must be 1..65535")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValueError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror}); "
                         "choose another port") from None
    return sock


def serve(explorer: Explorer, sock: socket.socket, *, log_level: str = "warning") -> None:
    """Serve ``explorer`` on a socket from :func:`bind` until interrupted (Ctrl-C, SIGTERM)."""
    import uvicorn

    config = uvicorn.Config(create_app(explorer), log_level=log_level.lower(), access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
