"""The ASGI middleware in front of every route: who may call, how much they may send, how
slowly, and the security headers on every answer.

* Host must name this server (DNS rebinding) and an Origin, when sent, must be this server.
* Request bodies are capped in bytes while they arrive (Content-Length or chunked): past
  the cap the guard answers 413 ``{"error": ...}`` itself, whatever the route was doing
  (a chunked body a route refused early is read on to the cap first, so an oversize one
  is told 413 rather than "invalid multipart").
* A body that stalls for :data:`BODY_IDLE_SECONDS` between two chunks gets 408.
* Every response carries :data:`SECURITY_HEADERS`: a Content-Security-Policy allowing only
  this server's own scripts, styles and images (plus ``data:`` images, the maps), no
  framing by any site, ``nosniff`` and no Referer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from convlens.errors import RequestTooLarge

BODY_IDLE_SECONDS = 30.0
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'")
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


class _Refused(Exception):
    """Raised into the app once the guard has answered a request itself."""


@dataclass
class _Exchange:
    """One request as the guard follows it."""

    started: bool = False
    refused: bool = False
    body_done: bool = False
    received: int = 0


class Guard:
    """ASGI middleware: Host and Origin checks, body cap and stall timeout, headers."""

    def __init__(self, app: Any, settings: Any) -> None:
        self.app = app
        self.settings = settings
        self.hosts = {h.lower() for h in settings.allowed_hosts}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        refusal = self._admission(headers)
        if refusal is not None:
            await send_json(send, *refusal)
            return
        await self._guarded(scope, receive, send, headers.get("content-length"))

    def _admission(self, headers: dict[str, str]) -> tuple[int, str] | None:
        """Why a request is refused before it is read (status, message), or ``None``."""
        host = headers.get("host", "")
        if _host_name(host) not in self.hosts:
            return 403, (f"refused Host {host!r}: this server answers only to "
                         f"{', '.join(sorted(self.hosts))} (DNS-rebinding guard); start it "
                         "with --allow-host NAME (or --host NAME) to serve another name")
        origin = headers.get("origin")
        if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
            return 403, (f"refused Origin {origin!r}: only pages served by this server may "
                         "call it")
        length = headers.get("content-length")
        limit = self.settings.max_upload_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            return 413, too_large(limit)
        return None

    async def _guarded(self, scope: dict, receive: Any, send: Any, length: str | None) -> None:
        """Run the app with the body counted against the cap, stalls timed out and the
        security headers added to every answer."""
        channel = _Channel(receive, send, self.settings.max_upload_bytes, length)
        try:
            await self.app(scope, channel.receive, channel.send)
        except (_Refused, RequestTooLarge):
            if not channel.exchange.refused:
                raise


class _Channel:
    """The guarded ``receive`` and ``send`` of one request: the body is counted against
    ``limit`` and timed out when it stalls, a refusal is answered once (and whatever the
    route made of it afterwards dropped), and every answer gets the security headers."""

    def __init__(self, receive: Any, send: Any, limit: int, length: str | None) -> None:
        self.exchange = _Exchange()
        self._receive = receive
        self._send = send
        self._limit = limit
        self._length = length

    async def refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with ``message`` unless an answer has started; stop the app."""
        exchange = self.exchange
        if not exchange.started and not exchange.refused:
            exchange.refused = True
            await send_json(self._send, status, message)
        exchange.refused = True
        raise _Refused(message)

    async def receive(self) -> dict:
        """The next body message, counted against the cap and timed out when it stalls."""
        exchange = self.exchange
        if exchange.body_done or exchange.refused:
            return await self._receive()  # after the body: only the disconnect remains
        try:
            message = await asyncio.wait_for(self._receive(), BODY_IDLE_SECONDS)
        except TimeoutError:
            await self.refuse(408, f"the request body stalled for {BODY_IDLE_SECONDS:.0f} s; "
                              "send it again")
        if message["type"] == "http.request":
            exchange.received += len(message.get("body", b""))
            if exchange.received > self._limit:
                await self.refuse(413, too_large(self._limit))
            exchange.body_done = not message.get("more_body", False)
        return message

    async def send(self, message: dict) -> None:
        """Pass the app's answer on with the security headers, unless the guard answered."""
        exchange = self.exchange
        if exchange.refused:
            return  # the guard has answered; whatever the route made of it is dropped
        if message["type"] == "http.response.start" and message["status"] >= 400 \
                and self._length is None and not exchange.body_done:
            # a chunked body refused before its end (a parser gave up on it): read on
            # up to the cap, so that an oversize body is told 413, not a parse error
            with contextlib.suppress(_Refused):
                while not exchange.body_done:
                    await self.receive()
            if exchange.refused:
                return
        if message["type"] == "http.response.start":
            exchange.started = True
            message = {**message, "headers": _with_security_headers(message.get("headers"))}
        await self._send(message)

def _with_security_headers(headers: Any) -> list:
    present = {bytes(k).lower() for k, _v in headers or ()}
    return [*(headers or ()), *((k, v) for k, v in SECURITY_HEADERS if k not in present)]


def _host_name(netloc: str) -> str:
    """``"127.0.0.1:8000"`` -> ``"127.0.0.1"``; ``"[::1]:8000"`` -> ``"::1"``."""
    try:
        return (urlsplit(f"//{netloc}").hostname or "").lower()
    except ValueError:
        return ""


def too_large(limit: int) -> str:
    """The 413 message."""
    return (f"upload is larger than the limit of {limit:,} bytes; send a smaller photo or "
            "start the server with a larger --max-upload-mb")


async def send_json(send: Any, status: int, message: str) -> None:
    """Answer ``{"error": message}`` with ``status`` and the security headers."""
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": _with_security_headers([
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())])})
    await send({"type": "http.response.body", "body": body})
