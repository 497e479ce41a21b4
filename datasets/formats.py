"""Every dataset format by name, like ``methods/registry.py`` for methods.

A format is a module ``datasets/<name>.py`` with ``detect(root) -> bool`` and ``load(root) ->
Dataset``; adding one = that module + its name in ``ADAPTERS`` (``datasets/mvtec.py`` is a short one
to copy). A generated dataset is a spec prefix (``synthetic`` / ``synthetic:<seed>``) naming a
``"module:function"`` that takes ``seed``. Modules are imported by name when used, so this file
imports nothing from ``datasets`` and ``datasets.base`` imports no format module: no import circle.
"""
from __future__ import annotations

import importlib
from typing import Callable

# Detection order: layouts with a distinctive marker first, the permissive generic one last.
ADAPTERS = ("vision", "mvtec", "opendomain", "defect_spectrum", "visa", "severstal", "dagm", "kolektor", "folder")

# Spec prefix -> generator ("module:function(seed=...) -> Dataset").
GENERATED = {"synthetic": "datasets.synthetic:load_synthetic"}


def adapter(name: str):
    """The module of format ``name`` (``detect`` / ``load``)."""
    return importlib.import_module(f"datasets.{name}")


def generator(prefix: str) -> Callable:
    module_name, function = GENERATED[prefix].split(":")
    return getattr(importlib.import_module(module_name), function)
