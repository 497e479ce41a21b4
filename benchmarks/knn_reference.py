"""A minimal patch 1-NN scorer as a yardstick for the project's PatchCore (issue 21).

The reference is deliberately short and shares no code path with ``methods/`` beyond the frozen
backbone file: the image is resized so its long side is 448 px (each side a multiple of 16), the
default EfficientNet-Lite0 gives stride-8 (level 2) and upsampled stride-16 (level 3) maps, each
is 3x3-averaged, the raw levels are concatenated, and every query token gets its Euclidean
distance to the nearest support token (bank: support tokens farther than ``REF_EXCLUDE`` tokens
from any defect pixel). The token map is upsampled bilinearly to the original size; no tiling,
no blur, no calibration. Image score = max.

Both scorers run over the same manifest (``harness.episodes.build_manifest``, ``normal_fraction``
0.2, one support draw, ``--max-queries-per-class`` queries per class) and are scored the same way, by exact rank AUROC on a
2x-subsampled pixel grid (negatives further subsampled at one fixed rate, so every episode keeps
its pixel weight):

* class-mean pixel AUROC: per class, defective queries pooled; mean over classes;
* pooled pixel AUROC: every query's pixels (normal queries too);
* image AUROC: per-query max, defective vs normal queries.

    python -m benchmarks.knn_reference                      # real sets at 1 and 5 shots + synthetic base
    python -m benchmarks.knn_reference --datasets synthetic:base --shots 1 --max-queries-per-class 1 \\
        --variant margin0=bank_margin=0 --variant blur0=blur_sigma=0

``--variant NAME=opt=value,opt=value`` adds a PatchCore row with those options (ablations;
``method=anomalydino`` scores another registered method); the backbone features are computed
once per image and shared by every variant. Each variant is predicted once with
``score_scale=fixed`` and gives two rows: ``NAME`` (the calibrated ``r / (r + t)``, what the
default ``score_scale=support`` stores) and ``NAME fixed`` (the raw map).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.metrics import image_auroc

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "real-data"  # ../shared/real-data
REF_LONG_SIDE = 448
REF_EXCLUDE = 2  # bank tokens within this many stride-8 tokens (Chebyshev) of a defect pixel are dropped
NEG_RATE = 0.25  # share of the (2x-subsampled) negative pixels kept, the same in every episode


# -- the reference scorer -------------------------------------------------------------------------
class KnnReference:
    """Resize to 448 long side, Lite0 levels 2 + 3, 3x3 mean, raw L2 1-NN, bilinear up; no blur."""

    def __init__(self):
        from harness.features import images_to_tensor, make_features

        self.extractor = make_features("efficientnet_lite0", None, (2, 3))
        self.to_tensor = images_to_tensor

    def tokens(self, image: np.ndarray) -> torch.Tensor:
        """uint8 ``[H, W, 3]`` -> ``[h, w, 120]`` 3x3-averaged tokens at stride 8 of the resized image."""
        height, width = image.shape[:2]
        scale = REF_LONG_SIDE / max(height, width)
        size = (max(16, round(height * scale / 16) * 16), max(16, round(width * scale / 16) * 16))
        x = F.interpolate(self.to_tensor([image]), size=size, mode="bilinear", align_corners=False, antialias=True)
        levels = [F.avg_pool2d(level, 3, 1, 1) for level in self.extractor(x)]  # [1, C, h, w] each
        return torch.cat(levels, dim=1)[0].permute(1, 2, 0)

    def bank(self, image: np.ndarray, mask: np.ndarray) -> torch.Tensor:
        tokens = self.tokens(image)
        grid = tokens.shape[:2]
        touched = F.adaptive_max_pool2d(torch.from_numpy(mask.astype(np.float32))[None, None], grid)  # [1, 1, h, w]
        near = F.max_pool2d(touched, 2 * REF_EXCLUDE + 1, 1, REF_EXCLUDE)[0, 0] > 0
        return tokens[~near]

    def score(self, support_images, support_masks, query_image) -> np.ndarray:
        bank = torch.cat([self.bank(i, np.asarray(m, bool)) for i, m in zip(support_images, support_masks)])
        query = self.tokens(query_image)
        if len(bank) == 0:
            return np.zeros(query_image.shape[:2], np.float32)
        flat = query.reshape(-1, query.shape[-1])
        nearest = torch.cat([torch.cdist(flat[i : i + 2048], bank).min(dim=1).values for i in range(0, len(flat), 2048)])
        token_map = nearest.reshape(1, 1, *query.shape[:2])
        return F.interpolate(token_map, size=query_image.shape[:2], mode="bilinear", align_corners=False)[0, 0].numpy()


# -- evaluation -----------------------------------------------------------------------------------
@dataclass
class Scores:
    """Subsampled pixel scores and image scores of one scorer over a manifest."""

    pos: dict[str, list[np.ndarray]] = field(default_factory=dict)  # class -> defect pixel scores
    neg: dict[str, list[np.ndarray]] = field(default_factory=dict)  # class -> normal pixel scores (defective queries)
    normal_neg: list[np.ndarray] = field(default_factory=list)  # pixels of normal queries
    image: list[tuple[float, bool]] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, class_id: str, score_map: np.ndarray, gt: np.ndarray, draw: np.ndarray, is_normal: bool,
            image_score: float | None = None) -> None:
        grid = score_map[::2, ::2].astype(np.float64)
        self.image.append((float(score_map.max()) if image_score is None else image_score, not is_normal))
        if is_normal:
            self.normal_neg.append(grid[~gt][draw])
            return
        self.pos.setdefault(class_id, []).append(grid[gt])
        self.neg.setdefault(class_id, []).append(grid[~gt][draw])

    def metrics(self) -> tuple[float, float, float]:
        """(class-mean pixel AUROC, pooled pixel AUROC, image AUROC) in percent."""
        per_class = [auroc(np.concatenate(self.pos[c]), np.concatenate(self.neg[c])) for c in sorted(self.pos)]
        pos = np.concatenate([p for c in self.pos.values() for p in c])
        neg = np.concatenate([n for c in self.neg.values() for n in c] + self.normal_neg)
        image = np.array(self.image)
        return 100 * float(np.mean(per_class)), 100 * auroc(pos, neg), 100 * image_auroc(image[:, 0], image[:, 1] > 0)


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Exact AUROC (ties count half) of positive vs negative scores."""
    return image_auroc(np.concatenate([pos, neg]), np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)])


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, options = text.partition("=")
    pairs = [item.split("=", 1) for item in options.split(",") if item]
    return name, {key: value for key, value in pairs}


