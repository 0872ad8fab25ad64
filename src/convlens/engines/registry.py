"""The engine registry: :func:`register_engine`, :func:`engine_names`, :func:`get_engine`.

An engine module registers its class with ``@register_engine("name")``; the package
(``convlens/engines/__init__.py``) imports the built-in engine modules once. This module
imports no engine, so an engine is one file (docs/architecture.md, "Engines").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from convlens.engines.base import Engine
from convlens.errors import EngineError, unknown_choice

DEFAULT_ENGINE = "local"
_REGISTRY: dict[str, type] = {}


def register_engine(name: str) -> Callable[[type], type]:
    """Class decorator: ``get_engine(name, **options)`` builds ``cls(**options)``."""

    def decorate(cls: type) -> type:
        _REGISTRY[name] = cls
        return cls

    return decorate


def engine_names() -> tuple[str, ...]:
    """Every registered engine name, in registration order (``local`` first)."""
    return tuple(_REGISTRY)


def get_engine(engine: str | Engine | None, **options: Any) -> Engine:
    """A registered name (``"local"``, ``"ray"``...), an engine object, or None (local).

    ``options`` go to the engine's constructor (``workers`` for local; ``address``,
    ``actors``, ``cpus_per_actor``, ``gpus_per_actor`` for Ray).

    Raises:
        EngineError: An unknown name, or options the engine does not take.
    """
    if engine is None:
        engine = DEFAULT_ENGINE
    if isinstance(engine, str):
        if engine not in _REGISTRY:
            raise EngineError(unknown_choice("engine", engine, engine_names()))
        return _construct(_REGISTRY[engine], options)
    if options:
        raise EngineError("engine options are given to the engine's constructor when an "
                          "engine object is passed")
    return engine


def _construct(kind: type, options: dict[str, Any]) -> Any:
    try:
        return kind(**options)
    except TypeError as error:
        raise EngineError(f"{kind.__name__}: {error}") from None
