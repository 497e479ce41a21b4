"""Write the embedded default backbone: a seeded random-init small ViT (patch 14), stored fp16.

No pretrained weights can be downloaded here, and DINOv2 files are ~90-350 MB, so the embedded
default uses a frozen *random-feature* ViT with DINOv2's layout. With LayerScale initialised at
1e-5 its block outputs stay close to a random projection of each 14x14 patch plus position, which
is a usable local descriptor for prototype / nearest-neighbour methods; SOFS learns its head on
top of it. Reproduce with:  python -m methods.weights.make_backbone  (seed 0, byte-identical).
"""
from pathlib import Path

import torch

from harness.features import build_vit

OUT = Path(__file__).with_name("vit_tiny14_seed0.pt")


def make(seed: int = 0, path: Path = OUT) -> Path:
    torch.manual_seed(seed)
    model = build_vit("vit_tiny14")
    state = {k: v.half().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, path)
    return path


if __name__ == "__main__":
    print(make())