def build(options: dict[str, str]):
    """A registered method (``method=`` option, default ``patchcore``) with the other options."""
    from methods.base import MethodSpec

    options = dict(options)
    return MethodSpec.create(options.pop("method", "patchcore"), options).build()


def load(spec: str, real_data: Path):
    """``synthetic:base`` or a folder name under ``real_data`` -> (dataset, fold)."""
    from datasets.base import load_dataset

    name, _, fold = spec.partition(":")
    if name == "synthetic":
        return load_dataset("synthetic"), fold or "base"
    return load_dataset(str(real_data / name)), (fold or None)


def evaluate(spec: str, real_data: Path, shots: int, max_queries: int | None, variants: dict[str, dict], with_reference: bool) -> dict[str, Scores]:
    from datasets.base import read_image, read_mask
    from harness.episodes import build_manifest

    data, fold = load(spec, real_data)
    manifest = build_manifest(data, shots=(shots,), seeds=1, normal_fraction=0.2, fold=fold,
                              max_queries_per_class=max_queries)
    by_id = {r.image_id: r for r in data.records}
    scorers = ({"reference": KnnReference().score} if with_reference else {}) | {
        name: build({**options, "score_scale": "fixed"}).predict for name, options in variants.items()}
    # A calibrated map is r / (r + t) of the raw map r and its threshold t, so one raw prediction
    # gives both rows (score_scale=support, the default, and "<name> fixed").
    out = {row: Scores() for name in scorers for row in (
        [name] if name == "reference" or "score_scale" in variants[name] else [name, f"{name} fixed"])}
    rng = np.random.default_rng(0)
    for index, episode in enumerate(manifest.episodes):
        supports = [by_id[i] for i in episode.support_ids]
        query = by_id[episode.query_id]
        image = read_image(query)
        gt = np.zeros(image.shape[:2], bool) if episode.query_is_normal else read_mask(query)
        gt = gt[::2, ::2]
        negatives = int((~gt).sum())
        draw = rng.choice(negatives, max(1, int(NEG_RATE * negatives)), replace=False)
        support_images = [read_image(r) for r in supports]
        support_masks = [read_mask(r) for r in supports]
        for name, score in scorers.items():
            start = time.perf_counter()
            with torch.no_grad():
                result = score(support_images, support_masks, image)
            seconds = time.perf_counter() - start
            class_id = f"{episode.object}/{episode.category}"
            if name == "reference":
                out[name].seconds += seconds
                out[name].add(class_id, result, gt, draw, episode.query_is_normal)
                continue
            raw, threshold = result.score_map, result.threshold
            calibrated = raw / (raw + max(threshold, 1e-6)) if threshold is not None else raw
            for row, score_map in ((f"{name} fixed", raw), (name, calibrated)):
                if row in out:
                    out[row].seconds += seconds
                    image_score = result.image_score
                    if image_score is not None and row == name and threshold is not None:
                        image_score = image_score / (image_score + max(threshold, 1e-6))
                    out[row].add(class_id, score_map, gt, draw, episode.query_is_normal, image_score)
        print(f"  {spec} {shots}-shot: episode {index + 1}/{len(manifest.episodes)}", file=sys.stderr, flush=True)
    for scores in out.values():
        scores.seconds /= len(manifest.episodes)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="magnetic_tile,el_pv_crack,synthetic:base",
                        help="real-data folder names under shared/real-data, or synthetic:<fold>")
    parser.add_argument("--real-data", type=Path, default=REAL_DATA, help="folder holding the real sets")
    parser.add_argument("--shots", default="1,5")
    parser.add_argument("--max-queries-per-class", type=int, default=6)
    parser.add_argument("--variant", action="append", default=[], help="NAME=opt=value,opt=value (PatchCore options)")
    parser.add_argument("--no-reference", action="store_true", help="leave out the reference scorer")
    parser.add_argument("--no-default", action="store_true", help="leave out PatchCore with its defaults")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    variants = ({} if args.no_default else {"patchcore": {}}) | dict(parse_variant(v) for v in args.variant)
    print("| data | shots | scorer | class-mean pixel AUROC % | pooled pixel AUROC % | image AUROC % | s/episode |")
    print("|---|---|---|---|---|---|---|", flush=True)
    for spec in args.datasets.split(","):
        for shots in (int(s) for s in args.shots.split(",")):
            results = evaluate(spec, args.real_data, shots, args.max_queries_per_class, variants, not args.no_reference)
            for name, scores in results.items():
                mean, pooled, image = scores.metrics()
                print(f"| {spec} | {shots} | {name} | {mean:.1f} | {pooled:.1f} | {image:.1f} | {scores.seconds:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
