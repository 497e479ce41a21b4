"""Every method by name. Adding a method = one new module in methods/ + one line here.

Variants are entries with fixed options (ablations, resolution policies). Targets are imported
lazily ("module:Class"), and this module imports nothing from ``methods``: ``methods.base`` reads
the registry, the registry never reads ``methods.base`` (no import circle).

A method class imports torch; its options do not: :data:`CONFIGS` names the torch-free dataclass
each class uses as ``Config``, so that ``bench.py`` checks ``--set`` and lists options without
importing torch (a plugin's class not named there is imported for its ``Config``).
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class MethodEntry:
    """A registry entry: ``target`` is imported lazily ("module:Class"); ``options`` fix a variant."""

    name: str
    target: str
    description: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def load_class(self) -> type:
        return _load(self.target)

    def load_config(self) -> type:
        """The class's ``Config`` dataclass, without importing the class when :data:`CONFIGS` names it."""
        return _load(CONFIGS[self.target]) if self.target in CONFIGS else self.load_class().Config


def _load(target: str) -> Any:
    module_name, name = target.split(":")
    return getattr(importlib.import_module(module_name), name)


# method class -> its Config dataclass (torch-free modules; tests check each is the class's Config)
CONFIGS: dict[str, str] = {
    "methods.panet:PANet": "methods.configs:PANetConfig",
    "methods.patchcore:PatchCore": "methods.configs:PatchCoreConfig",
    "methods.padim:PaDiM": "methods.configs:PaDiMConfig",
    "methods.anomalydino:AnomalyDINO": "methods.configs:AnomalyDINOConfig",
    "methods.match:Match": "methods.configs:MatchConfig",
    "methods.seggpt:SegGPT": "methods.configs:SegGPTConfig",
    "methods.sofs.inference:SOFS": "methods.sofs.config:SOFSConfig",
}


REGISTRY: dict[str, MethodEntry] = {}


def register(name: str, target: str, description: str, **options: Any) -> None:
    REGISTRY[name] = MethodEntry(name, target, description, dict(options))


register("panet", "methods.panet:PANet", "training-free PANet: masked-average fg/bg prototypes, cosine x 20")
register("patchcore", "methods.patchcore:PatchCore", "few-shot PatchCore: memory bank of defect-free support patches, 1-NN distance")
register("panet-resize", "methods.panet:PANet", "training-free PANet, query and supports resized (longest side 518)", resolution="resize")
register("patchcore-resize", "methods.patchcore:PatchCore", "few-shot PatchCore, query and supports resized (longest side 518)", resolution="resize")
register("padim", "methods.padim:PaDiM", "few-shot PaDiM: Ledoit-Wolf Gaussian of defect-free support patches (positions pooled), Mahalanobis distance")
register("padim-resize", "methods.padim:PaDiM", "few-shot PaDiM, query and supports resized (longest side = tile size)", resolution="resize")
register("anomalydino", "methods.anomalydino:AnomalyDINO", "AnomalyDINO-style (WACV 2025): 1-NN cosine distance to rotated defect-free support patches, image score = mean of the top 1 % patch scores")
register("match", "methods.match:Match", "training-free matching: best cosine to support defect patches minus best to background patches")
register("seggpt", "methods.seggpt:SegGPT", "SegGPT in-context painting (transformers SegGptForImageSegmentation), k-shot feature ensemble, channel-max score")
register("sofs", "methods.sofs.inference:SOFS", "SOFS (arXiv 2407.21351): non-resizing crops/tiles, intensity downsampling, abnormal prior, learned head")
register("sofs-no-nonresize", "methods.sofs.inference:SOFS", "SOFS ablation: whole query and supports resized to 518 (head trained with --no-non-resizing)", non_resizing=False)
register("sofs-no-intensity", "methods.sofs.inference:SOFS", "SOFS ablation: bilinear mask downsampling (head trained with --no-intensity-downsampling)", intensity_downsampling=False)
register("sofs-no-prior", "methods.sofs.inference:SOFS", "SOFS ablation: no abnormal-prior input (head trained with --no-abnormal-prior; test_time_ablation=true zeroes the channels of a full head)", abnormal_prior=False)
register("sofs-no-mixed-dice", "methods.sofs.inference:SOFS", "SOFS ablation: head trained with plain Dice + CE on defective queries (--no-mixed-normal-dice); inference as sofs", mixed_normal_dice=False)
register("sofs-prior", "methods.sofs.inference:SOFS", "SOFS's training-free abnormal prior alone (the head's input and FAD map): 1 - max cosine to the support's normal tokens", output="prior")
register("sofs-no-fad", "methods.sofs.inference:SOFS", "SOFS ablation: no abnormal-prior fallback for defect-free supports", fad_fallback=False)

_plugins_loaded = False


def load_plugins() -> None:
    """Import the modules named in ``SOFS_BENCH_PLUGINS`` (comma-separated), once: outside packages
    add methods by naming modules that call ``methods.base.register(...)``."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    for module in filter(None, (m.strip() for m in os.environ.get("SOFS_BENCH_PLUGINS", "").split(","))):
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any failure of a user module is one line
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise PluginError(f"SOFS_BENCH_PLUGINS: module '{module}' cannot be imported "
                              f"({type(exc).__name__}{': ' + text if text else ''})") from None
    _plugins_loaded = True


class PluginError(ImportError):
    """A module named in ``SOFS_BENCH_PLUGINS`` failed to import (one line)."""
