"""One backbone pass per unique view: the process-wide feature cache, shared extractors, device
placement and bf16 autocast of the baselines (methods._common)."""
import numpy as np
import pytest
import torch

from methods._common import resolve_device, uint8_to_input
from methods.sharing import FeatureCache, ViewStats, image_key, reset_shared
from methods.base import MethodError, MethodSpec


class Item:
    def __init__(self, size):
        self.size = size

    def nbytes(self):
        return self.size


@pytest.fixture(autouse=True)
def fresh_shared_state():
    reset_shared()
    yield
    reset_shared()


def image(seed=0, shape=(70, 90)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 60, (*shape, 3), dtype=np.uint8)


def mask_of(shape=(70, 90)):
    mask = np.zeros(shape, bool)
    mask[20:34, 30:44] = True
    return mask


def build(name, lite0_file, **options):
    return MethodSpec(name, {"backbone": "efficientnet_lite0", **options}, {"backbone": str(lite0_file)}).build()


def test_cache_evicts_least_recent_by_bytes_and_by_entries():
    cache = FeatureCache(budget_bytes=100, max_entries=3)
    for key in "abc":
        cache.put(key, Item(30))
    cache.get("a")  # a is now the most recent
    cache.put("d", Item(30))  # 120 bytes > 100: b (least recent) goes
    assert set(cache.items) == {"a", "c", "d"} and cache.bytes == 90 and cache.evictions == 1
    small = FeatureCache(budget_bytes=10**6, max_entries=2)
    for key in "xyz":
        small.put(key, Item(1))
    assert list(small.items) == ["y", "z"]


def test_an_entry_larger_than_the_budget_lives_in_the_one_entry_overflow_slot():
    cache = FeatureCache(budget_bytes=100)
    cache.put("small", Item(50))
    big, bigger = Item(500), Item(800)
    cache.put("big", big)
    assert cache.get("big") is big and cache.bytes == 50 and "small" in cache.items  # budget untouched
    cache.put("bigger", bigger)
    assert cache.get("big") is None and cache.get("bigger") is bigger  # the newest replaces it


def test_view_stats_count_passes_and_unique_views():
    stats = ViewStats()
    stats.record("k1", 4, forwarded=True)
    stats.record("k1", 4, forwarded=False)
    stats.record("k2", 1, forwarded=True)
    assert stats.as_dict(keys=False) == {"backbone_passes": 5, "unique_views": 5}


def test_methods_sharing_a_backbone_share_the_model_and_compute_each_view_once(lite0_file):
    panet = build("panet", lite0_file)
    patchcore = build("patchcore", lite0_file)
    assert panet.backbone.features is patchcore.backbone.features  # one model instance
    support, query = image(1), image(2)
    panet.predict([support], [mask_of()], query)
    patchcore.predict([support], [mask_of()], query)
    panet.predict([support], [mask_of()], query)
    assert panet.backbone.stats.passes == 2 == len(panet.backbone.stats.views)  # 2 images, 1 tile each
    assert patchcore.backbone.stats.passes == 0 and len(patchcore.backbone.stats.views) == 2


def test_other_tile_geometry_is_another_view(lite0_file):
    one = build("panet", lite0_file)
    other = build("panet", lite0_file, resolution="resize", input_size=64)
    one.backbone.extract(image(3))
    other.backbone.extract(image(3))
    assert other.backbone.stats.passes == 1


def test_feature_cache_off_recomputes(lite0_file):
    method = build("panet", lite0_file, feature_cache_mb=0)
    method.backbone.extract(image(4))
    method.backbone.extract(image(4))
    assert method.backbone.stats.passes == 2 and len(method.backbone.stats.views) == 1


def test_cached_features_equal_recomputed_ones(lite0_file):
    cached = build("patchcore", lite0_file)
    fresh = build("patchcore", lite0_file, feature_cache_mb=0)
    support, query = image(5), image(6)
    cached.predict([support], [mask_of()], query)
    first = cached.predict([support], [mask_of()], query)  # features from the cache
    again = fresh.predict([support], [mask_of()], query)
    np.testing.assert_array_equal(first.score_map, again.score_map)
    assert first.threshold == again.threshold


