"""The HTTP API (docs/serving.md): the FastAPI application of `facerec serve`.

Every answer about an image is the object `facerec detect|embed|identify --json` prints for it, with the
uploaded file's name as `image`; a clip's tracks are those `facerec identify CLIP --json` prints
(facerec.service.video), and the /v1/stream WebSocket answers frame and track objects as `facerec watch
--json` prints them (facerec.service.stream). Every error is {"error": "one line"} with its status: 400
bad image, video, option or identity name, 401 no or unknown key, 403 a read key on a write, 404, 408 a
body that stopped arriving, 409 a photo enrolled under another name (a name another person has), 413 a
body over --max-upload or an image (a clip's frames) over --max-pixels-in-flight, 415 not an image (not a
video), 503 busy; never a traceback. A WebSocket is refused with the same answers before it is accepted.
Identity names in paths go through facerec.gallery.names's rule (NFC, refusals) as `facerec index`'s
folder names do, and so do the names given to people (facerec.service.people: the choices of `facerec
people` over HTTP).

What runs where: the event loop only parses requests and awaits; decoding and alignment run in the CPU
pool (a stream's frames too), detection in the detector batcher's thread, uploaded clips in the video
pool, embedding in the backbone batcher's thread (facerec.service.models), gallery reads in the
threadpool, edits on a writer thread. Keys are checked
before a body is read (Authorization below).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, File, Query, Request, UploadFile, WebSocket
from fastapi.exceptions import RequestValidationError, WebSocketRequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from facerec import __version__, defaults
from facerec.errors import FacerecError
from facerec.gallery.stores import open_store
from facerec.service import answers, edits, people, thumbnails
from facerec.service.auth import Keys, key_refusal
from facerec.service.errors import ServiceError, error_response
from facerec.service.limits import Admission, BodyGuard
from facerec.service.models import Models, Prepared, Upload
from facerec.service.stream import Stream, serve
from facerec.service.video import VIDEO_FORMATS, follow_upload, follower
from facerec.service.view import ServedGallery, View, face_json
from facerec.video.follow import MAX_STRIDE

STATIC = Path(__file__).parent / "static"
PAGE_POLICY = (  # the page loads nothing but its own files and talks only to this server
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
log = logging.getLogger("uvicorn.error")
T = TypeVar("T")
DISCONNECT_POLL_S = 0.5  # how often a video being followed checks that its client is still there
WRITES = ("/v1/identities", "/v1/people", "/v1/faces")  # a POST under these changes the gallery


@dataclass(frozen=True)
class Settings:
    """What `facerec serve` was told: the gallery, the keys and the limits (facerec.service.limits)."""

    gallery: str  # a folder or a store URI, as --gallery gives it
    keys: Keys = field(default_factory=Keys)
    max_upload: int = 20_000_000  # bytes of a request body
    max_queue: int = 64  # image requests processed or waiting
    read_timeout: float = 30.0  # seconds a body may go without a byte
    max_uploads: int = 16  # bodies being received at once
    max_pixels: int = 200_000_000  # decoded pixels of images in stage one at once
    pixel_wait: float = 5.0  # seconds an image waits for room among those pixels
    uploads: Path | None = None  # where enrolled photos go (--uploads); None: the store's own folder


class Service:
    """One gallery served with one set of models.

    Edits run one after another on a thread of their own: one waiting for another process's write
    holds that thread, never the threadpool that reads the gallery for every other request.
    """

    def __init__(self, settings: Settings, models: Models) -> None:
        self.settings = settings
        self.models = models
        self.store = open_store(settings.gallery)
        self.gallery = ServedGallery(self.store, models.made)
        self.admission = Admission(settings.max_queue)
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="facerec-writer")

    def start(self) -> None:
        self.models.start()

    def stop(self) -> None:
        self.writer.shutdown()
        self.models.stop()

    async def view(self) -> View:
        return await run_in_threadpool(self.gallery.current)

    async def edit(self, change: Callable[..., T], *args: Any) -> T:
        """`change(store, *args)` (facerec.service.edits) on the writer thread, admitted as image work
        is: edits waiting for the gallery count towards --max-queue."""
        with self.admission.admit():
            return await asyncio.get_running_loop().run_in_executor(self.writer, change, self.store, *args)

    async def detected(self, image: UploadFile) -> Prepared:
        """Stage one for an uploaded file (see facerec.service.models)."""
        return await self.models.detect(await upload(image))


async def upload(image: UploadFile) -> Upload:
    """The bytes of an uploaded file, named as the client named it (else by its field)."""
    return Upload(image.filename or "image", await image.read())


def create_app(service: Service) -> FastAPI:
    """The application serving `service`: the API under /v1, /health, the page at /, docs at /docs."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPIOffline(
        title="facerec",
        version=__version__,
        summary="Face detection, embedding, identification and enrollment over HTTP.",
        lifespan=lifespan,
    )
    _answer_errors(app)
    app.add_middleware(Answers)  # the last added runs first: keys, then the body's bounds, then the rest
    settings = service.settings
    app.add_middleware(
        BodyGuard,
        max_bytes=settings.max_upload,
        read_timeout=settings.read_timeout,
        max_uploads=settings.max_uploads,
    )
    app.add_middleware(Authorization, keys=service.settings.keys)
    _images(app, service)
    _videos(app, service)
    _identities(app, service)
    _people(app, service)
    _page(app, service)
    return app


