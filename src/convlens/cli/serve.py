"""``convlens serve``: the local web page (FastAPI app served by uvicorn).

Listens on 127.0.0.1 unless ``--host`` says otherwise; the app checks Host and Origin, caps
uploads and serves files only by opaque ids (see :mod:`convlens.app.server`); the port is
bound before anything is printed and the server stops promptly on SIGTERM, even
mid-computation (:mod:`convlens.app.runner`). Needs the
``serve`` extra: ``pip install 'convlens[serve]'``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from convlens.cli._common import (
    DEFAULT_MAX_PIXELS,
    ModelOptions,
    check_max_pixels,
    console,
    fail,
    finite,
    friendly_errors,
    max_pixels_option,
    with_model_options,
)


@friendly_errors
@with_model_options
def serve(
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port."),
    host: str = typer.Option("127.0.0.1", "--host",
                             help="Address to listen on (default: this machine only)."),
    audit: list[Path] = typer.Option([], "--audit",
                                     help="Audit folder (holding audit.json) to browse; repeat."),
    atlas: list[Path] = typer.Option([], "--atlas",
                                     help="Concept atlas folder (from `concepts atlas` with this "
                                          "model) to browse; repeat."),
    allow_host: list[str] = typer.Option([], "--allow-host",
                                         help="Extra Host name to accept (behind a proxy)."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", min=0.01, callback=finite,
                                        help="Largest upload in MiB (larger: HTTP 413)."),
    max_pixels: int | None = max_pixels_option(),
    *, model_options: ModelOptions,
) -> None:
    """Serve a local page: upload a photo, compare maps, visualize features, browse audits
    and concept atlases."""
    try:
        # lazy: --help start-up, and the serve extra (fastapi, uvicorn) is optional
        from convlens.app.runner import bind, serve_app
        from convlens.app.server import ServeSettings, allowed_hosts_for, create_app
    except ImportError as error:
        fail(f"serve needs FastAPI and uvicorn ({error.name} is missing); install them with "
             "pip install 'convlens[serve]'")
        return
    check_max_pixels(max_pixels)
    classifier = model_options.load()
    settings = ServeSettings(allowed_hosts=allowed_hosts_for(host, allow_host),
                             max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                             max_pixels=DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
    app = create_app(classifier, audits=audit, settings=settings, atlases=atlas)
    sock = bind(host, port)  # a busy port is one error line, before "serving on"
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    console.print(f"convlens serving {classifier.name} on http://{shown}:{port}/ (Ctrl-C stops)")
    try:
        serve_app(app, sock)
    finally:
        sock.close()


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the app."""
    app.command("serve")(serve)
