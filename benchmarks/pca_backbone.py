"""The alternative embedded backbone that was measured against the seeded random one (and lost).

Writes a vit_tiny14 whose patch embedding is a (partially) whitened PCA basis of 14x14 patches of
the synthetic *base* fold (pos/cls embeddings zeroed), so the comparison can be re-run:

    python -m benchmarks.pca_backbone 0.5 /tmp/pca_0.5.pt
    python bench.py run --methods panet,patchcore --fold base --max-queries-per-class 2 --seeds 1 \\
        --weights panet=/tmp/pca_0.5.pt --weights patchcore=/tmp/pca_0.5.pt --out /tmp/val_pca_0.5
    python bench.py report /tmp/val_pca_0.5

Base-fold validation (16 defective + 4 normal episodes, 1-shot), pixel AUROC:
random (shipped) PANet 71.2 / PatchCore 82.9; PCA power 0.5: 60.6 / 66.4; power 0.25: 75.5 / 69.8.
"""
import sys

import numpy as np
import torch

import benchmarks.small_backbones  # noqa: F401  (registers the test backbones vit_tiny14, vit_micro14)
from datasets.base import load_dataset, read_image
from harness.features import build_vit, images_to_tensor


def make(power: float, out: str, patches_per_image: int = 500, seed: int = 0) -> None:
    dataset = load_dataset("synthetic")
    base = sorted((r for r in dataset.records if r.split == "base"), key=lambda r: r.image_id)
    rng = np.random.default_rng(seed)
    patches = []
    for record in base:
        image = images_to_tensor([read_image(record)])[0].numpy()  # [3, H, W]
        height, width = image.shape[1:]
        for y, x in zip(rng.integers(0, height - 14, patches_per_image), rng.integers(0, width - 14, patches_per_image)):
            patches.append(image[:, y : y + 14, x : x + 14].reshape(-1))
    samples = np.stack(patches).astype(np.float64)  # [N, 588]
    mean = samples.mean(0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(samples - mean, rowvar=False))
    order = np.argsort(eigenvalues)[::-1][:192]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
    projection = (eigenvectors * (eigenvalues + 1e-6 * eigenvalues[0]) ** -power).T  # [192, 588]
    torch.manual_seed(seed)
    state = build_vit("vit_tiny14").state_dict()
    state["patch_embed.proj.weight"] = torch.tensor(projection, dtype=torch.float32).view(192, 3, 14, 14)
    state["patch_embed.proj.bias"] = torch.tensor(-projection @ mean, dtype=torch.float32)
    state["pos_embed"].zero_()
    state["cls_token"].zero_()
    torch.save({k: v.half() for k, v in state.items()}, out)


if __name__ == "__main__":
    make(float(sys.argv[1]), sys.argv[2])