def _documented_keys(service: Service) -> list:
    """With keys, each /v1 route declares the bearer scheme, so the docs show it and offer to send one
    (the check itself is Authorization's, done before the body is read)."""
    return [Depends(HTTPBearer(auto_error=False))] if service.settings.keys else []


ImageField = Annotated[UploadFile, File(description="The photo (JPEG, PNG, WebP, ...).")]
TopK = Annotated[int, Query(ge=1, le=100, description="Candidates per face.")]
Threshold = Annotated[
    float | None,
    Query(
        ge=0,
        allow_inf_nan=False,
        description="Largest distance at which the nearest identity is accepted [default: the gallery's].",
    ),
]


def _images(app: FastAPI, service: Service) -> None:
    keys = _documented_keys(service)

    @app.post("/v1/detect", dependencies=keys, tags=["images"])
    async def detect(image: ImageField) -> dict[str, Any]:
        """Faces of the photo, largest first: box, score, landmarks (as `facerec detect --json`)."""
        with service.admission.admit():
            prepared = await service.detected(image)
        return prepared.result.to_json()

    @app.post("/v1/embed", dependencies=keys, tags=["images"])
    async def embed(image: ImageField) -> dict[str, Any]:
        """Faces with their unit embeddings (as `facerec embed --json`)."""
        with service.admission.admit():
            result = await service.models.embed(await service.detected(image))
        return result.to_json()

    @app.post("/v1/identify", dependencies=keys, tags=["images"])
    async def identify(
        image: ImageField, top_k: TopK = defaults.TOP_K, threshold: Threshold = None
    ) -> dict[str, Any]:
        """Faces named by the gallery, or null beyond the threshold (as `facerec identify --json`)."""
        with service.admission.admit():
            result = await service.models.embed(await service.detected(image))
        view = await service.view()
        limit = threshold if threshold is not None else answers.identify_threshold(view, service.models.made)
        found = await run_in_threadpool(answers.identified, view, result, limit, top_k)
        return found.to_json()

    @app.post("/v1/verify", dependencies=keys, tags=["images"])
    async def verify(image1: ImageField, image2: ImageField, threshold: Threshold = None) -> dict[str, Any]:
        """Whether the largest faces of two photos are the same person."""
        with service.admission.admit():
            prepared = await asyncio.gather(service.detected(image1), service.detected(image2))
            first, second = await asyncio.gather(*map(service.models.embed, prepared))
        view = await service.view()
        limit = threshold if threshold is not None else answers.distance_threshold(view, service.models.made)
        return answers.verified(first, second, limit)


