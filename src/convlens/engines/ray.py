"""The Ray engine: units decoded by Ray Data tasks, workers in a fixed actor pool.

Pipeline (one Ray Data dataset, streamed)::

    from_items(units)  ->  map_batches(decode_units)       parallel tasks: hash, skip, decode
                       ->  map_batches(UnitActor, pool)    one model load per actor
                       ->  iter_rows() in this process     the caller writes the results

A *unit* is ``batch_size`` consecutive entries, the same slices the local engine batches,
so a worker sees exactly the batches it would see locally and the results are identical.
Decoded tensors travel through Ray's object store as float32 arrays; the worker's result
comes back pickled. Where Ray's resources allow it, Ray fuses the decoding into the actors'
processes (CPU-only clusters); with GPUs requested per actor, decoding stays in CPU tasks.

Connecting: an already initialised Ray is used as it is; otherwise ``address`` (or the
``RAY_ADDRESS`` environment variable) names a cluster to join, and without either a local
Ray instance is started with this machine's CPUs and GPUs. Ray is left running after a run
(``ray.shutdown()`` stops it), so a notebook pays its start-up once.

Errors: a :class:`~convlens.errors.ConvlensError` raised in a worker reaches the caller as
itself; anything else becomes one :class:`~convlens.engines.EngineError` naming the unit's
files. A killed run loses only the units not yet written by the caller (the audit resumes).
See docs/architecture.md, "Engines".
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import site
import socket
import sys
import sysconfig
import warnings
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from convlens.engines.base import UnitResult, WorkerFactory
from convlens.engines.registry import register_engine
from convlens.errors import ConvlensError, EngineError
from convlens.io.datasets import Entry, ImageDataset, collate
from convlens.preprocessing import Preprocessing

INSTALL_HINT = "install it with: pip install 'convlens[ray]'"


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise EngineError(f"the ray engine needs Ray Data, which is not installed ({error}); "
                          f"{INSTALL_HINT}, or use --engine local") from None
    return ray


def ray_available() -> bool:
    """Whether Ray Data can be imported (for callers that offer the engine conditionally)."""
    try:
        _import_ray()
    except EngineError:
        return False
    return True


@register_engine("ray")
class RayEngine:
    """Run units on a Ray cluster (or a local Ray instance).

    Args:
        address: A cluster to join (``"ray://head:10001"``, ``"auto"``); default the
            ``RAY_ADDRESS`` environment variable, else a new local instance.
        actors: Worker actors (model copies); default one per GPU of the cluster, or one
            per ``cpus_per_actor`` CPUs when it has none.
        cpus_per_actor: CPUs reserved per actor; also its torch thread count.
        gpus_per_actor: GPUs per actor; default 1 when the cluster has GPUs, else 0.
        init_options: Extra keyword arguments for ``ray.init`` when this engine starts Ray
            (``object_store_memory``, ``num_cpus``...).
    """

    name = "ray"

    def __init__(self, address: str | None = None, actors: int | None = None,
                 cpus_per_actor: float = 1, gpus_per_actor: float | None = None,
                 init_options: dict[str, Any] | None = None) -> None:
        if actors is not None and (not isinstance(actors, int) or actors < 1):
            raise EngineError(f"actors must be a positive integer, got {actors!r}")
        if cpus_per_actor <= 0:
            raise EngineError(f"cpus_per_actor must be positive, got {cpus_per_actor!r}")
        if gpus_per_actor is not None and gpus_per_actor < 0:
            raise EngineError(f"gpus_per_actor must be 0 or more, got {gpus_per_actor!r}")
        _import_ray()  # fail before any work is done when Ray is missing
        self.address = address
        self.actors = actors
        self.cpus_per_actor = cpus_per_actor
        self.gpus_per_actor = gpus_per_actor
        self.init_options = dict(init_options or {})

    def __repr__(self) -> str:
        return (f"RayEngine(address={self.address!r}, actors={self.actors}, "
                f"cpus_per_actor={self.cpus_per_actor}, gpus_per_actor={self.gpus_per_actor})")

    # -- cluster

    def connect(self) -> Any:
        """Initialise Ray if needed (quietly); returns the ``ray`` module."""
        ray = _import_ray()
        if not ray.is_initialized():
            # Ray's C++ core logs a warning-like "E" line per actor pool (constructor arguments
            # in the object store); failures still surface as Python exceptions. Set
            # RAY_BACKEND_LOG_LEVEL=info to see everything when debugging a cluster.
            os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
            address = self.address or os.environ.get("RAY_ADDRESS") or None
            if address:
                _check_reachable(address)
            options = {"include_dashboard": False, "log_to_driver": False,
                       "logging_level": logging.ERROR, **self.init_options}
            try:
                ray.init(address=address, **options)
            except (ConnectionError, RuntimeError, ValueError) as error:
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise EngineError(f"could not start or join {where}: {error}") from None
        _quiet_ray_data(ray)
        return ray

    def plan(self, ray: Any) -> tuple[int, float, float]:
        """``(actors, cpus_per_actor, gpus_per_actor)`` for this cluster."""
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        cpus = float(resources.get("CPU", 1))
        per_gpu = self.gpus_per_actor if self.gpus_per_actor is not None else (
            1.0 if gpus >= 1 else 0.0)
        if self.actors is not None:
            actors = self.actors
        elif per_gpu > 0:
            actors = max(1, min(int(gpus // per_gpu), int((cpus - 1) // self.cpus_per_actor)))
        else:
            actors = max(1, int(cpus // self.cpus_per_actor))
        if per_gpu > 0 and actors * per_gpu > gpus:
            raise EngineError(f"{actors} actor(s) x {per_gpu} GPU need {actors * per_gpu:g} "
                              f"GPUs; the cluster has {gpus:g}")
        # Ray would wait for these resources forever: refuse instead. Without GPUs decoding
        # is fused into the actors; with GPUs it runs in CPU tasks, which need a CPU left.
        needed = actors * self.cpus_per_actor + (1 if per_gpu > 0 else 0)
        if needed > cpus:
            spare = " plus 1 to decode" if per_gpu > 0 else ""
            raise EngineError(f"{actors} actor(s) x {self.cpus_per_actor:g} CPU{spare} need "
                              f"{needed:g} CPUs; the cluster has {cpus:g}: lower actors or "
                              "cpus_per_actor (--actors)")
        return actors, self.cpus_per_actor, per_gpu

    # -- the run

    def map_units(self, entries: Sequence[Entry], preprocessing: Preprocessing,
                  factory: WorkerFactory, *, batch_size: int, salt: str = "",
                  skip: Collection[str] = frozenset(), max_pixels: int | None = None
                  ) -> Iterator[UnitResult]:
        if batch_size < 1:
            raise ConvlensError(f"batch_size must be at least 1, got {batch_size}")
        entries = list(entries)
        if not entries:
            return
        ray = self.connect()
        actors, cpus, gpus = self.plan(ray)
        ship_code_by_value(ray, factory)
        units = [{"unit": u, "start": start,
                  "entries": pickle.dumps(entries[start:start + batch_size])}
                 for u, start in enumerate(range(0, len(entries), batch_size))]
        dataset = ray.data.from_items(units, override_num_blocks=len(units))
        # Same resources as the actors on a CPU cluster: Ray fuses decoding into them (no
        # tensor crosses processes). With GPUs, decoding stays in CPU tasks of its own.
        decoded = dataset.map_batches(
            decode_units, batch_size=1, batch_format="numpy", num_cpus=1 if gpus else cpus,
            fn_kwargs={"preprocessing": preprocessing, "salt": salt,
                       "skip": frozenset(skip), "max_pixels": max_pixels})
        results = decoded.map_batches(
            UnitActor, batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus, num_gpus=gpus,
            fn_constructor_kwargs={"factory": factory, "threads": max(1, int(cpus))})
        try:
            for row in results.iter_rows():
                batch = pickle.loads(row["meta"])
                outcome = pickle.loads(row["result"])
                if isinstance(outcome, _Failure):
                    raise outcome.error
                yield UnitResult(int(row["unit"]), batch, outcome)
        except ConvlensError:
            raise
        except Exception as error:  # Ray wraps worker errors in its own types
            raise _worker_error(error) from None


def _installed_roots() -> tuple[str, ...]:
    """Folders of installed code: the standard library and the site-packages folders."""
    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths |= set(site.getsitepackages()) | {site.getusersitepackages()}
    return tuple(os.path.realpath(p) + os.sep for p in paths if p)


def _local_code(module_name: str, installed: tuple[str, ...]) -> bool:
    """Whether ``module_name`` is code a Ray worker may not be able to import: a file of the
    user's (next to a script, in a notebook's folder, loaded from ``--model file.py``) rather
    than an installed package (under ``installed``), the standard library or convlens."""
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if module is None or module_name == "__main__" or file is None:
        return False  # __main__ and built-ins: cloudpickle handles them already
    if module_name.split(".")[0] == "convlens":
        return False
    return not os.path.realpath(file).startswith(installed)


def ship_code_by_value(ray: Any, factory: Any) -> list[str]:
    """Let the model's own code travel with it: register the modules defining the classes
    of every ``nn.Module`` the factory holds, when they are the user's local files, to be
    pickled by value (``cloudpickle.register_pickle_by_value``), so that workers need not
    import them. Installed packages (torchvision, timm) are imported on the workers as
    usual. Returns the module names registered."""
    from torch import nn

    found: set[str] = set()
    for value in vars(factory).values():
        module = getattr(value, "module", value)
        if isinstance(module, nn.Module):
            found |= {type(m).__module__ for m in module.modules()}
    installed = _installed_roots()
    registered = sorted(name for name in found if _local_code(name, installed))
    for name in registered:
        ray.cloudpickle.register_pickle_by_value(sys.modules[name])
    return registered


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, with one line, when ``host:port`` (or ``ray://host:port``) does not
    answer: ``ray.init`` would otherwise retry for minutes, printing its C++ warnings.
    ``"auto"``, ``"local"`` and addresses without a port are left to Ray."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        raise EngineError(f"could not reach the Ray cluster at {address} "
                          f"({error.strerror or error}); check --ray-address (or RAY_ADDRESS), "
                          "or leave it out to start a local Ray instance") from None


def _quiet_ray_data(ray: Any) -> None:
    """No progress bars or per-run log banners from Ray Data: convlens reports progress."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


