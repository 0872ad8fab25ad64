"""``convlens serve``: a local web page over the library (FastAPI app in :mod:`.server`).

Needs the ``serve`` extra (``pip install 'convlens[serve]'``): FastAPI, uvicorn and
python-multipart. See docs/architecture.md, "Layers and the direction data flows": the app
sits with the CLI at the right end and calls only the public library functions.
"""
