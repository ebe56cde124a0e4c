"""Training recipes: small functions that return a complete :class:`~evaclip.train.config.TrainConfig`.

``evaclip train RECIPE key=value ...`` starts from ``get_recipe(RECIPE)`` and applies the overrides. A recipe
module registers its functions with :func:`register`; the modules listed in ``_MODULES`` are imported lazily.
"""
from __future__ import annotations

import importlib
from typing import Callable

from evaclip.errors import ConfigError
from evaclip.train.config import TrainConfig

_MODULES = ("evaclip.train.recipes.tiny", "evaclip.train.recipes.paper", "evaclip.train.recipes.eva02",
            "evaclip.train.recipes.demo")
_RECIPES: dict[str, tuple[Callable[[], TrainConfig], str]] = {}


def register(name: str):
    def wrap(fn: Callable[[], TrainConfig]):
        _RECIPES[name] = (fn, (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "")
        return fn
    return wrap


def _load_all() -> None:
    for m in _MODULES:
        try:
            importlib.import_module(m)
        except ModuleNotFoundError as e:
            if e.name != m:
                raise


def list_recipes() -> dict[str, str]:
    """Recipe name -> one-line description."""
    _load_all()
    return {k: v[1] for k, v in sorted(_RECIPES.items())}


def get_recipe(name: str) -> TrainConfig:
    _load_all()
    if name not in _RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of: {', '.join(sorted(_RECIPES))}")
    cfg = _RECIPES[name][0]()
    cfg.recipe = name
    return cfg
