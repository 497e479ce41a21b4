"""Normal supports: ``--set METHOD.normal_supports=K`` adds K defect-free images of the episode's
object to the method's supports (with empty masks), as on a production line where good parts
abound and only the defect is rare. Methods that build a memory bank or a Gaussian of normal
patches (PatchCore, PaDiM, AnomalyDINO) declare the option; the worker hands the images over.

* Pool of an object: its defect-free images that the manifest never scores (no test, normal or
  calibration query), so no image is both scored and in a bank.
* Draw: K images of the pool without replacement (all of it when it holds fewer), minus the
  episode's own supports (FAD mode), by a generator seeded with (episode id, "normal-supports"):
  the same episode gets the same images on any worker, chunking or re-run, so the method options
  recorded in the row (``normal_supports=K``) and the manifest determine them
  (:func:`draw_normal_supports` lists them again).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Mapping, Sequence

import numpy as np

from harness.episodes import derive_seed
from harness.records import Episode, ImageRecord


def normal_support_pool(episodes: Sequence[Episode], records: Iterable[ImageRecord]) -> dict[str, tuple[str, ...]]:
    """``{object: sorted ids}`` of the defect-free images no episode of the manifest uses as a query."""
    queried = {(e.object, e.query_id) for e in episodes}
    pool: dict[str, list[str]] = defaultdict(list)
    for record in records:
        if record.is_normal and (record.object, record.image_id) not in queried:
            pool[record.object].append(record.image_id)
    return {obj: tuple(sorted(set(ids))) for obj, ids in sorted(pool.items())}


def draw_normal_supports(episode: Episode, pool: Mapping[str, Sequence[str]], k: int) -> tuple[str, ...]:
    """The ``k`` normal supports of ``episode`` (sorted ids; fewer when the object's pool is short)."""
    if k <= 0:
        return ()
    candidates = [i for i in pool.get(episode.object, ()) if i not in set(episode.support_ids)]
    rng = np.random.default_rng(derive_seed(episode.episode_id, "normal-supports"))
    return tuple(sorted(candidates[i] for i in rng.permutation(len(candidates))[:k]))