VideoField = Annotated[UploadFile, File(description=f"The video ({VIDEO_FORMATS}).")]
VideoStride = Annotated[
    int | None,
    Query(
        ge=1,
        description="Detect faces every N frames and follow them in between [default: as many frames as "
        "keep detection within half of the video's time].",
    ),
]
StreamStride = Annotated[
    int, Query(ge=1, le=MAX_STRIDE, description="Detect faces on every Nth frame taken, follow them between.")
]


def _videos(app: FastAPI, service: Service) -> None:
    keys = _documented_keys(service)
    models = service.models

    @app.post("/v1/videos", dependencies=keys, tags=["videos"])
    async def videos(
        request: Request,
        video: VideoField,
        top_k: TopK = defaults.TOP_K,
        threshold: Threshold = None,
        stride: VideoStride = None,
    ) -> dict[str, Any]:
        """The faces of a clip, tracked and each track named from its best views: `{"video", "tracks"}`
        with the tracks `facerec identify CLIP --json` prints, and a `warning` when part of the clip
        could not be read."""
        with service.admission.admit():
            view = await service.view()
            following = await run_in_threadpool(follower, models, lambda: view, threshold, top_k, stride)
            left = threading.Event()
            watching = asyncio.create_task(_until_disconnected(request, left))
            try:
                return await models.on_video(
                    follow_upload,
                    models,
                    following,
                    video.filename or "video",
                    video.file,
                    lambda: left.is_set() or models.stopping.is_set(),
                )
            finally:
                watching.cancel()

    @app.websocket("/v1/stream")
    async def stream(
        websocket: WebSocket,
        top_k: TopK = defaults.TOP_K,
        threshold: Threshold = None,
        stride: StreamStride = 1,
    ) -> None:
        """Frames in, faces out: see docs/serving.md (the stream). Refused before it is accepted, with
        the HTTP answer of any other request (400, 401, 503), when it cannot be served."""
        settings = service.settings
        with service.admission.admit():
            current = service.gallery.current
            following = await run_in_threadpool(follower, models, current, threshold, top_k, stride)
            await websocket.accept()
            needs_key = settings.keys if "authorization" not in websocket.headers else None
            await serve(websocket, Stream(websocket, models, following, settings.read_timeout), needs_key)


async def _until_disconnected(request: Request, left: threading.Event) -> None:
    """Set `left` when the client of `request` goes away (polled: ASGI offers no callback)."""
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)
    left.set()


