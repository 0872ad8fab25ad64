"""The FastAPI app behind ``convlens serve``: the library's calls over HTTP, for one local user.

Routes (all JSON unless said otherwise; errors are ``{"error": "<the CLI's one line>"}``):

* ``GET /`` and ``/static/...``: the page (HTML, CSS, a little JavaScript; no build step);
  ``/favicon.ico``: its icon.
* ``GET /api/info``: model, methods grouped by family with their summaries, layers, labels,
  samples, audits.
* ``POST /api/images`` (multipart ``file``) or ``POST /api/samples/{name}``: decode a photo
  with the CLI's safe loader, keep it under an opaque id, return the prediction table.
* ``GET /api/images/{id}``: that photo's working copy (longer side at most 1,024 px) as PNG.
* ``POST /api/explain``: ``{"image", "methods", "layer", "target", "sign", "normalize"}`` ->
  per explained class, per method, the coloured map (PNG data URI at the working copy's
  size) and the raw value of its colour bar's ends.
* ``POST /api/visualize``: ``{"layer", "channel"}`` or ``{"class"}`` -> newline-delimited
  JSON: progress events while it optimises, then the image.
* ``GET /api/audits/{a}``,
  ``/api/audits/{a}/images?label=&cluster=&strategy=&concept=&mistakes=&offset=&limit=``,
  ``/api/audits/{a}/thumbs/{i}``: an audit folder, browsed by opaque integer ids.
* ``GET /api/atlases/{a}?limit=``, ``/api/atlases/{a}/channels/{c}``,
  ``/api/atlases/{a}/patches/{c}/{mode}/{rank}`` (PNG, cut on demand through the model
  gate): a concept atlas folder (``convlens concepts atlas``), by integer ids
  (:mod:`.atlases`).

Security (docs/architecture.md, "Layers and the direction data flows": the app only calls
the library): :mod:`convlens.app.guard` checks Host (DNS rebinding) and Origin, caps request
bodies in bytes while they arrive (413) and stalls (408), and sets the security headers;
photos are capped in pixels; no client-given path is ever opened (:mod:`.audits`).

Under load (docs/architecture.md, "convlens serve under load"): photos are kept as bounded
PNG working copies (:mod:`.uploads`); the model is used by one computation at a time, run
in a worker thread that stops when its client disconnects or the server stops
(:mod:`.work`); one request may ask for at most :data:`MAX_TARGETS` classes and
:data:`MAX_MAPS` maps (422 past that); ``/api/info`` is computed once at start, so it and
the static files answer while a computation runs. Every error is ``{"error": "one line"}``.
"""

import asyncio
import base64
import io
import json
import queue
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.exceptions import HTTPException

import convlens
from convlens import objectives as obj
from convlens.app.atlases import AtlasFolder, AtlasNotFound
from convlens.app.audits import AuditFolder, AuditNotFound
from convlens.app.guard import Guard, RequestTooLarge
from convlens.app.uploads import PhotoStore, decode_upload, working_copy
from convlens.app.work import Cancelled, ModelGate, run_model
from convlens.errors import (
    BadRequest,
    ConvlensError,
    ConvlensWarning,
    ImageError,
    ObjectiveError,
    TooMuchWork,
)
from convlens.explanations import parse_target
from convlens.io.images import DEFAULT_MAX_PIXELS
from convlens.io.samples import SAMPLE_NAMES, sample_images
from convlens.models.classifier import Classifier
from convlens.present.figures import colorize

STATIC = Path(__file__).parent / "static"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_VISUALIZE_STEPS = 1024
MAX_TARGETS = 8
MAX_MAPS = 32


@dataclass
class ServeSettings:
    """What a server instance allows.

    Attributes:
        allowed_hosts: Host names (without port) accepted in the Host header and Origin.
        max_upload_bytes: Largest request body, in bytes; larger ones get 413.
        max_pixels: Largest photo, width x height; larger ones get 413.
        top: Rows of the prediction table.
    """

    allowed_hosts: tuple[str, ...] = LOCAL_HOSTS
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    top: int = 5


