"""The FastAPI app behind ``convlens serve``: the library's calls over HTTP, for one local user.

Routes (all JSON unless said otherwise; errors are ``{"error": "<the CLI's one line>"}``):

* ``GET /`` and ``/static/...``: the page (HTML, CSS, a little JavaScript; no build step).
* ``GET /api/info``: model, methods grouped by family with their summaries, layers, labels,
  samples, audits.
* ``POST /api/images`` (multipart ``file``) or ``POST /api/samples/{name}``: decode a photo
  with the CLI's safe loader, keep it under an opaque id, return the prediction table.
* ``GET /api/images/{id}``: that photo as PNG.
* ``POST /api/explain``: ``{"image", "methods", "layer", "target", "sign", "normalize"}`` ->
  per explained class, per method, the coloured map (PNG data URI at photo size) and the
  raw value of its colour bar's ends.
* ``POST /api/visualize``: ``{"layer", "channel"}`` or ``{"class"}`` -> newline-delimited
  JSON: progress events while it optimises, then the image.
* ``GET /api/audits/{a}``, ``/api/audits/{a}/images?label=&cluster=&mistakes=&offset=&limit=``,
  ``/api/audits/{a}/thumbs/{i}``: an audit folder, browsed by opaque integer ids.

Security (docs/architecture.md, "Layers and the direction data flows": the app only calls
the library): the Host header must name this server (DNS rebinding) and an Origin, when
sent, must be this server (a page on another site cannot drive it); request bodies are
capped in bytes (413) while they arrive, photos in pixels; no client-given path is ever
opened. The model is used by one request at a time (a lock), and every library call
removes its hooks in ``finally``, so a request cancelled mid-flight leaves none behind.
"""

import asyncio
import base64
import io
import json
import queue
import secrets
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

from convlens.app.audits import AuditError, AuditFolder
from convlens.errors import ConvlensError, ConvlensWarning, ImageError
from convlens.io.images import DEFAULT_MAX_PIXELS

STATIC = Path(__file__).parent / "static"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_STORED_IMAGES = 64
MAX_VISUALIZE_STEPS = 1024


class RequestTooLarge(ConvlensError, ValueError):
    """A request body went over the server's byte cap (HTTP 413)."""


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
    classifier: Any
    settings: ServeSettings
    audits: list[AuditFolder]
    lock: threading.Lock = field(default_factory=threading.Lock)
    images: OrderedDict[str, tuple[str, Image.Image]] = field(default_factory=OrderedDict)
    info: dict[str, Any] | None = None

    def store(self, name: str, image: Image.Image) -> str:
        token = secrets.token_urlsafe(12)
        with self.lock:
            self.images[token] = (name, image)
            while len(self.images) > MAX_STORED_IMAGES:
                self.images.popitem(last=False)
        return token

    def image(self, token: str) -> tuple[str, Image.Image]:
        found = self.images.get(token) if isinstance(token, str) else None
        if found is None:
            raise ImageError(None, "unknown image id (uploads are kept for the last "
                                   f"{MAX_STORED_IMAGES} photos); upload the photo again")
        return found


