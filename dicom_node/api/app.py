"""The FastAPI application of the amend dialog: JSON API, server-sent events, reader page.

``/`` serves the reader page and ``/static/`` its script and style; every ``/api/`` route
except ``/api/openapi.json`` needs ``Authorization: Bearer <token>`` of a user in
``[api.users]`` (401 otherwise). The routes (see ``docs/amend_loop.md``):

=======  =============================================  ==========================================
GET      /api/me                                        the authenticated user
GET      /api/studies?drafted=&limit=                   worklist with draft status
GET      /api/events                                    live updates (SSE; see ``_events``)
PUT      /api/studies/{uid}/priority                    mark a study urgent or normal
GET      /api/studies/{uid}                             report, history, dialog, proposals, images
GET      /api/studies/{uid}/images/{id}                 window defaults of an image
GET      /api/studies/{uid}/images/{id}.png             the image (?center=&width=&size=)
GET      /api/studies/{uid}/images/{id}/pixels          full-resolution pixels for the viewer
GET      /api/studies/{uid}/priors                      the patient's earlier studies, images
POST     /api/studies/{uid}/messages                    question or request (?stream=true: SSE)
POST     /api/studies/{uid}/proposals/{id}/accept       new version from a proposal (201)
POST     /api/studies/{uid}/proposals/{id}/reject       close a proposal
PUT      /api/studies/{uid}/report                      direct edit (201)
POST     /api/studies/{uid}/signoff                     verified final version (201)
POST     /api/studies/{uid}/addenda                     addendum to the signed report (201)
=======  =============================================  ==========================================

Model work runs in the service's executor, database and SR work in the server's thread
pool; the event loop only moves bytes. Log lines name the route template, never the path
(it holds a Study Instance UID), and errors are logged by type and place only: exception
messages of the database driver may quote the parameters, i.e. report text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from dicom_node.api._auth import Authenticator, Reader
from dicom_node.api._events import LiveEvents
from dicom_node.api._images import DEFAULT_RENDER_SIDE, MAX_RENDER_SIDE
from dicom_node.api._ratelimit import FailedTokenLimiter
from dicom_node.api._schemas import (
    AddendumRequest,
    EditRequest,
    ImageInfo,
    MessageRequest,
    PriorityOut,
    PriorityRequest,
    PriorStudyOut,
    ProposalOut,
    SignOffRequest,
    StudyDetail,
    StudySummary,
    TurnResult,
    UserOut,
    VersionResult,
)
from dicom_node.api.dialog import DialogService, PreparedTurn
from dicom_node.api.errors import (
    ApiError,
    AuthenticationError,
    FindingsDisagreeConflict,
    StaleVersionConflict,
    TooManyFailuresError,
)

logger = logging.getLogger(__name__)

#: The reader page's files.
STATIC_DIR = Path(__file__).with_name("static")
#: Headers of every answer.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
        "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'"
    ),
}

#: Headers of ``.../images/{id}/pixels`` that describe its body.
PIXEL_HEADERS = (
    "X-Rows", "X-Columns", "X-Pixel-Format", "X-Photometric-Interpretation",
    "X-Window-Center", "X-Window-Width",
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{Path(last.filename).name}:{last.lineno}"


class _Guard:
    """Outer ASGI middleware: body size limit, and 500 answers that log no PHI.

    The body is read here, before the app sees the request, and handed on in one piece: a
    body over ``api.max_body_bytes`` is answered 413 whether its Content-Length says so or
    it arrives in chunks (reading stops at the limit). An unhandled error is logged by type
    and place only, and answered 500.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_large = f"the request body is larger than {self.limit} bytes"
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._answer(send, 413, too_large)
            return
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before its body was complete
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.limit:
                await self._answer(send, 413, too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body_given = False

        async def replay_receive() -> Message:
            nonlocal body_given
            if not body_given:
                body_given = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        try:
            await self.app(scope, replay_receive, tracking_send)
        except Exception as exc:  # noqa: BLE001 - answered 500 and logged without PHI
            route = getattr(scope.get("route"), "path", "(unrouted)")
            logger.error(
                "%s %s failed: %s at %s", scope.get("method"), route, type(exc).__name__,
                _where(exc),
            )
            if not started:
                await self._answer(send, 500, "internal error; see the node's log")

    @staticmethod
    async def _answer(send: Send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _sse(event: str, data: object) -> str:
    """One server-sent event with a JSON payload."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _stream_turn(service: DialogService, turn: PreparedTurn) -> StreamingResponse:
    """Run a dialog turn in the model executor and stream it as server-sent events.

    Events: ``start`` (kind), ``token`` (``{"text"}``, as generated), then ``done`` (the
    :class:`TurnResult`) or ``error`` (``{"status", "detail"}``). The turn runs to its end
    and is stored even when the client goes away.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()

    def emit(event: str, data: object) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (event, data))
        except RuntimeError:
            # The server's loop has closed (shutdown): nobody is listening any more.
            return

    def work() -> None:
        try:
            result = service.run_turn(turn, lambda text: emit("token", {"text": text}))
        except ApiError as exc:
            emit("error", {"status": exc.status_code, "detail": str(exc)})
            return
        except Exception as exc:  # noqa: BLE001 - reported to the client, logged without PHI
            logger.error("dialog turn failed: %s at %s", type(exc).__name__, _where(exc))
            emit("error", {"status": 500, "detail": "internal error; see the node's log"})
            return
        emit("done", result.model_dump(mode="json"))

    loop.run_in_executor(service.model_executor, work)

    async def events() -> AsyncIterator[str]:
        yield _sse("start", {"kind": turn.kind.value, "based_on_version": turn.based_on_version})
        while True:
            event, data = await queue.get()
            yield _sse(event, data)
            if event != "token":
                return

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _current_reader(request: Request) -> Reader:
    """The reader the request's bearer token belongs to.

    401 for a missing or invalid token; 429 for a client that presented
    ``api.auth_failure_limit`` invalid tokens within ``api.auth_failure_window_s`` (its
    token is then not checked). A valid token is never delayed and never counted.
    """
    authenticator: Authenticator = request.app.state.authenticator
    limiter: FailedTokenLimiter = request.app.state.token_limiter
    host = request.client.host if request.client is not None else None
    limiter.check(host)
    authorization = request.headers.get("authorization")
    try:
        return authenticator.reader(authorization)
    except AuthenticationError:
        if authorization:  # a request without a token guesses nothing
            limiter.record_failure(host)
        raise


#: Route parameter of the authenticated reader.
ReaderDep = Annotated[Reader, Depends(_current_reader)]


def create_app(service: DialogService) -> FastAPI:
    """Build the dialog API and reader page around a :class:`DialogService`.

    Parameters
    ----------
    service
        The dialog of the node's studies; the caller closes it after the app stops.

    Returns
    -------
    fastapi.FastAPI
        The ASGI application (served by :class:`~dicom_node.api.ApiServer`).
    """
    settings = service.settings
    authenticator = Authenticator(settings.api)
    app = FastAPI(
        title="cxr-dicom-node amend dialog",
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.service = service
    live = LiveEvents(service.db)
    app.state.live = live
    app.state.authenticator = authenticator
    app.state.token_limiter = FailedTokenLimiter(
        settings.api.auth_failure_limit, settings.api.auth_failure_window_s
    )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        content: dict[str, object] = {"detail": str(exc)}
        headers = None
        if isinstance(exc, AuthenticationError):
            headers = {"WWW-Authenticate": "Bearer"}
        elif isinstance(exc, TooManyFailuresError):
            headers = {"Retry-After": str(exc.retry_after)}
        if headers is not None:
            route = getattr(request.scope.get("route"), "path", "(unrouted)")
            logger.warning("%s %s refused: %s", request.method, route, exc)
        if isinstance(exc, StaleVersionConflict):
            content["latest_version"] = exc.latest
        if isinstance(exc, FindingsDisagreeConflict):
            content["disagreements"] = exc.labels
        return JSONResponse(content, status_code=exc.status_code, headers=headers)

    @app.middleware("http")
    async def _headers_and_log(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if request.url.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        route = getattr(request.scope.get("route"), "path", "(unrouted)")
        logger.info(
            "%s %s -> %d in %.0f ms", request.method, route, response.status_code,
            (time.perf_counter() - started) * 1000,
        )
        return response

    if settings.api.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.api.cors_origins),
            allow_methods=["GET", "POST", "PUT"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=list(PIXEL_HEADERS),
        )
    app.add_middleware(_Guard, max_body_bytes=settings.api.max_body_bytes)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    api = APIRouter(prefix="/api")

    @api.get("/me")
    def me(reader: ReaderDep) -> UserOut:
        """The authenticated user."""
        return UserOut(
            name=reader.name,
            display_name=reader.display_name,
            organization=reader.organization,
            may_sign=reader.may_sign,
        )

    @api.get("/studies")
    def studies(
        reader: ReaderDep,
        drafted: bool = False,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[StudySummary]:
        """Studies, newest first, with their draft status."""
        return service.list_studies(drafted_only=drafted, limit=limit)

    @api.get("/events")
    def events(reader: ReaderDep) -> StreamingResponse:
        """Live updates: ``worklist`` and ``study`` events as the node's state changes."""
        return StreamingResponse(
            live.stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @api.put("/studies/{study_uid}/priority")
    def set_priority(reader: ReaderDep, study_uid: str, body: PriorityRequest) -> PriorityOut:
        """Mark the study urgent (it heads the worklist) or normal; audited."""
        result = service.set_urgent(reader, study_uid, body.urgent)
        live.study_changed([study_uid])
        return result

    @api.get("/studies/{study_uid}")
    def study(reader: ReaderDep, study_uid: str) -> StudyDetail:
        """One study: current report, versions with diffs, dialog, proposals, images."""
        return service.study_detail(reader, study_uid)

    @api.get("/studies/{study_uid}/priors")
    def priors(reader: ReaderDep, study_uid: str) -> list[PriorStudyOut]:
        """Earlier studies of the same patient on this node, with their images."""
        return service.priors(study_uid)

    @api.get("/studies/{study_uid}/images/{instance_id}.png")
    def image_png(
        reader: ReaderDep,
        study_uid: str,
        instance_id: int,
        center: float | None = None,
        width: Annotated[float | None, Query(ge=1)] = None,
        size: Annotated[int, Query(ge=16, le=MAX_RENDER_SIDE)] = DEFAULT_RENDER_SIDE,
    ) -> Response:
        """The image as PNG with the given window (default: the file's)."""
        path = service.image_path(study_uid, instance_id)
        png = service.images.render_png(path, center, width, size)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    @api.get(
        "/studies/{study_uid}/images/{instance_id}/pixels",
        response_class=Response,
        responses={200: {"content": {"application/octet-stream": {}},
                         "description": "rows x columns values, row by row, little-endian"}},
    )
    def image_pixels(reader: ReaderDep, study_uid: str, instance_id: int) -> Response:
        """The first frame's full-resolution pixels after the Modality LUT, for the viewer.

        The body holds ``X-Rows`` x ``X-Columns`` values in ``X-Pixel-Format`` (uint8,
        uint16, int16 or float32); ``X-Photometric-Interpretation`` (MONOCHROME1 shows the
        lowest value white) and the default window ``X-Window-Center``/``X-Window-Width``
        (the file's first, else the 0.5th to 99.5th percentile) come as headers.
        """
        frame = service.images.frame(service.image_path(study_uid, instance_id))
        return Response(
            frame.data,
            media_type="application/octet-stream",
            headers={
                "Cache-Control": "no-store",
                "X-Rows": str(frame.rows),
                "X-Columns": str(frame.columns),
                "X-Pixel-Format": frame.pixel_format,
                "X-Photometric-Interpretation": frame.photometric,
                "X-Window-Center": repr(frame.default_center),
                "X-Window-Width": repr(frame.default_width),
            },
        )

    @api.get("/studies/{study_uid}/images/{instance_id}")
    def image_info(reader: ReaderDep, study_uid: str, instance_id: int) -> ImageInfo:
        """Window defaults and value range of an image (for API clients)."""
        return service.image_info(study_uid, instance_id)

    @api.post("/studies/{study_uid}/messages", response_model=TurnResult)
    async def post_message(
        reader: ReaderDep,
        study_uid: str,
        body: MessageRequest,
        request: Request,
        stream: bool = False,
    ) -> Response | TurnResult:
        """Ask a question or request a revision; ``?stream=true`` answers with SSE."""
        turn = await run_in_threadpool(
            service.prepare_turn, reader, study_uid, body.text, body.intent
        )
        wants_events = stream or "text/event-stream" in request.headers.get("accept", "")
        if wants_events:
            return _stream_turn(service, turn)
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(service.model_executor, service.run_turn, turn)
        live.study_changed([study_uid])
        return result

    @api.post("/studies/{study_uid}/proposals/{proposal_id}/accept", status_code=201)
    def accept(reader: ReaderDep, study_uid: str, proposal_id: int) -> VersionResult:
        """Accept a proposal: the next version, sent to the PACS (409 when stale)."""
        result = service.accept(reader, study_uid, proposal_id)
        live.study_changed([study_uid])
        return result

    @api.post("/studies/{study_uid}/proposals/{proposal_id}/reject")
    def reject(reader: ReaderDep, study_uid: str, proposal_id: int) -> ProposalOut:
        """Reject a proposal; the report stays."""
        result = service.reject(reader, study_uid, proposal_id)
        live.study_changed([study_uid])
        return result

    @api.put("/studies/{study_uid}/report", status_code=201)
    def edit(reader: ReaderDep, study_uid: str, body: EditRequest) -> VersionResult:
        """Store the reader's own text as the next version (409 when stale)."""
        result = service.edit(
            reader, study_uid, body.based_on_version, body.findings_text,
            body.impression_text, body.findings, body.confirm,
        )
        live.study_changed([study_uid])
        return result

    @api.post("/studies/{study_uid}/addenda", status_code=201)
    def add_addendum(reader: ReaderDep, study_uid: str, body: AddendumRequest) -> VersionResult:
        """Add an addendum to the signed report: a new verified SR naming the signed one
        (409 when the report is not signed or the version is stale)."""
        result = service.add_addendum(reader, study_uid, body.based_on_version, body.text)
        live.study_changed([study_uid])
        return result

    @api.post("/studies/{study_uid}/signoff", status_code=201)
    def sign_off(reader: ReaderDep, study_uid: str, body: SignOffRequest) -> VersionResult:
        """Sign the latest version off (409 when stale, already signed, not what the reader
        was shown, or while a finding's code and text disagree)."""
        result = service.sign_off(reader, study_uid, body.based_on_version, body.shown_sha256)
        live.study_changed([study_uid])
        return result

    app.include_router(api)
    return app


__all__ = ["SECURITY_HEADERS", "STATIC_DIR", "create_app"]
