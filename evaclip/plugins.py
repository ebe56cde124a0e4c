"""Extensions that live in other packages: recipes, model configs and ``evaclip`` commands.

A package extends evaclip by declaring entry points in its ``pyproject.toml``; evaclip reads them lazily (a
recipe or model name that is not built in, ``evaclip train --list``, ``evaclip models``, the command table)::

    [project.entry-points."evaclip.recipes"]        # a module whose import registers recipes
    mine = "my_package.recipes"
    [project.entry-points."evaclip.model_configs"]  # a package whose folder holds model-config JSON files
    mine = "my_package.model_configs"
    [project.entry-points."evaclip.commands"]       # NAME = a module with HELP, add_arguments(parser), run(args)
    mine = "my_package.cli"

Without installing a package, ``EVACLIP_PLUGINS=my_package.recipes,...`` names extra recipe modules. The
weak-to-strong demo (``evaclip_demo``, beside this library in the repository) is such an extension: its
recipes, model configs and the ``demo`` and ``data`` commands come through these entry points, so the library
never imports it.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path

ENV_VAR = "EVACLIP_PLUGINS"


@lru_cache(maxsize=None)
def _group(group: str) -> tuple[tuple[str, str], ...]:
    """(name, module) of every installed entry point of ``group``, sorted by name."""
    return tuple(sorted((ep.name, ep.value) for ep in entry_points(group=group)))


def recipe_modules() -> list[str]:
    """Modules whose import registers extra recipes: installed entry points, then ``$EVACLIP_PLUGINS``."""
    extra = [m.strip() for m in os.environ.get(ENV_VAR, "").split(",") if m.strip()]
    return [m for _, m in _group("evaclip.recipes")] + extra


def model_config_dirs() -> list[Path]:
    """Folders of extra model-config JSON files, found without importing their packages."""
    dirs = []
    for _, module in _group("evaclip.model_configs"):
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations:
            dirs.extend(Path(p) for p in spec.submodule_search_locations)
    return dirs


def commands() -> dict[str, str]:
    """Extra ``evaclip`` commands: name -> module."""
    return dict(_group("evaclip.commands"))
