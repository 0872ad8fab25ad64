"""Model work for the server: one computation at a time, each one cancellable.

A request's computation runs in its own daemon thread while the request's coroutine waits
without holding a thread of the server's pool, so ``/api/info``, the photos and the static
files keep answering. The coroutine polls ``request.is_disconnected()``; when the client
has gone, or the server is stopping (SIGTERM), it sets the computation's cancel flag.
The flag is checked by a forward pre-hook on every module of the model: each layer of each
forward pass of every method (a ScoreCAM chunk of 64 masked copies takes seconds on a CPU;
one of its layers, a fraction of that) is a unit of work, so a cancelled computation stops
at the next layer, the library's own ``finally`` blocks remove its hooks, and the model
lock is released
(docs/architecture.md, "convlens serve under load").
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from convlens._hooks import HookSession
from convlens.errors import Cancelled

T = TypeVar("T")
POLL_SECONDS = 0.05


class ModelGate:
    """The model's lock, the server-wide stop flag and the cancel hook, in one place.

    Attributes:
        lock: Held by the one computation using the model.
        stopping: Set on shutdown: every computation, running or waiting, is cancelled.
    """

    def __init__(self, module: Any) -> None:
        self.module = module
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def run(self, work: Callable[[], T], cancel: threading.Event) -> T:
        """Run ``work()`` under the model lock (call from a worker thread); raise
        :class:`Cancelled` at the next layer the model runs once ``cancel`` or
        :attr:`stopping` is set."""
        while not self.lock.acquire(timeout=POLL_SECONDS):
            self._check(cancel)
        try:
            self._check(cancel)

            def check(_module: Any, _inputs: Any) -> None:
                self._check(cancel)

            # One scoped session (docs/architecture.md, "Hook lifecycle"): the checks are
            # removed when the work ends, by return, exception or cancellation.
            with HookSession() as session:
                for module in self.module.modules():
                    session.forward_pre_hook(module, check)
                return work()
        finally:
            self.lock.release()
            give_back_memory()

    def _check(self, cancel: threading.Event) -> None:
        if self.stopping.is_set():
            raise Cancelled("the server is stopping; this computation was cancelled")
        if cancel.is_set():
            raise Cancelled("the request was cancelled (the client went away)")


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to call
        return None


_TRIM = _malloc_trim()


def give_back_memory() -> None:
    """Return the allocator's free pages to the system (glibc ``malloc_trim``; a no-op
    elsewhere). A computation's tensors are freed when it ends, but glibc keeps freed
    blocks below its mmap threshold (which grows to 32 MB) in the arenas of the threads
    that used them; without this the server's resident size creeps up with every
    request of a new shape. It costs a few milliseconds per computation."""
    if _TRIM is not None:
        _TRIM(0)


async def run_model(gate: ModelGate, request: Any, work: Callable[[], T]) -> T:
    """Run ``work()`` through ``gate`` in a daemon thread and await its result.

    While waiting, polls ``request.is_disconnected()`` (``request`` may be ``None``) and the
    gate's stop flag; on either, or when this coroutine is itself cancelled, the
    computation is cancelled and :class:`Cancelled` is raised here at once (the worker
    stops at its next forward pass and releases the lock).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()
    cancel = threading.Event()

    def deliver(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def target() -> None:
        result, error = None, None
        try:
            result = gate.run(work, cancel)
        except BaseException as caught:  # noqa: BLE001 - handed to the awaiting request
            error = caught
        with contextlib.suppress(RuntimeError):  # the event loop is gone: server stopped
            loop.call_soon_threadsafe(deliver, result, error)

    threading.Thread(target=target, name="convlens-model", daemon=True).start()
    try:
        while True:
            done, _pending = await asyncio.wait({future}, timeout=POLL_SECONDS)
            if done:
                return future.result()
            if gate.stopping.is_set():
                raise Cancelled("the server is stopping; this computation was cancelled")
            if request is not None and await request.is_disconnected():
                raise Cancelled("the request was cancelled (the client went away)")
    finally:
        cancel.set()
        future.cancel()  # a result arriving later is dropped (a no-op when it is done)