def test_image_key_depends_on_content_and_shape():
    a = image(7)
    assert image_key(a) == image_key(a.copy())
    assert image_key(a) != image_key(a.reshape(90, 70, 3))
    b = a.copy()
    b[0, 0, 0] ^= 1
    assert image_key(a) != image_key(b)


# -- device placement -------------------------------------------------------------------------


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(MethodError, match="unknown"):
        resolve_device("abacus")
    if not torch.cuda.is_available():
        with pytest.raises(MethodError, match="CUDA is not available"):
            resolve_device("cuda")


def test_uint8_to_input_matches_images_to_tensor_on_the_given_device():
    from harness.features import images_to_tensor

    crops = [image(8), image(9)]
    out = uint8_to_input(crops, torch.device("cpu"))
    assert out.device == torch.device("cpu")
    assert torch.equal(out, images_to_tensor(crops))


@pytest.mark.parametrize("name", ["panet", "patchcore", "padim", "match"])
def test_every_tensor_of_a_baseline_is_on_its_configured_device(name, lite0_file, monkeypatch):
    """The configured device string flows to the features, masks, centres and NN/Gaussian math:
    every tensor a torch op creates while predicting is on torch.device(config.device)."""
    method = build(name, lite0_file, device="cpu")
    assert method.device == torch.device("cpu") and method.backbone.device == torch.device("cpu")
    feats = method.backbone.extract(image(10))
    assert {t.device for t in (*feats.layers, feats.valid)} == {torch.device("cpu")}
    assert method.backbone.mask_fractions(feats, mask_of()).device == torch.device("cpu")
    assert method.backbone.token_centres(feats).device == torch.device("cpu")
    output = method.predict([image(11)], [mask_of()], image(12))
    score_map = getattr(output, "score_map", output)
    assert score_map.shape == (70, 90) and np.isfinite(score_map).all()


def test_nearest_neighbour_and_match_scores_stay_on_the_input_device():
    from methods.match import match_scores
    from methods.patchcore import _nearest_distance, greedy_coreset

    query, bank = torch.randn(30, 8), torch.randn(20, 8)
    assert _nearest_distance(query, bank).device == query.device
    assert greedy_coreset(torch.randn(40, 200), 5).device == torch.device("cpu")
    assert match_scores(torch.nn.functional.normalize(query, dim=1), bank[:5], bank[5:], mutual_k=3).device == query.device


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["panet", "patchcore"])
def test_baselines_on_cuda_match_cpu(name, lite0_file):
    cpu = build(name, lite0_file, device="cpu")
    gpu = build(name, lite0_file, device="cuda")
    feats = gpu.backbone.extract(image(13))
    assert all(t.is_cuda for t in feats.layers)
    a = cpu.predict([image(14)], [mask_of()], image(15))
    b = gpu.predict([image(14)], [mask_of()], image(15))
    np.testing.assert_allclose(getattr(a, "score_map", a), getattr(b, "score_map", b), atol=1e-3)


# -- precision --------------------------------------------------------------------------------

BF16_FEATURE_RTOL = 0.10  # relative L2 error of the feature maps, bf16 vs fp32 backbone (measured 0.066 / 0.044)
BF16_MAP_ATOL = 0.01  # mean absolute difference of PANet / PatchCore score maps (scores in [0, 1])


def test_bf16_autocast_stays_within_tolerance_on_cpu(tmp_path):
    """The real default backbone (ImageNet EfficientNet-Lite0) on synthetic-default images (the
    default seed's brushed_metal/pit 000 and 001, generated alone: the same bytes, 2 s not 1 min)."""
    from datasets import folder, synthetic
    from datasets.base import read_image, read_mask

    synthetic.generate(tmp_path, seed=0, n_good=1, objects=("brushed_metal",))
    dataset = folder.load(tmp_path, name="synthetic", fmt="synthetic")
    records = [r for r in dataset.records if r.category != "good"][:2]
    support, query = (read_image(r) for r in records)
    mask = read_mask(records[0])
    for name in ("panet", "patchcore"):
        fp32 = MethodSpec.create(name, {"device": "cpu"}).build()
        bf16 = MethodSpec.create(name, {"device": "cpu", "precision": "bf16"}).build()
        a, b = fp32.backbone.extract(query), bf16.backbone.extract(query)
        views = fp32.backbone.stats.views
        assert views and len(bf16.backbone.stats.views) == len(views) and not bf16.backbone.stats.views & views  # other views
        for x, y in zip(a.layers, b.layers):
            assert float((x.float() - y.float()).norm() / x.float().norm()) < BF16_FEATURE_RTOL
        pa, pb = fp32.predict([support], [mask], query), bf16.predict([support], [mask], query)
        diff = np.abs(getattr(pa, "score_map", pa) - getattr(pb, "score_map", pb)).mean()
        assert diff < BF16_MAP_ATOL, (name, diff)


