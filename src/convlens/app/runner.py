"""Serving the app with uvicorn: the port bound before anything is printed, timeouts for
slow and idle connections, and a stop (SIGTERM, Ctrl-C) that cancels running computations.

* :func:`bind` opens the listening socket itself, so a busy port is one clear
  :class:`PortError` line before "serving on ..." (uvicorn would log and exit 3).
* Idle keep-alive connections close after :data:`KEEP_ALIVE_SECONDS`; a connection must
  send its request line and headers within :data:`HEADER_SECONDS` of opening (or of its
  previous response), however it trickles them; a body that stalls between chunks is
  answered 408 by :class:`convlens.app.guard.Guard`.
* On SIGTERM/SIGINT the model gate's stop flag is set first, so a computation in progress
  ends at the next layer the model runs, its request answers 503 and uvicorn's graceful shutdown
  finishes in about a second (bounded by :data:`GRACEFUL_SECONDS` in any case).
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from convlens.errors import PortError

KEEP_ALIVE_SECONDS = 5
HEADER_SECONDS = 10.0
GRACEFUL_SECONDS = 5


def bind(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` (``port`` 0: a free one), or a PortError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise PortError(f"port {port} on {host} is already in use (another server?); stop "
                            "it or choose another port with --port N (--port 0 picks a free "
                            "one)") from None
        if error.errno == errno.EACCES:
            raise PortError(f"not allowed to listen on port {port} (ports below 1024 need "
                            "privileges); choose another with --port N") from None
        raise PortError(f"cannot listen on {host}:{port} ({error.strerror or error}); give "
                        "an address of this machine with --host (default 127.0.0.1)") from None
    sock.set_inheritable(True)
    return sock


def serve_app(app: Any, sock: socket.socket) -> None:
    """Serve ``app`` (from :func:`convlens.app.server.create_app`) on a socket from
    :func:`bind` until SIGTERM or Ctrl-C."""
    config = uvicorn.Config(app, log_level="warning", lifespan="off",
                            timeout_keep_alive=KEEP_ALIVE_SECONDS,
                            timeout_graceful_shutdown=GRACEFUL_SECONDS,
                            http=_slow_client_protocol())
    _server_class()(config).run(sockets=[sock])


def _slow_client_protocol() -> type:
    """uvicorn's h11 protocol with a deadline for each request's line and headers."""
    class SlowClientDeadline(H11Protocol):
        _deadline: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(HEADER_SECONDS, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:  # a request's headers have all arrived
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request on this connection gets the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _too_slow(self) -> None:
            self._deadline = None
            if self.cycle is None or self.cycle.response_complete:
                self.timeout_keep_alive_handler()  # closes the connection

    return SlowClientDeadline


def _server_class() -> type:
    class Server(uvicorn.Server):
        """uvicorn's server, cancelling the app's computations as soon as it is told to stop."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            state = getattr(getattr(self.config.app, "state", None), "convlens", None)
            if state is not None:
                state.gate.stopping.set()
            super().handle_exit(sig, frame)

    return Server
