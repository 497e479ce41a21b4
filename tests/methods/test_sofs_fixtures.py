"""Shared helpers for the SOFS tests: a seeded random vit_micro14 backbone and SOFS heads in
temporary files, and small synthetic episodes. (No tests here.)"""
from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

import benchmarks.small_backbones  # noqa: F401  (registers the test backbones vit_tiny14, vit_micro14)
from methods.sofs.checkpoint import hparams_of, save_head
from methods.sofs.model import HeadConfig, SOFSHead
from tests.conftest import random_weights

MICRO_DIM = 32
LAYERS = (5, 6, 7, 8, 9, 10)
_DIR = Path(tempfile.mkdtemp(prefix="sofs-tests-"))


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One intra-op thread: the SOFS test tensors are small, and on a shared 2-core machine
    OpenMP threads that wait on each other make them 100x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@lru_cache(maxsize=None)
def micro_backbone_file() -> Path:
    return random_weights("vit_micro14", _DIR / "vit_micro14_seed0.pt")


def micro_head(abnormal_prior: bool = True, seed: int = 0) -> SOFSHead:
    torch.manual_seed(seed)
    return SOFSHead(HeadConfig(backbone_dim=MICRO_DIM, reduce_dim=16, transformer_dim=16,
                               abnormal_prior=abnormal_prior))


@lru_cache(maxsize=None)
def micro_head_file(abnormal_prior: bool = True) -> Path:
    head = micro_head(abnormal_prior)
    path = _DIR / f"sofs_micro_prior{int(abnormal_prior)}.pt"
    return save_head(path, head, hparams_of(head, "vit_micro14", LAYERS))


def make_method(**options):
    from methods.sofs.inference import SOFS, SOFSConfig

    config = SOFSConfig(device="cpu", **options)
    return SOFS(config, {"checkpoint": micro_head_file(), "backbone": micro_backbone_file()})


def textured_image(seed: int, height: int, width: int) -> np.ndarray:
    """A smooth random texture (uint8 RGB) so neighbouring patches resemble each other."""
    rng = np.random.default_rng(seed)
    small = rng.integers(60, 200, size=(height // 16 + 2, width // 16 + 2, 3)).astype(np.float32)
    big = np.kron(small, np.ones((16, 16, 1), np.float32))[:height, :width]
    return (big + rng.normal(0, 4, big.shape)).clip(0, 255).astype(np.uint8)


def defect_episode(height=700, width=1100, defect=(slice(300, 312), slice(500, 530)), seed=0):
    """(support image, support mask, query image) with a dark rectangle defect in both."""
    support = textured_image(seed, height, width)
    mask = np.zeros((height, width), bool)
    mask[defect] = True
    support[mask] = 20
    query = textured_image(seed + 1, height, width)
    query[defect] = 20
    return support, mask, query
