"""Seconds per episode of PatchCore's ``predict`` on the embedded default (synthetic novel fold, 1024 x 768).

Backbone features are computed first and not timed (every method shares them through the feature
cache), so the numbers are the method's own work: memory bank, 1-NN search, threshold fit, maps.
CPU seconds (``time.process_time``) are printed beside wall seconds because on a shared machine
wall time mostly measures the other jobs. The same command before and after a change:

    OMP_NUM_THREADS=1 python -m benchmarks.patchcore_speed --shots 1,5 --episodes 4
    OMP_NUM_THREADS=1 python -m benchmarks.patchcore_speed --set coreset_ratio=1 --set bank_margin=0

The episodes are the first ``--episodes`` of the manifest (``--max-queries-per-class 1``), in
manifest order, so supports repeat across episodes as they do in a run.
"""
from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", default="1,5")
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--fold", default="novel")
    parser.add_argument("--set", action="append", default=[], help="PatchCore option=value")
    args = parser.parse_args(argv)

    from datasets.base import load_dataset, read_image, read_mask
    from harness.episodes import build_manifest
    from methods.base import MethodSpec

    data = load_dataset("synthetic")
    by_id = {r.image_id: r for r in data.records}
    options = dict(item.split("=", 1) for item in args.set)
    for shots in (int(s) for s in args.shots.split(",")):
        manifest = build_manifest(data, shots=(shots,), seeds=1, fold=args.fold, max_queries_per_class=1)
        method = MethodSpec.create("patchcore", options).build()
        cpu = wall = 0.0
        episodes = manifest.episodes[: args.episodes]
        for episode in episodes:
            supports = [by_id[i] for i in episode.support_ids]
            images, masks = [read_image(r) for r in supports], [read_mask(r) for r in supports]
            query = read_image(by_id[episode.query_id])
            for image in (*images, query):
                method.backbone.extract(image)  # features cached, not timed
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            method.predict(images, masks, query)
            wall += time.perf_counter() - start_wall
            cpu += time.process_time() - start_cpu
        print(f"patchcore {options or 'defaults'} {shots}-shot: {cpu / len(episodes):.2f} CPU s, "
              f"{wall / len(episodes):.2f} wall s per episode ({len(episodes)} episodes)", flush=True)


if __name__ == "__main__":
    main()