def _identities(app: FastAPI, service: Service) -> None:
    keys = _documented_keys(service)

    @app.get("/v1/identities", dependencies=keys, tags=["identities"])
    async def identities() -> list[dict[str, Any]]:
        """Every identity with its number of faces."""
        view = await service.view()
        return [{"identity": name, "faces": count} for name, count in view.identities().items()]

    @app.get("/v1/identities/{identity}", dependencies=keys, tags=["identities"])
    async def identity_faces(identity: str) -> dict[str, Any]:
        """The faces of one identity: id, box, source photo, when added."""
        identity = edits.check_identity(identity)
        view = await service.view()
        if identity not in view.faces:
            raise ServiceError(404, f"no identity {identity!r} in this gallery")
        return {"identity": identity, "faces": [face_json(entry) for entry in view.faces[identity]]}

    @app.post("/v1/identities/{identity}/faces", status_code=201, dependencies=keys, tags=["identities"])
    async def enroll(identity: str, image: ImageField) -> JSONResponse:
        """Enroll the largest face of the photo under `identity` (201; 200 when this photo already is)."""
        identity = edits.check_identity(identity)
        with service.admission.admit():
            photo = await upload(image)
            prepared = await service.models.detect(photo)
            if not prepared.result.faces:
                raise ServiceError(400, f"{photo.name}: no face found")
            (vector,) = await service.models.batcher.run(prepared.faces[:1])
        enrolled = await service.edit(
            functools.partial(edits.enroll, uploads=service.settings.uploads),
            service.models.made,
            identity,
            photo.data,
            prepared.format,
            prepared.result.faces[0],
            vector,
        )
        return JSONResponse(enrolled.to_json(), status_code=201 if enrolled.created else 200)

    @app.delete(
        "/v1/identities/{identity}/faces/{face_id}", status_code=204, dependencies=keys, tags=["identities"]
    )
    async def delete_face(identity: str, face_id: str) -> Response:
        """Delete one face of an identity."""
        delete = functools.partial(edits.delete, uploads=service.settings.uploads)
        await service.edit(delete, edits.check_identity(identity), face_id)
        return Response(status_code=204)

    @app.delete("/v1/identities/{identity}", status_code=204, dependencies=keys, tags=["identities"])
    async def delete_identity(identity: str) -> Response:
        """Delete an identity with all its faces."""
        delete = functools.partial(edits.delete, uploads=service.settings.uploads)
        await service.edit(delete, edits.check_identity(identity))
        return Response(status_code=204)


class NameBody(BaseModel):
    name: str = Field(description="The person's name, an identity name (NFC; no control characters).")


class MergeBody(BaseModel):
    people: list[str] = Field(description="Person ids; the first is kept and takes the others' faces.")


class MoveBody(BaseModel):
    to: str = Field(description="A person id, or `new` for a new person.")


def _people(app: FastAPI, service: Service) -> None:
    """The people `facerec cluster` found (docs/people.md), listed and changed as `facerec people`
    lists and changes them (facerec.service.people)."""
    keys = _documented_keys(service)

    @app.get("/v1/people", dependencies=keys, tags=["people"])
    async def people_list() -> list[dict[str, Any]]:
        """Every person: id, name, number of faces, up to 4 face ids; then the unassigned faces, in the
        same shape with `person` and `name` null."""
        return await run_in_threadpool(people.summary, service.store)

    @app.get("/v1/people/{person}", dependencies=keys, tags=["people"])
    async def person_faces(person: str) -> dict[str, Any]:
        """One person as `facerec people --json` prints it: `{"person", "name", "faces": [{"face_id",
        "image", "box"}]}`."""
        return await run_in_threadpool(people.person, service.store, person)

    @app.post("/v1/people/{person}/name", dependencies=keys, tags=["people"])
    async def name_person(person: str, body: NameBody) -> dict[str, Any]:
        """Name the person (`facerec people name`): its faces become that identity, which identify
        answers from the next request on. 409 when another person has the name (merge them instead)."""
        return await service.edit(people.name, person, edits.check_identity(body.name))

    @app.post("/v1/people/merge", dependencies=keys, tags=["people"])
    async def merge_people(body: MergeBody) -> dict[str, Any]:
        """Merge people into the first (`facerec people merge`); the kept person's object."""
        return await service.edit(people.merge, body.people)

    @app.post("/v1/faces/{face_id}/move", dependencies=keys, tags=["people"])
    async def move_face(face_id: str, body: MoveBody) -> dict[str, Any]:
        """Move a clustered face to another person or a new one (`facerec people move`); the object of
        the person it went to."""
        return await service.edit(people.move, face_id, body.to)

    @app.get(
        "/v1/faces/{face_id}/thumbnail",
        dependencies=keys,
        tags=["people"],
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}},
    )
    async def face_thumbnail(face_id: str) -> Response:
        """A small JPEG of the face cut from its photo (any face of the gallery); 404 when the photo is
        gone."""
        view = await service.view()
        entry = view.by_face.get(face_id)
        if entry is None:
            raise ServiceError(404, f"no face {face_id!r} in this gallery")
        with service.admission.admit():
            jpeg = await service.models.on_cpu(thumbnails.thumbnail, entry, service.models.pixels)
        return Response(jpeg, media_type="image/jpeg")


