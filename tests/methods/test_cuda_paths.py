"""The methods on a CUDA device: placement, agreement with the CPU, bf16 autocast, a training step.

Every test is marked ``cuda`` (skipped without a CUDA device; ``python -m benchmarks.gpu_check``
runs them on a GPU node).
"""
# ruff: noqa: F401  (single_thread is an autouse fixture)
import numpy as np
import pytest
import torch

from methods.base import MethodSpec
from methods.sharing import reset_shared
from tests.methods.test_sofs_fixtures import defect_episode, micro_backbone_file, micro_head_file, single_thread

pytestmark = pytest.mark.cuda

CPU_CUDA_ATOL = 1e-3  # score maps in [0, 1]; cuDNN convolutions run in TF32 by default


@pytest.fixture(autouse=True)
def fresh_shared_state():
    reset_shared()
    yield
    reset_shared()


def _sofs(device: str):
    from methods.sofs.inference import SOFS, SOFSConfig

    return SOFS(SOFSConfig(device=device, image_size=224, crop_size=224),
                {"checkpoint": micro_head_file(), "backbone": micro_backbone_file()})


def test_sofs_on_cuda_keeps_its_model_there_and_matches_cpu():
    support, mask, query = defect_episode(300, 500, (slice(100, 110), slice(200, 220)))
    gpu = _sofs("cuda")
    assert {p.device.type for p in gpu.model.parameters()} == {"cuda"}
    a = _sofs("cpu").predict([support], [mask], query)
    b = gpu.predict([support], [mask], query)
    assert b.shape == (300, 500) and b.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=CPU_CUDA_ATOL)


def test_sofs_training_step_runs_on_cuda(tmp_path, monkeypatch):
    from dataclasses import replace

    import methods.sofs.train as train_module
    from tests.methods.test_sofs_train import _config, tiny_dataset

    devices = []
    original = train_module.micro_batch_loss

    def spy(model, *args, **kwargs):
        devices.append(next(model.head.parameters()).device.type)
        loss = original(model, *args, **kwargs)
        devices.append(loss.device.type)
        return loss

    monkeypatch.setattr(train_module, "micro_batch_loss", spy)
    data = tiny_dataset()
    result = train_module.train(data, replace(_config(), device="cuda", steps=1), tmp_path, progress=False,
                                read_image=data.read_image, read_mask=data.read_mask)
    assert result.step == 1 and np.isfinite(result.losses).all()
    assert set(devices) == {"cuda"}
    saved = torch.load(result.head_path, weights_only=True)["state_dict"]
    assert {t.device.type for t in saved.values()} == {"cpu"}  # the head file loads anywhere


@pytest.mark.parametrize("name", ["panet", "patchcore"])
def test_bf16_autocast_on_cuda_stays_within_tolerance(name, lite0_file):
    from tests.methods.test_feature_sharing import BF16_MAP_ATOL, image, mask_of

    def build(precision):
        return MethodSpec(name, {"backbone": "efficientnet_lite0", "device": "cuda", "precision": precision,
                                 "feature_cache_mb": 0}, {"backbone": str(lite0_file)}).build()

    fp32, bf16 = build("fp32"), build("bf16")
    assert all(t.is_cuda for t in bf16.backbone.extract(image(1)).layers)
    a = fp32.predict([image(2)], [mask_of()], image(3))
    b = bf16.predict([image(2)], [mask_of()], image(3))
    diff = np.abs(getattr(a, "score_map", a) - getattr(b, "score_map", b)).mean()
    assert diff < BF16_MAP_ATOL


def test_seggpt_on_cuda_matches_cpu(tmp_path):
    pytest.importorskip("transformers")
    from tests.methods.test_seggpt import episode, tiny_model

    tiny_model().save_pretrained(tmp_path)
    supports, masks, query = episode(np.random.default_rng(0), k=2)
    maps = [MethodSpec("seggpt", {"device": device}, {"model": str(tmp_path)}).build().predict(supports, masks, query)
            for device in ("cpu", "cuda")]
    np.testing.assert_allclose(maps[0], maps[1], atol=CPU_CUDA_ATOL)