_RAISED = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$")


def _worker_error(error: BaseException) -> EngineError:
    """One EngineError naming what went wrong in a worker, from the traceback text Ray
    forwards (the first exception line that is not one of Ray's own)."""
    for line in str(error).splitlines():
        found = _RAISED.match(line.strip())
        if found and not found.group(1).startswith("ray."):
            return EngineError(f"a Ray worker failed: {found.group(1)}: {found.group(2)}")
    return EngineError(f"a Ray worker failed: {type(error).__name__}: "
                       f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}")


@dataclass
class _Failure:
    """A ConvlensError raised by the worker, sent back as a result so that the caller gets
    the same exception (type and message) as on the local engine."""

    error: ConvlensError


# ------------------------------------------------------------ what runs on the cluster


def decode_units(rows: dict[str, np.ndarray], *, preprocessing: Preprocessing, salt: str,
                 skip: frozenset[str], max_pixels: int | None) -> dict[str, Any]:
    """Ray Data task: hash, skip and decode the entries of each unit in ``rows``.

    Returns, per unit, the preprocessed tensor (``(n, C, H, W)`` float32, ``n`` may be 0) and
    the batch's metadata (items with their global positions, bad files, skipped items)
    pickled.
    """
    out: dict[str, list[Any]] = {"unit": [], "x": [], "meta": []}
    for unit, start, blob in zip(rows["unit"], rows["start"], rows["entries"]):
        dataset = ImageDataset(pickle.loads(blob), preprocessing, salt=salt, skip=skip,
                               keep_images=False, max_pixels=max_pixels)
        batch = collate([dataset[i] for i in range(len(dataset))])
        for item in (*batch.items, *batch.skipped):
            item.index += int(start)
        channels, (height, width) = preprocessing.channels, preprocessing.input_size
        x = (batch.x.numpy() if batch.x is not None
             else np.zeros((0, channels, height, width), np.float32))
        out["unit"].append(int(unit))
        out["x"].append(x)
        out["meta"].append(pickle.dumps(replace(batch, x=None)))
    return {"unit": np.array(out["unit"]), "x": _ragged(out["x"]),
            "meta": np.array(out["meta"], dtype=object)}