def _page(app: FastAPI, service: Service) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/health", tags=["service"])
    async def health() -> dict[str, Any]:
        """Whether the server answers, and what it serves."""
        view = await service.view()
        return {
            "status": "ok",
            "gallery": view.version,
            "identities": len(view.identities()),
            "faces": view.face_count,
        }


def _answer_errors(app: FastAPI) -> None:
    """Every error as {"error": "one line"}."""

    @app.exception_handler(ServiceError)
    async def service_error(_request: Request, error: ServiceError) -> JSONResponse:
        return error_response(error.status, str(error), error.headers)

    @app.exception_handler(FacerecError)
    async def facerec_error(_request: Request, error: FacerecError) -> JSONResponse:
        return error_response(500, str(error))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        messages = {
            404: f"no such endpoint: {request.method} {request.url.path}",
            405: f"{request.method} is not allowed on {request.url.path}",
        }
        return error_response(error.status_code, messages.get(error.status_code, str(error.detail)))

    @app.exception_handler(RequestValidationError)
    @app.exception_handler(WebSocketRequestValidationError)  # answered before the WebSocket is accepted
    async def invalid(
        _request: Request, error: RequestValidationError | WebSocketRequestValidationError
    ) -> JSONResponse:
        first = error.errors()[0]
        if first["type"] == "json_invalid" or tuple(first["loc"]) == ("body",):  # not a JSON object at all
            detail = first["ctx"]["error"] if first["type"] == "json_invalid" else first["msg"]
            return error_response(
                400, f"the body must be a JSON object (Content-Type: application/json): {detail}"
            )
        where = ".".join(str(part) for part in first["loc"] if part not in ("body", "query", "path"))
        return error_response(400, f"{where}: {first['msg']}" if where else first["msg"])


class Authorization:
    """With keys, every /v1 request needs `Authorization: Bearer KEY`: a read key for what reads, a
    write key for what changes the gallery (POST under WRITES, DELETE). Checked before anything of the
    request's body is read; the key is never logged or repeated.

    A WebSocket (/v1/stream) with an Authorization header is checked here the same way, and refused
    with the same HTTP answer before it is accepted; a browser cannot send that header, so one without
    it is let through and sends its key as its first message (facerec.service.stream)."""

    def __init__(self, app: ASGIApp, keys: Keys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.keys and scope["type"] in ("http", "websocket") and scope["path"].startswith("/v1/"):
            refusal = self.refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> JSONResponse | None:
        method, path = scope.get("method", "GET"), scope["path"]
        needed = "write" if method == "DELETE" or (method == "POST" and path.startswith(WRITES)) else "read"
        headers = dict(scope["headers"])
        if scope["type"] == "websocket" and b"authorization" not in headers:
            return None  # the key comes as the first message
        scheme, _, key = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        challenge = {"WWW-Authenticate": "Bearer"}
        if scheme.lower() != "bearer" or not key.strip():
            return error_response(401, "an API key is needed: send Authorization: Bearer KEY", challenge)
        refused = key_refusal(self.keys, key.strip(), needed)
        if refused is None:
            return None
        status, message = refused
        return error_response(status, message, challenge if status == 401 else None)


class Answers:
    """An unexpected failure is answered 500 {"error": ...} and logged in one line (with the traceback
    only under FACEREC_DEBUG), like the CLI's internal errors."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as error:
            if scope["type"] != "http" or started or os.environ.get("FACEREC_DEBUG"):
                raise
            line = f"internal error: {type(error).__name__}: {error}"
            log.error(
                "%s %s: %s (set FACEREC_DEBUG=1 for the traceback)", scope["method"], scope["path"], line
            )
            await error_response(500, line)(scope, receive, send)