def allowed_hosts_for(host: str, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The Host names to accept when listening on ``host``: loopback names, plus ``host``
    itself when it is a specific address, plus ``extra``."""
    names = list(LOCAL_HOSTS)
    if host not in ("0.0.0.0", "::", "") and host not in names:
        names.append(host)
    names.extend(h for h in extra if h not in names)
    return tuple(names)


def _host_name(netloc: str) -> str:
    """``"127.0.0.1:8000"`` -> ``"127.0.0.1"``; ``"[::1]:8000"`` -> ``"::1"``."""
    try:
        return (urlsplit(f"//{netloc}").hostname or "").lower()
    except ValueError:
        return ""


class _Guard:
    """ASGI middleware: Host and Origin checks, and the byte cap on request bodies."""

    def __init__(self, app: Any, settings: ServeSettings) -> None:
        self.app = app
        self.settings = settings
        self.hosts = {h.lower() for h in settings.allowed_hosts}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if _host_name(host) not in self.hosts:
            await _send_json(send, 403, f"refused Host {host!r}: this server answers only to "
                             f"{', '.join(sorted(self.hosts))} (DNS-rebinding guard); start it "
                             "with --allow-host NAME (or --host NAME) to serve another name")
            return
        origin = headers.get("origin")
        if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
            await _send_json(send, 403, f"refused Origin {origin!r}: only pages served by "
                             "this server may call it")
            return
        limit = self.settings.max_upload_bytes
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _send_json(send, 413, _too_large(limit))
            return
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestTooLarge(_too_large(limit))
            return message

        await self.app(scope, counted, send)


def _too_large(limit: int) -> str:
    return (f"upload is larger than the limit of {limit:,} bytes; send a smaller photo or "
            "start the server with a larger --max-upload-mb")


async def _send_json(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _png_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _status(error: ConvlensError) -> int:
    if isinstance(error, RequestTooLarge):
        return 413
    if isinstance(error, ImageError) and "above the limit" in error.reason:
        return 413
    if isinstance(error, AuditError) and str(error).startswith(("no image", "no audit")):
        return 404
    return 400


def create_app(classifier: Any, *, audits: Sequence[str | Path] = (),
               settings: ServeSettings | None = None) -> Any:
    """Build the FastAPI app serving ``classifier`` (and the audit folders, for browsing).

    Args:
        classifier: A :class:`~convlens.Classifier` (``convlens.load_model(...)``).
        audits: Folders holding an ``audit.json`` written by ``convlens audit``.
        settings: Hosts, byte and pixel caps (defaults: loopback only, 20 MiB, the
            library's pixel cap).

    Returns:
        A FastAPI application; serve it with uvicorn (``convlens serve`` does).
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
    from fastapi.staticfiles import StaticFiles

    settings = settings or ServeSettings()
    state = _State(classifier, settings, [AuditFolder.open(a) for a in audits])
    app = FastAPI(title="convlens", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.convlens = state

    @app.exception_handler(ConvlensError)
    async def _convlens_error(_request: Request, error: ConvlensError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=_status(error))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}"
                             for e in error.errors())
        return JSONResponse({"error": f"bad request: {problems}"}, status_code=422)

    @app.exception_handler(KeyError)
    async def _key_error(_request: Request, error: KeyError) -> JSONResponse:
        return JSONResponse({"error": str(error.args[0]) if error.args else "not found"},
                            status_code=400)

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        with state.lock:
            if state.info is None:
                state.info = _info(state)
        return state.info | {"audits": [{"id": i, "name": a.folder.name}
                                        for i, a in enumerate(state.audits)]}

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
        return await asyncio.to_thread(_add_upload, state, name, data)

    @app.post("/api/samples/{name}")
    def sample(name: str) -> dict[str, Any]:
        from convlens.io.samples import SAMPLE_NAMES, sample_images

        if name not in SAMPLE_NAMES:
            raise ImageError(None, f"unknown sample {name!r}; samples: {', '.join(SAMPLE_NAMES)}")
        image = sample_images()[name]
        return _register_image(state, name, image)

    @app.get("/api/images/{token}")
    def photo(token: str) -> Response:
        _name, image = state.image(token)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png")

    @app.post("/api/explain")
    def explain_route(body: dict[str, Any]) -> dict[str, Any]:
        return _explain(state, body)

    @app.post("/api/visualize")
    async def visualize_route(request: Request) -> StreamingResponse:
        body = await request.json()
        objective, steps, size = _objective(state, body)
        return StreamingResponse(_visualize_stream(state, request, objective, steps, size),
                                 media_type="application/x-ndjson")

    def _audit(audit: int) -> AuditFolder:
        if not 0 <= audit < len(state.audits):
            raise AuditError(f"no audit {audit}: this server has {len(state.audits)} "
                             "(start it with --audit DIR)")
        return state.audits[audit]

    @app.get("/api/audits/{audit}")
    def audit_summary(audit: int) -> dict[str, Any]:
        return _audit(audit).summary()

    @app.get("/api/audits/{audit}/images")
    def audit_images(audit: int, label: str | None = None, cluster: int | None = None,
                     mistakes: bool = False, offset: int = 0, limit: int = 60) -> dict[str, Any]:
        return _audit(audit).page(label=label, cluster=cluster, mistakes=mistakes,
                                  offset=offset, limit=limit)

    @app.get("/api/audits/{audit}/thumbs/{index}")
    def audit_thumb(audit: int, index: int) -> Response:
        return Response(_audit(audit).thumbnail(index), media_type="image/jpeg",
                        headers={"cache-control": "max-age=3600"})

    # The guard wraps everything, error handlers included, so refusals never reach a route.
    app.add_middleware(_Guard, settings=settings)
    return app


def _info(state: _State) -> dict[str, Any]:
    import convlens
    from convlens.io.samples import SAMPLE_NAMES

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
            "labels": labels, "samples": list(SAMPLE_NAMES)}


