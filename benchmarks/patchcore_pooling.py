"""Pooled vs per-episode pixel AUROC of PatchCore on the synthetic *base* fold.

Pooled pixel AUROC weighs every defect by its pixel count; this script shows how far one large
defect moves it. For each episode (1-shot, one draw) it keeps the raw ``d / 2`` map and the
support-fitted threshold ``t``, then prints the pooled AUROC of the raw and of the shipped
calibrated map ``r / (r + t)``, the mean per-episode AUROC, and each defective episode's AUROC
by defect size:

    python -m benchmarks.patchcore_pooling --max-queries-per-class 3

Exact rank AUROC on a 2x-subsampled grid (20,000 negatives drawn per episode, seed 0).
The numbers in ``methods/BASELINES.md`` ("Why PatchCore's pooled pixel AUROC ...") come from it.
"""
from __future__ import annotations

import argparse

import numpy as np

from harness.metrics import image_auroc


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Exact pixel AUROC (ties count half) of positive vs negative scores."""
    return image_auroc(np.concatenate([pos, neg]), np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fold", default="base")
    parser.add_argument("--max-queries-per-class", type=int, default=3)
    args = parser.parse_args(argv)

    from datasets.base import load_dataset, read_image, read_mask
    from harness.episodes import build_manifest
    from harness.features import default_weights
    from methods.patchcore import PatchCore

    data = load_dataset("synthetic")
    manifest = build_manifest(data, shots=(1,), seeds=1, normal_fraction=0.2, fold=args.fold,
                              max_queries_per_class=args.max_queries_per_class)
    by_id = {r.image_id: r for r in data.records}
    method = PatchCore(PatchCore.Config(score_scale="fixed"), {"backbone": default_weights("efficientnet_lite0")})
    rng = np.random.default_rng(0)
    maps = {"raw d/2": ([], []), "r/(r+t)": ([], [])}
    per_episode = []
    for episode in manifest.episodes:
        supports = [by_id[i] for i in episode.support_ids]
        query = by_id[episode.query_id]
        image = read_image(query)
        gt = read_mask(query)[::2, ::2] if not episode.query_is_normal else np.zeros(image.shape[:2], bool)[::2, ::2]
        pred = method.predict([read_image(r) for r in supports], [read_mask(r) for r in supports], image)
        raw = pred.score_map[::2, ::2].astype(np.float64)
        t = pred.threshold if pred.threshold is not None else 1.0
        draw = rng.integers(0, int((~gt).sum()), 20000)
        for name, score in (("raw d/2", raw), ("r/(r+t)", raw / (raw + max(t, 1e-6)))):
            maps[name][0].append(score[gt])
            maps[name][1].append(score[~gt][draw])
        if gt.any():
            per_episode.append((int(gt.sum()), 100 * gt.mean(), 100 * auroc(raw[gt], raw[~gt][draw])))
    for name, (pos, neg) in maps.items():
        print(f"{name:8s} pooled pixel AUROC {100 * auroc(np.concatenate(pos), np.concatenate(neg)):.1f} %")
    print(f"mean per-episode pixel AUROC {np.mean([a for _, _, a in per_episode]):.1f} % "
          f"over {len(per_episode)} defective episodes")
    for count, fraction, value in sorted(per_episode):
        print(f"  defect {count:6d} px (sampled grid) = {fraction:.3f} % of the image: episode AUROC {value:.1f} %")


if __name__ == "__main__":
    main()