def _ragged(arrays: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    if len({a.shape for a in arrays}) == 1:
        return np.stack(arrays)
    holder = np.empty(len(arrays), dtype=object)
    holder[:] = arrays
    return holder


class UnitActor:
    """Ray Data actor: builds the worker once (model on its GPU, if it was given one) and
    runs it on each decoded unit."""

    def __init__(self, factory: WorkerFactory, threads: int = 1) -> None:
        import torch

        self.threads = threads
        torch.set_num_threads(threads)
        device = None
        import ray

        # Only inside a Ray worker: ray.get_gpu_ids() would start Ray in a plain process.
        if ray.is_initialized() and ray.get_gpu_ids() and torch.cuda.is_available():
            device = "cuda"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.worker = factory.build(device)

    def __call__(self, rows: dict[str, Any]) -> dict[str, Any]:
        import torch

        # Ray Data calls this from a thread of its own, and OpenMP's thread count is set per
        # thread: without this, every actor computes with one thread per core of the node
        # (measured here: 2 actors on 2 cores took 1.9x the CPU time per photo).
        torch.set_num_threads(self.threads)
        out: dict[str, list[Any]] = {"unit": [], "meta": [], "result": []}
        for unit, x, meta in zip(rows["unit"], rows["x"], rows["meta"]):
            batch = pickle.loads(meta)
            result = None
            if len(batch.items):
                batch.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
                try:
                    result = self.worker(batch)
                except ConvlensError as error:
                    result = _Failure(error)
                batch.x = None
            out["unit"].append(int(unit))
            out["meta"].append(meta)
            out["result"].append(pickle.dumps(result))
        return {"unit": np.array(out["unit"]), "meta": np.array(out["meta"], dtype=object),
                "result": np.array(out["result"], dtype=object)}