@dataclass
class _State:
    classifier: Classifier
    settings: ServeSettings
    audits: list[AuditFolder]
    gate: ModelGate
    atlases: list[Any] = field(default_factory=list)
    photos: PhotoStore = field(default_factory=PhotoStore)
    info: dict[str, Any] = field(default_factory=dict)


def allowed_hosts_for(host: str, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The Host names to accept when listening on ``host``: loopback names, plus ``host``
    itself when it is a specific address, plus ``extra``."""
    names = list(LOCAL_HOSTS)
    if host not in ("0.0.0.0", "::", "") and host not in names:
        names.append(host)
    names.extend(h for h in extra if h not in names)
    return tuple(names)


def _png_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _status(error: ConvlensError) -> int:
    if isinstance(error, RequestTooLarge):
        return 413
    if isinstance(error, ImageError) and "above the limit" in error.reason:
        return 413
    if isinstance(error, AuditNotFound):
        return 404
    if isinstance(error, (BadRequest, TooMuchWork)):
        return 422
    if isinstance(error, Cancelled):
        return 503
    return 400


def create_app(classifier: Classifier, *, audits: Sequence[str | Path] = (),
               settings: ServeSettings | None = None,
               atlases: Sequence[str | Path] = ()) -> Any:
    """Build the FastAPI app serving ``classifier`` (and the audit folders, for browsing).

    Args:
        classifier: A :class:`~convlens.Classifier` (``convlens.load_model(...)``).
        audits: Folders holding an ``audit.json`` written by ``convlens audit``.
        atlases: Folders written by ``convlens concepts atlas`` with this model (their
            patches are recomputed on request).
        settings: Hosts, byte and pixel caps (defaults: loopback only, 20 MiB, the
            library's pixel cap).

    Returns:
        A FastAPI application; serve it with :func:`convlens.app.runner.serve` (``convlens
        serve`` does), which also stops running computations on SIGTERM.
    """
    settings = settings or ServeSettings()
    state = _State(classifier, settings, [AuditFolder.open(a) for a in audits],
                   ModelGate(classifier.module),
                   [AtlasFolder.open(a, classifier) for a in atlases])
    state.info = _info(state)  # once, now: later requests never wait for the model
    app = FastAPI(title="convlens", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.convlens = state

    _add_error_handlers(app)
    _add_page_routes(app)
    _add_image_routes(app, state)
    _add_audit_routes(app, state)
    _add_atlas_routes(app, state)

    # The guard wraps everything, error handlers included, so refusals never reach a route.
    app.add_middleware(Guard, settings=settings)
    return app


def _add_error_handlers(app: Any) -> None:
    """Every failure answers one JSON line ``{"error": ...}`` with its status code."""
    @app.exception_handler(ConvlensError)
    async def _convlens_error(_request: Request, error: ConvlensError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=_status(error))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}"
                             for e in error.errors())
        return JSONResponse({"error": f"bad request: {problems}"}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
        where = f"{request.method} {request.url.path}"
        message = {404: f"not found: {where}; the page is at / and the API under /api "
                        "(GET /api/info lists what this server has)",
                   405: f"method not allowed: {where}"}.get(error.status_code, str(error.detail))
        return JSONResponse({"error": message}, status_code=error.status_code,
                            headers=getattr(error, "headers", None))

    @app.exception_handler(KeyError)
    async def _key_error(_request: Request, error: KeyError) -> JSONResponse:
        return JSONResponse({"error": str(error.args[0]) if error.args else "not found"},
                            status_code=400)


def _add_page_routes(app: Any) -> None:
    """The page itself: ``/``, the favicon and ``/static``."""
    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/favicon.ico")
    def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml",
                            headers={"cache-control": "max-age=86400"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _add_image_routes(app: Any, state: _State) -> None:
    """What the server has, photos in (upload, samples) and out, explain and visualize."""
    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return state.info | {"audits": [{"id": i, "name": a.folder.name}
                                        for i, a in enumerate(state.audits)],
                             "atlases": [{"id": i, "name": a.folder.name, "layer": a.sets.layer}
                                         for i, a in enumerate(state.atlases)]}

    @app.post("/api/images")
    async def upload(request: Request) -> dict[str, Any]:
        form = await request.form(max_files=1, max_fields=4)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ImageError(None, "no file in the upload; send a multipart form with a "
                                   "'file' field holding a JPEG, PNG, BMP, GIF, TIFF or WebP")
        data = await upload.read()
        name = Path(upload.filename or "upload").name
        await upload.close()
        image, original = await asyncio.to_thread(decode_upload, name, data,
                                                  state.settings.max_pixels)
        del data
        return await _register_image(state, request, name, image, original)

    @app.post("/api/samples/{name}")
    async def sample(request: Request, name: str) -> dict[str, Any]:
        if name not in SAMPLE_NAMES:
            raise ImageError(None, f"unknown sample {name!r}; samples: {', '.join(SAMPLE_NAMES)}")
        image = sample_images()[name]
        return await _register_image(state, request, name, working_copy(image), image.size)

    @app.get("/api/images/{token}")
    def photo(token: str) -> Response:
        return Response(state.photos.get(token).png, media_type="image/png")

    @app.post("/api/explain")
    async def explain_route(request: Request) -> dict[str, Any]:
        body = await _json_object(request)
        job = _explain_job(state, body)
        return await asyncio.to_thread(_draw, await run_model(state.gate, request, job),
                                       body)

    @app.post("/api/visualize")
    async def visualize_route(request: Request) -> StreamingResponse:
        body = await _json_object(request)
        objective, steps, size = _objective(state, body)
        return StreamingResponse(_visualize_stream(state, request, objective, steps, size),
                                 media_type="application/x-ndjson")


def _add_audit_routes(app: Any, state: _State) -> None:
    """Browsing the audit folders the server was started with (``--audit DIR``)."""
    def _audit(audit: int) -> AuditFolder:
        if not 0 <= audit < len(state.audits):
            raise AuditNotFound(f"no audit {audit}: this server has {len(state.audits)} "
                                "(start it with --audit DIR)")
        return state.audits[audit]

    @app.get("/api/audits/{audit}")
    def audit_summary(audit: int) -> dict[str, Any]:
        return _audit(audit).summary()

    @app.get("/api/audits/{audit}/images")
    def audit_images(audit: int, label: str | None = None, cluster: int | None = None,
                     mistakes: bool = False, offset: int = 0, limit: int = 60,
                     strategy: int | None = None, concept: int | None = None
                     ) -> dict[str, Any]:
        return _audit(audit).page(label=label, cluster=cluster, mistakes=mistakes,
                                  offset=offset, limit=limit, strategy=strategy,
                                  concept=concept)

    @app.get("/api/audits/{audit}/thumbs/{index}")
    def audit_thumb(audit: int, index: int) -> Response:
        return Response(_audit(audit).thumbnail(index), media_type="image/jpeg",
                        headers={"cache-control": "max-age=3600"})


def _add_atlas_routes(app: Any, state: _State) -> None:
    """Browsing the concept atlases the server was started with (``--atlas DIR``)."""
    def _atlas(atlas: int) -> Any:
        if not 0 <= atlas < len(state.atlases):
            raise AtlasNotFound(f"no atlas {atlas}: this server has {len(state.atlases)} "
                                "(start it with --atlas DIR)")
        return state.atlases[atlas]

    @app.get("/api/atlases/{atlas}")
    def atlas_summary(atlas: int, limit: int = 64) -> dict[str, Any]:
        return _atlas(atlas).summary(limit)

    @app.get("/api/atlases/{atlas}/channels/{channel}")
    def atlas_channel(atlas: int, channel: int) -> dict[str, Any]:
        return _atlas(atlas).channel(channel)

    @app.get("/api/atlases/{atlas}/patches/{channel}/{mode}/{rank}")
    async def atlas_patch(request: Request, atlas: int, channel: int, mode: str,
                          rank: int) -> Response:
        folder = _atlas(atlas)
        png = await run_model(state.gate, request, lambda: folder.patch(channel, mode, rank))
        return Response(png, media_type="image/png", headers={"cache-control": "max-age=3600"})


async def _json_object(request: Any) -> dict[str, Any]:
    """The request body as a JSON object, or a BadRequest (422) saying what arrived."""
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise BadRequest(f"bad request: the body is not JSON ({type(error).__name__}: "
                         f"{str(error)[:200]}); send a JSON object, e.g. "
                         '{"image": ID, "methods": ["gradcam"]}') from None
    if not isinstance(body, dict):
        raise BadRequest(f"bad request: expected a JSON object, got {type(body).__name__}")
    return body


def _info(state: _State) -> dict[str, Any]:
    classifier = state.classifier
    families: dict[str, list[dict[str, Any]]] = {}
    for method in convlens.methods():
        families.setdefault(method.family, []).append(
            {"name": method.name, "summary": method.summary, "space": method.space,
             "reference": method.reference})
    layers = [{"name": info.name, "type": info.type, "shape": list(info.output_shape)}
              for info in convlens.layers(classifier)
              if info.output_shape is not None and len(info.output_shape) == 3]
    labels = classifier.labels or [classifier.label(i) for i in range(_num_outputs(classifier))]
    return {"model": classifier.name, "families": families, "layers": layers,
            "labels": labels, "samples": list(SAMPLE_NAMES),
            "limits": {"targets": MAX_TARGETS, "maps": MAX_MAPS}}


def _num_outputs(classifier: Classifier) -> int:
    height, width = classifier.preprocessing.input_size
    x = torch.zeros(1, classifier.preprocessing.channels, height, width,
                    device=classifier.device)
    return int(classifier.logits(x).shape[1])


async def _register_image(state: _State, request: Any, name: str, image: Image.Image,
                          original: tuple[int, int]) -> dict[str, Any]:
    """Keep the working copy, predict on it (through the model gate)."""
    token = await asyncio.to_thread(state.photos.add, name, image, original)
    predictions = await run_model(
        state.gate, request, lambda: state.classifier.predict([image], top=state.settings.top)[0])
    return {"id": token, "name": name, "width": image.width, "height": image.height,
            "original_width": original[0], "original_height": original[1],
            "predictions": [{"label": label, "probability": p} for label, p in predictions]}


def _target(value: Any) -> Any:
    """The page's target field: ``pred``, ``top:K``, a class index or a class name."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def _explain_job(state: _State, body: dict[str, Any]) -> Any:
    """Check an explain request (photo, methods, the work cap) and return the computation,
    a function to run through the model gate."""
    stored = state.photos.get(body.get("image"))
    methods = body.get("methods") or ["gradcam"]
    if isinstance(methods, str) or not isinstance(methods, list) or \
            not all(isinstance(m, str) for m in methods):
        raise BadRequest("methods must be a list of method names, e.g. [\"gradcam\"]")
    target = _target(body.get("target"))
    _parsed, classes = parse_target(target)
    if classes > MAX_TARGETS or len(methods) * classes > MAX_MAPS:
        raise TooMuchWork(
            f"too much work for one request: {len(methods)} method(s) x {classes} class(es); "
            f"this server explains at most {MAX_TARGETS} classes and {MAX_MAPS} maps "
            "(methods x classes) per request; ask for fewer, or run the CLI, which has no "
            f"such limit: convlens explain PHOTO --method {','.join(methods[:MAX_MAPS])} "
            f"--target {body.get('target')}")
    sign = body.get("sign", "positive")
    normalize = body.get("normalize", "image")
    layer = body.get("layer") or None

    def job() -> list[Any]:
        image = stored.image()
        with warnings.catch_warnings():  # notes travel in the response instead
            warnings.simplefilter("ignore", ConvlensWarning)
            return convlens.explain(state.classifier, [image], methods, target=target,
                                    layer=layer, sign=sign, normalize=normalize,
                                    names=[stored.name])
    return job


def _draw(explanations: list[Any], body: dict[str, Any]) -> dict[str, Any]:
    """The explain response: per explanation, per method, the coloured map and its scale."""
    sign = body.get("sign", "positive")
    results = []
    for exp in explanations:
        maps = []
        for method in exp.methods:
            heat = exp.heatmap(method)
            scale = float(exp.scales.get(method) or 0.0)
            maps.append({"method": method, "image": _png_uri(Image.fromarray(colorize(heat))),
                         "empty": exp.empty(method),
                         "low": -scale if sign == "all" else 0.0, "high": scale})
        results.append({"target": exp.target, "label": exp.target_label,
                        "probability": exp.probability, "layer": exp.layer, "maps": maps,
                        "notes": list(getattr(exp, "notes", []))})
    return {"image": body.get("image"), "sign": sign, "explanations": results}


def _objective(state: _State, body: dict[str, Any]) -> tuple[Any, int, int]:
    steps = body.get("steps", 128)
    size = body.get("size", 128)
    if not isinstance(steps, int) or not 1 <= steps <= MAX_VISUALIZE_STEPS:
        raise ObjectiveError(f"steps must be an integer from 1 to {MAX_VISUALIZE_STEPS}, "
                             f"got {steps!r}")
    if not isinstance(size, int) or not 16 <= size <= 512:
        raise ObjectiveError(f"size must be an integer from 16 to 512, got {size!r}")
    target = body.get("class")
    if target not in (None, ""):
        return obj.class_logit(_target(target)), steps, size
    layer, channel = body.get("layer"), body.get("channel")
    if not isinstance(layer, str) or not isinstance(channel, int) or channel < 0:
        raise ObjectiveError("visualize needs a layer name and a channel index >= 0, or a "
                             "class (name or index)")
    return obj.channel(layer, channel), steps, size


async def _visualize_stream(state: _State, request: Any, objective: Any, steps: int,
                            size: int) -> Any:
    """Run :func:`convlens.visualize` in a worker thread; yield its progress as NDJSON.

    When the client disconnects (or the server stops), the model gate's cancel check
    raises at the next forward pass, visualize's ``finally`` removes its hooks and the
    lock is released.
    """
    events: queue.Queue = queue.Queue()
    cancel = threading.Event()
    every = max(1, steps // 32)

    def callback(step: int, _images: Any, values: Any) -> None:
        if step % every == 0 or step == steps - 1:
            events.put({"step": step + 1, "steps": steps, "value": float(values.mean())})

    def work() -> None:
        try:
            result = state.gate.run(
                lambda: convlens.visualize(state.classifier, objective, steps=steps, size=size,
                                           seed=0, progress=False, callback=callback), cancel)
            events.put({"done": True, "name": result.names[0],
                        "image": _png_uri(result.pil()[0])})
        except Cancelled:
            events.put({"cancelled": True})
        except ConvlensError as error:
            events.put({"error": str(error)})
        except Exception as error:  # noqa: BLE001 - reported to the page, not swallowed
            events.put({"error": f"visualize failed: {type(error).__name__}: {error}"})

    worker = threading.Thread(target=work, name="convlens-visualize", daemon=True)
    worker.start()
    try:
        while True:
            try:
                event = events.get_nowait()
            except queue.Empty:
                if state.gate.stopping.is_set() or await request.is_disconnected():
                    return
                await asyncio.sleep(0.05)
                continue
            yield json.dumps(event) + "\n"
            if {"done", "error", "cancelled"} & event.keys():
                return
    finally:
        cancel.set()
