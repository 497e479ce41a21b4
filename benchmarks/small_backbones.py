"""Small random-weight backbones for tests and benchmarks, registered into ``harness.features.ARCHS``
on import (``import benchmarks.small_backbones``). They carry no defect signal: they exercise the
shapes and code paths of the real backbones in seconds on a CPU."""
from harness.constants import SOFS_LAYERS
from harness.features import BackboneArch, register_arch

SMALL_ARCHS = {
    # DINOv2's ViT layout (patch 14, 11 blocks so that SOFS's blocks 5..10 exist), 192 dims; tests
    # write seeded random weights for it (benchmarks/pca_backbone.py a PCA patch embedding).
    "vit_tiny14": BackboneArch(
        "vit_small_patch14_dinov2", "vit", dict(embed_dim=192, depth=11, num_heads=3),
        default_levels=SOFS_LAYERS, note="random weights written by tests (no defect signal)",
    ),
    # The same layout, tiny and fast.
    "vit_micro14": BackboneArch(
        "vit_small_patch14_dinov2", "vit", dict(embed_dim=32, depth=11, num_heads=2, mlp_ratio=2.0),
        default_levels=SOFS_LAYERS,
    ),
}

for _name, _arch in SMALL_ARCHS.items():
    register_arch(_name, _arch)