def test_unknown_precision_is_refused(lite0_file):
    with pytest.raises(MethodError, match="option 'precision': 'int4' is not one of fp32 [|] bf16 [|] fp16"):
        build("panet", lite0_file, precision="int4")


def _count_forwards(backbone):
    calls = []
    forward = backbone.forward

    def counted(batch):
        calls.append(batch.shape[0])
        return forward(batch)

    backbone.forward = counted
    return calls


def test_small_images_of_a_chunk_share_backbone_batches_and_give_the_same_features(lite0_file):
    batched = build("panet", lite0_file, batch_size=4, image_batching="on")
    images = [image(seed) for seed in range(10, 16)] + [image(16, shape=(50, 90))]  # two tile shapes
    assert all(batched.batches_with_others(*im.shape[:2]) for im in images)
    calls = _count_forwards(batched.backbone)
    assert batched.prepare(images) is None and sorted(calls) == [1, 2, 4]  # 6 same-shape tiles in 4 + 2; 1 other
    warmed = [batched.backbone.extract(im) for im in images]  # all from the cache now
    assert len(calls) == 3 and batched.backbone.stats.passes == 7 == len(batched.backbone.stats.views)

    reset_shared()
    single = build("panet", lite0_file, batch_size=4, feature_cache_mb=0)
    for im, feats in zip(images, warmed):
        alone = single.backbone.extract(im)
        assert alone.tiles == feats.tiles and alone.content == feats.content
        for a, b in zip(alone.layers, feats.layers):
            torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)  # float16 features; batch composition differs
        torch.testing.assert_close(alone.valid, feats.valid)


def test_large_images_are_left_to_extract_and_batching_is_off_by_default(lite0_file):
    method = build("panet", lite0_file, batch_size=2, input_size=64, image_batching="on")
    assert method.batches_with_others(60, 60) and not method.batches_with_others(70, 140)  # 1 tile vs 2 x 3 tiles
    default = build("panet", lite0_file, batch_size=2, input_size=64)
    assert not default.batches_with_others(60, 60)  # results must not depend on batch-mates
    assert not build("panet", lite0_file, batch_size=2, input_size=64, image_batching="off").batches_with_others(60, 60)


def test_a_stitched_map_is_copied_to_the_host_once_finished(lite0_file, monkeypatch):
    method = build("panet", lite0_file, device="cpu", input_size=64)
    feats = method.backbone.extract(image(20))  # 70 x 90 at 64-px tiles: 2 x 2 tiles
    assert len(feats.tiles) == 4
    copies = []
    cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: copies.append(tuple(self.shape)) or cpu(self, *a, **k))
    out = method.backbone.to_image(feats, torch.rand(len(feats.tiles), *feats.grid))
    assert copies == [(70, 90)] and out.shape == (70, 90) and out.dtype == np.float32


def test_warming_stops_at_half_the_cache_budget_so_nothing_warmed_is_evicted_unused(lite0_file):
    method = build("panet", lite0_file, batch_size=2, image_batching="on", feature_cache_mb=1)
    images = [image(100 + seed) for seed in range(40)]
    per_image = method.backbone._extract([images[0]])[0].nbytes()
    warmed = method.backbone.warm(images)
    budget = method.backbone.cache.budget_bytes
    assert warmed < len(images) and (warmed - 8) * per_image < budget / 2 <= warmed * per_image  # steps of 4 x 2
    assert method.backbone.cache.evictions == 0
    assert method.backbone.stats.passes == warmed
