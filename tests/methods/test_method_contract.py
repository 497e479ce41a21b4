"""The method contract in methods/base.py: typed options, the declared class attributes, and the
input/output checks the runner makes once for every method."""
from __future__ import annotations

import typing
from dataclasses import dataclass

import numpy as np
import pytest

from methods.base import (
    REGISTRY, THRESHOLD_PROTOCOLS, MethodError, MethodSpec, Prediction, check_inputs, check_method_class,
    checked_prediction, coerce_options, get_entry,
)


@dataclass(frozen=True)
class Options:
    flag: bool = False
    count: int = 1
    scale: float = 1.0
    name: str = ""
    layers: tuple[int, ...] = ()
    limit: float | None = None
    mode: typing.Literal["fast", "exact"] = "fast"


def test_options_are_read_by_their_declared_type():
    config = coerce_options(Options, {"flag": "yes", "count": "3", "scale": "0.5", "name": "x", "layers": "3+5",
                                      "limit": "none", "mode": "exact"})
    assert config == Options(True, 3, 0.5, "x", (3, 5), None, "exact")
    assert coerce_options(Options, {"limit": "0.25"}).limit == 0.25
    assert coerce_options(Options, {"mode": "exact", "count": 4}) == Options(count=4, mode="exact")  # values pass


@pytest.mark.parametrize("options, message", [
    ({"mode": "quick"}, "option 'mode': 'quick' is not one of fast | exact"),
    ({"count": "three"}, "option 'count': cannot read 'three' as int"),
    ({"flag": "maybe"}, "option 'flag': cannot read 'maybe' as bool"),
    ({"limit": "lots"}, "option 'limit': cannot read 'lots' as float"),
    ({"mdoe": "fast"}, "Options has no option 'mdoe' (did you mean 'mode'?); options: flag, count"),
])
def test_a_bad_option_is_one_line_naming_the_option_and_its_allowed_values(options, message):
    with pytest.raises(MethodError) as info:
        coerce_options(Options, options)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_a_literal_refuses_a_non_string_value_too():
    with pytest.raises(MethodError, match="'3' is not one of fast [|] exact"):
        coerce_options(Options, {"mode": 3})


def test_every_registered_method_declares_the_whole_contract():
    get_entry("panet")  # fills the registry
    for name, entry in REGISTRY.items():
        try:
            cls = MethodSpec.create(name).method_class()
        except ImportError:  # an optional dependency (e.g. transformers) is missing
            continue
        assert cls.threshold_protocol in THRESHOLD_PROTOCOLS, name
        hints = typing.get_type_hints(cls.Config)  # every annotation resolves (no string-named types)
        assert set(hints) >= set(entry.options), name  # a variant fixes only options that exist
        coerce_options(cls.Config, entry.options)  # and to allowed values


def test_the_registry_names_each_class_own_torch_free_config():
    """``MethodEntry.load_config`` (what the CLI checks --set with, without torch) is the class's
    own ``Config``, for every registered method; the modules it comes from import no torch."""
    import subprocess
    import sys

    from methods.registry import CONFIGS
    from tests.conftest import REPO_ROOT

    get_entry("panet")
    assert set(CONFIGS) <= {entry.target for entry in REGISTRY.values()}
    for name, entry in REGISTRY.items():
        try:
            cls = entry.load_class()
        except ImportError:
            continue
        assert entry.load_config() is cls.Config, name
    modules = sorted({target.split(":")[0] for target in CONFIGS.values()})
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_an_option_error_names_the_method_when_given():
    with pytest.raises(MethodError, match=r"^method 'm' option 'mode': 'quick' is not one of fast \| exact"):
        coerce_options(Options, {"mode": "quick"}, "m")
    with pytest.raises(MethodError, match=r"^method 'm' has no option 'mdoe' \(did you mean 'mode'\?\)"):
        coerce_options(Options, {"mdoe": "fast"}, "m")


def test_a_class_missing_part_of_the_contract_is_refused_with_what_it_lacks():
    class NoProtocol:
        Config = Options
        weight_specs = ()
        threshold = 0.5

        def predict(self, support_images, support_masks, query_image):
            return query_image[..., 0] / 255.0

    with pytest.raises(MethodError, match="tests.x:NoProtocol is not a method class: it lacks threshold_protocol"):
        check_method_class(NoProtocol, "tests.x:NoProtocol")
    NoProtocol.threshold_protocol = "native"
    assert check_method_class(NoProtocol, "tests.x:NoProtocol") is NoProtocol
    NoProtocol.threshold_protocol = "oracle"  # not a declared protocol
    with pytest.raises(MethodError, match="threshold_protocol [(]native or deployable[)]"):
        check_method_class(NoProtocol, "tests.x:NoProtocol")


def _episode(k=1, height=8, width=10):
    images = [np.zeros((height, width, 3), np.uint8) for _ in range(k)]
    masks = [np.zeros((height, width), bool) for _ in range(k)]
    return images, masks, np.zeros((height + 2, width, 3), np.uint8)


def test_inputs_every_method_may_rely_on():
    images, masks, query = _episode(k=2)
    check_inputs(images, masks, query)
    with pytest.raises(ValueError, match="need k >= 1 support images with one mask each [(]got 2 images, 1 masks[)]"):
        check_inputs(images, masks[:1], query)
    with pytest.raises(ValueError, match="need k >= 1"):
        check_inputs([], [], query)
    with pytest.raises(ValueError, match="query image must be uint8 RGB"):
        check_inputs(images, masks, query[..., 0])
    with pytest.raises(ValueError, match="support image must be uint8 RGB"):
        check_inputs([images[0].astype(np.float32), images[1]], masks, query)
    with pytest.raises(ValueError, match="support mask must be bool [(]8, 10[)] like its image"):
        check_inputs(images, [masks[0][:4], masks[1]], query)


def test_outputs_are_checked_once_for_shape_and_finite_values():
    score = np.full((10, 10), 0.25)
    prediction = checked_prediction(score, 0.5, (10, 10))
    assert prediction.score_map.dtype == np.float32 and prediction.threshold == 0.5
    assert checked_prediction(Prediction(score, 0.3), 0.5, (10, 10)).threshold == 0.3
    with pytest.raises(ValueError, match=r"method returned a \(10, 10\) map for a \(12, 10\) query"):
        checked_prediction(score, 0.5, (12, 10))
    score[3, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite scores"):
        checked_prediction(score, 0.5, (10, 10))
    with pytest.raises(ValueError, match="non-finite threshold"):
        checked_prediction(Prediction(np.zeros((2, 2)), float("nan")), 0.5, (2, 2))


class _Plugin:
    Mode = typing.Literal["a", "b"]  # an alias on the method class: not resolvable from the module


@dataclass(frozen=True)
class PluginOptions:
    mode: "_Plugin.Mode" = "a"
    steps: "int" = 1
    weird: "NotDefinedAnywhere" = None  # noqa: F821


def test_a_hint_the_module_cannot_resolve_falls_back_to_the_builtin_it_names_or_the_raw_value():
    config = coerce_options(PluginOptions, {"steps": "4", "weird": "x", "mode": "b"})
    assert config == PluginOptions(mode="b", steps=4, weird="x")
