"""The ``--engine`` options of ``explain``, ``audit``, ``concepts`` and ``evaluate`` (one
definition for all)."""

from __future__ import annotations

from typing import Any

import typer

from convlens.cli._common import fail, finite


def engine_option() -> Any:
    return typer.Option(
        "local", "--engine",
        help="local (this process) or ray (Ray Data: parallel decoding, one model copy per "
             "actor, GPUs per actor when present; pip install 'convlens\\[ray]'). Both give "
             "the same results.")


def ray_address_option() -> Any:
    return typer.Option(
        None, "--ray-address",
        help="With --engine ray: the cluster to join (e.g. auto, ray://head:10001); default "
             "RAY_ADDRESS, else a local Ray instance.")


def actors_option() -> Any:
    return typer.Option(
        None, "--actors", min=1,
        help="With --engine ray: model copies (default one per GPU, else one per CPU).")


def gpus_per_actor_option() -> Any:
    return typer.Option(
        None, "--gpus-per-actor", min=0.0, callback=finite,
        help="With --engine ray: GPUs per actor (default 1 when the cluster has GPUs).")


def engine_settings(engine: str, ray_address: str | None, actors: int | None,
                    gpus_per_actor: float | None) -> tuple[str, dict[str, Any]]:
    """``(engine name, engine options)`` from the options; Ray-only options refused elsewhere.

    The names come from the engine registry, read here rather than at import so that
    ``--help`` imports nothing heavy.
    """
    from convlens.engines.registry import engine_names  # lazy: --help start-up

    if engine not in engine_names():
        fail(f"--engine must be one of {', '.join(engine_names())}; got {engine!r}")
    given = [flag for flag, value in (("--ray-address", ray_address), ("--actors", actors),
                                      ("--gpus-per-actor", gpus_per_actor)) if value is not None]
    if engine != "ray":
        if given:
            fail(f"{', '.join(given)} only apply with --engine ray")
        return engine, {}
    options: dict[str, Any] = {}
    if ray_address is not None:
        options["address"] = ray_address
    if actors is not None:
        options["actors"] = actors
    if gpus_per_actor is not None:
        options["gpus_per_actor"] = gpus_per_actor
    return engine, options