def _num_outputs(classifier: Any) -> int:
    import torch

    height, width = classifier.preprocessing.input_size
    x = torch.zeros(1, classifier.preprocessing.channels, height, width,
                    device=classifier.device)
    return int(classifier.logits(x).shape[1])


def _add_upload(state: _State, name: str, data: bytes) -> dict[str, Any]:
    """Decode an upload with the CLI's loader (restricted decoders, pixel cap from the header)."""
    from convlens.io.images import load_image

    if not data:
        raise ImageError(name, "the upload is empty; choose a photo file")
    with tempfile.TemporaryDirectory(prefix="convlens-upload-") as folder:
        path = Path(folder) / "upload"
        path.write_bytes(data)
        try:
            image = load_image(path, max_pixels=state.settings.max_pixels)
        except ImageError as error:
            raise ImageError(name, error.reason) from None
    return _register_image(state, name, image)


def _register_image(state: _State, name: str, image: Image.Image) -> dict[str, Any]:
    with state.lock:
        predictions = state.classifier.predict([image], top=state.settings.top)[0]
    token = state.store(name, image)
    return {"id": token, "name": name, "width": image.width, "height": image.height,
            "predictions": [{"label": label, "probability": p} for label, p in predictions]}


def _target(value: Any) -> Any:
    """The page's target field: ``pred``, ``top:K``, a class index or a class name."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def _explain(state: _State, body: dict[str, Any]) -> dict[str, Any]:
    import convlens
    from convlens.present.figures import colorize

    name, image = state.image(body.get("image"))
    methods = body.get("methods") or ["gradcam"]
    if isinstance(methods, str) or not all(isinstance(m, str) for m in methods):
        raise ConvlensError("methods must be a list of method names, e.g. [\"gradcam\"]")
    sign = body.get("sign", "positive")
    normalize = body.get("normalize", "image")
    with state.lock, warnings.catch_warnings():  # notes travel in the response instead
        warnings.simplefilter("ignore", ConvlensWarning)
        explanations = convlens.explain(state.classifier, [image], methods,
                                        target=_target(body.get("target")),
                                        layer=body.get("layer") or None, sign=sign,
                                        normalize=normalize, names=[name])
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
    from convlens import objectives as obj
    from convlens.errors import ObjectiveError

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


class _Cancelled(Exception):
    """Raised from visualize's callback when the client went away."""


async def _visualize_stream(state: _State, request: Any, objective: Any, steps: int,
                            size: int) -> Any:
    """Run :func:`convlens.visualize` in a worker thread; yield its progress as NDJSON.

    When the client disconnects, the next step's callback raises, visualize's ``finally``
    removes its hooks and the lock is released.
    """
    import convlens

    events: queue.Queue = queue.Queue()
    cancel = threading.Event()
    every = max(1, steps // 32)

    def callback(step: int, _images: Any, values: Any) -> None:
        if cancel.is_set():
            raise _Cancelled()
        if step % every == 0 or step == steps - 1:
            events.put({"step": step + 1, "steps": steps, "value": float(values.mean())})

    def work() -> None:
        try:
            with state.lock:
                result = convlens.visualize(state.classifier, objective, steps=steps,
                                            size=size, seed=0, progress=False,
                                            callback=callback)
            events.put({"done": True, "name": result.names[0],
                        "image": _png_uri(result.pil()[0])})
        except _Cancelled:
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
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.05)
                continue
            yield json.dumps(event) + "\n"
            if {"done", "error", "cancelled"} & event.keys():
                return
    finally:
        cancel.set()
