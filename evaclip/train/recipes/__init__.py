"""Training recipes: small functions that return a complete :class:`~evaclip.train.config.TrainConfig`.

``evaclip train RECIPE key=value ...`` starts from ``get_recipe(RECIPE)`` and applies the overrides. A recipe
module registers its functions with :func:`register`; the modules listed in ``_MODULES`` are imported lazily, and
so are the recipe modules of installed extensions (:mod:`evaclip.plugins`, e.g. the demo's ``evaclip_demo.recipes``).
A published recipe also records where its numbers come from and the published run's GPU count (its
``data.batch_size`` is per GPU), so ``evaclip train --list`` can give its global batch and samples seen.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from evaclip.errors import ConfigError
from evaclip.plugins import recipe_modules
from evaclip.train.config import TrainConfig

_MODULES = ("evaclip.train.recipes.tiny", "evaclip.train.recipes.paper", "evaclip.train.recipes.eva02")


@dataclass(frozen=True)
class RecipeInfo:
    build: Callable[[], TrainConfig]
    doc: str
    source: str  # where the settings come from: a paper table or an official command
    gpus: int | None  # data-parallel ranks of the published run; None: whatever this run has


_RECIPES: dict[str, RecipeInfo] = {}


def register(name: str, *, source: str = "evaclip", gpus: int | None = None):
    def wrap(fn: Callable[[], TrainConfig]):
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _RECIPES[name] = RecipeInfo(fn, doc, source, gpus)
        return fn
    return wrap


def find_recipe(name: str) -> RecipeInfo | None:
    """The registered recipe ``name``, or None."""
    _load_all()
    return _RECIPES.get(name)


def recipe_table() -> list[dict]:
    """One row per recipe: name, source, GPUs, global batch, steps and samples seen (at the published GPU count)."""
    _load_all()
    rows = []
    for name, info in sorted(_RECIPES.items()):
        cfg = info.build()
        batch = cfg.data.batch_size * info.gpus if info.gpus else None
        rows.append({"recipe": name, "source": info.source, "gpus": info.gpus, "global_batch": batch,
                     "steps": cfg.steps, "samples_seen": batch * cfg.steps if batch else None, "doc": info.doc})
    return rows


def _load_all() -> None:
    for m in (*_MODULES, *recipe_modules()):
        try:
            importlib.import_module(m)
        except ModuleNotFoundError as e:
            if e.name is None or not m.startswith(e.name):  # an extension's own import failed: say so
                raise
            raise ConfigError(f"recipe module {m!r} (an installed extension or $EVACLIP_PLUGINS) cannot be "
                              f"imported: no module named {e.name!r}") from None


def list_recipes() -> dict[str, str]:
    """Recipe name -> one-line description."""
    _load_all()
    return {k: v.doc for k, v in sorted(_RECIPES.items())}


def get_recipe(name: str) -> TrainConfig:
    _load_all()
    if name not in _RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of: {', '.join(sorted(_RECIPES))}")
    cfg = _RECIPES[name].build()
    cfg.recipe = name
    return cfg
