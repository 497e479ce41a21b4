"""Episode manifests: which supports and which query make each few-shot episode (SOFS-style protocol).

A class is ``(object, category)``; one defective record = one (image, category) pair.

* Every defective record of a test class is a query once per (shot k, repeat r). Its k supports
  are other records of the same class, never the query image; drawn without replacement when the
  class has at least k other images, else with replacement (duplicate supports; SOFS §7.12 does
  the same). A class with a single image cannot make an episode: it is skipped and listed in
  ``params["skipped_classes"]``.
* ``seeds`` = R support re-draws (repeat 0..R−1). Each draw uses its own generator seeded from a
  hash of (base_seed, class, k, r, query), stored as ``Episode.seed``; so adding a class, a record
  of another class or a cap on queries changes no other episode.
* Normal queries: defect-free images of the query's object with supports of one of that object's
  classes, about ``normal_fraction`` of all episodes (see :func:`_allocate_normal_queries`).
* FAD mode: the supports are k defect-free images of the object (``support_is_normal``).
* Calibration normals (``calibration_normals = N``): N defect-free images per object are held
  out (never a query or support of a test episode). For each (class, k, r) one support draw of
  the class scores each of them once (``role = "calibration"``), so a method's threshold can be
  set on good parts alone (harness.report.operating). An object with fewer than 2N normal images
  keeps them all for test queries; ``params["calibration_skipped"]`` says why.
* ``normal_queries_per_object = M`` (instead of ``normal_fraction``): M defect-free test queries
  per object (as many as it has), dealt round-robin to its classes, each image once.
* Image roles (``ImageRecord.role``, set by formats that fix them, e.g. SOFS open-domain): a
  "support" image is never a query, a "query" image never a support; an "unlabelled" image (no
  ground truth) is a query of its class once per (k, r) like a defective one, in an episode of
  role "unlabelled" (``query_is_normal`` False), counted in ``params["n_unlabelled_episodes"]``,
  not among defective or normal episodes: its rows are stored with status ``UNSCORED_STATUS``
  (``harness.records``) and never enter a metric.

* Selection: ``fold`` (members of ``dataset.folds[fold]``) and ``classes`` keep objects or classes
  (named as :func:`resolve_class_names`); the defect-free images of every kept class's object stay
  in, so a class split keeps its normal queries and calibration images.

``support_ids`` and ``query_id`` are ``image_id`` values; the record they denote is the one of the
episode's class (``object/category``), or a normal record of the object when the image is normal.

A manifest is a Parquet file of episodes plus a JSON sidecar with the parameters, both named by the
manifest's content hash, so the same data and parameters give the same id and the same bytes.
With ``hash_content=True`` (what ``bench.py`` does) the parameters also hold ``data_sha256``, a hash
of the bytes of every image and mask the episodes name: relabel one mask and the id changes.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from harness.io import atomic_write
from harness.records import Episode, ImageRecord

MANIFEST_VERSION = 2  # 2: + role ("test" / "calibration"); version-1 files read as all "test"
MANIFEST_SCHEMA_V1 = pa.schema(
    [
        pa.field("episode_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("object", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("shots", pa.int32(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("repeat", pa.int32(), nullable=False),
        pa.field("support_ids", pa.list_(pa.string()), nullable=False),
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("query_is_normal", pa.bool_(), nullable=False),
        pa.field("support_is_normal", pa.bool_(), nullable=False),
    ]
)
MANIFEST_SCHEMA = MANIFEST_SCHEMA_V1.append(pa.field("role", pa.string(), nullable=False))
EPISODE_ROLES = ("test", "calibration", "unlabelled")
# Not part of the content hash: where the data lies on this machine says nothing about the episodes.
_UNHASHED_PARAMS = ("dataset_root",)


class ManifestError(ValueError):
    """A user-facing problem with manifest parameters or a manifest file (one line)."""


@dataclass(frozen=True)
class Manifest:
    manifest_id: str  # first 16 hex chars of sha256(canonical JSON of hashed params + episodes)
    episodes: tuple[Episode, ...]
    params: dict  # JSON-native: sampling parameters, dataset name/format/root, counts

    def __len__(self) -> int:
        return len(self.episodes)


# ------------------------------------------------------------------------------------------------
# hashing


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _sha256_hex(value: Any) -> str:
    return hashlib.sha256(_canonical_json(value).encode("utf-8")).hexdigest()


def derive_seed(*parts: Any) -> int:
    """A non-negative int64 seed from a hash of ``parts`` (stable across runs and platforms)."""
    return int(_sha256_hex(list(parts))[:16], 16) >> 1


_EPISODE_FIELD_NAMES = tuple(f.name for f in fields(Episode))


def _episode_fields(episode: Episode) -> dict:
    """The hashed fields; ``role`` only when it is not "test", so manifests and episode ids built
    before roles existed keep their ids."""
    data = {name: getattr(episode, name) for name in _EPISODE_FIELD_NAMES}
    data["support_ids"] = list(episode.support_ids)
    if data["role"] == "test":
        del data["role"]
    return data


def episode_id_for(episode: Episode) -> str:
    """Short content hash of the fields that define an episode (all but ``episode_id``)."""
    data = _episode_fields(episode)
    del data["episode_id"]
    return _sha256_hex(data)[:16]


def manifest_id_for(params: dict, episodes: Sequence[Episode]) -> str:
    hashed = {key: value for key, value in params.items() if key not in _UNHASHED_PARAMS}
    return _sha256_hex({"params": hashed, "episodes": [_episode_fields(e) for e in episodes]})[:16]


# ------------------------------------------------------------------------------------------------
# building


def _make_episode(**values: Any) -> Episode:
    draft = Episode(episode_id="", **values)
    return replace(draft, episode_id=episode_id_for(draft))


def _draw(rng: np.random.Generator, candidates: list[ImageRecord], k: int) -> tuple[str, ...]:
    """k image ids from ``candidates``: without replacement when there are enough, else with."""
    index = rng.choice(len(candidates), size=k, replace=len(candidates) < k)
    return tuple(candidates[i].image_id for i in index)


def _other_images(records: list[ImageRecord], query: ImageRecord) -> list[ImageRecord]:
    return [r for r in records if r.image_id != query.image_id and r.path != query.path]


def _select_records(dataset, fold: str | None, classes: Sequence[str] = ()) -> list[ImageRecord]:
    """Records of the fold's members and of ``classes`` (both: the classes inside the fold), sorted,
    deduplicated. A member is an object (all its classes), a class ``object/category`` or a bare
    category (:func:`resolve_class_names`); the defect-free images of every object one of its
    classes comes from stay in (normal queries, calibration)."""
    records = sorted(set(dataset.records), key=lambda r: (r.image_id, r.object, r.category, r.path))
    if fold is not None:
        folds = dataset.folds or {}
        if fold not in folds:
            raise ManifestError(f"dataset {dataset.name!r} has no fold {fold!r}; folds: {', '.join(sorted(folds)) or '(none)'}")
        records = _members(records, resolve_class_names(dataset, folds[fold], f"fold {fold!r} of {dataset.name}"))
    if classes:
        records = _members(records, resolve_class_names(dataset, classes, "--classes"))
    return records


def _members(records: list[ImageRecord], class_ids: Sequence[str]) -> list[ImageRecord]:
    wanted = set(class_ids)
    objects = {r.object for r in records if r.class_id in wanted}
    return [r for r in records if r.class_id in wanted or (r.is_normal and r.is_labelled and r.object in objects)]


def resolve_class_names(dataset, names: Sequence[str], what: str) -> tuple[str, ...]:
    """Class ids (``object/category``, sorted) named by ``names``, each an ``object/category`` id,
    a bare category when one object of the dataset has it, or an object (all its classes; none
    when it has only defect-free images). ``what`` names the option or file in the one-line
    error for an unknown or ambiguous name, which lists the valid ones."""
    classes: dict[str, tuple[str, str]] = {}
    objects, normal_categories = set(), set()
    for r in dataset.records:
        objects.add(r.object)
        if r.is_normal and r.is_labelled:
            normal_categories.add(r.category)
        else:
            classes[r.class_id] = (r.object, r.category)
    by_category: dict[str, list[str]] = defaultdict(list)
    for class_id, (_, category) in sorted(classes.items()):
        by_category[category].append(class_id)
    chosen: set[str] = set()
    for name in (str(n).strip() for n in names):
        if name in classes:
            chosen.add(name)
        elif name in objects:
            chosen.update(c for c, (obj, _) in classes.items() if obj == name)
        elif len(by_category.get(name, ())) == 1:
            chosen.add(by_category[name][0])
        elif name in by_category:
            raise ManifestError(f"{what}: '{name}' is a category of several objects "
                                f"({', '.join(by_category[name])}); name one as object/category")
        elif name in normal_categories:
            raise ManifestError(f"{what}: '{name}' holds the defect-free images, not a defect class; the good "
                                "images of every evaluated object are always in (normal queries, calibration)")
        else:
            where = getattr(dataset, "name", "the dataset")
            raise ManifestError(f"{what}: '{name}' is not a class of {where}{_did_you_mean(name, classes, by_category)}; "
                                f"classes: {', '.join(_class_names(classes, by_category)) or '(none)'}")
    return tuple(sorted(chosen))


def _class_names(classes: dict[str, tuple[str, str]], by_category: dict[str, list[str]]) -> list[str]:
    """How to name each class: its bare category when the dataset has one object, else ``object/category``."""
    single = len({obj for obj, _ in classes.values()}) == 1
    return sorted(category for category in by_category) if single else sorted(classes)


def _did_you_mean(name: str, classes, by_category) -> str:
    import difflib

    close = difflib.get_close_matches(name, [*classes, *by_category], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _cap_queries(records: list[ImageRecord], cap: int | None, base_seed: int, class_id: str) -> list[ImageRecord]:
    if cap is None or len(records) <= cap:
        return records
    rng = np.random.default_rng(derive_seed(base_seed, class_id, "queries"))
    keep = sorted(rng.choice(len(records), size=cap, replace=False))
    return [records[i] for i in keep]


@dataclass
class _ClassPlan:
    """What one class contributes to every (k, r): its queries and where its supports come from."""

    class_id: str
    object: str
    category: str
    queries: list[ImageRecord]  # defective records of the class (capped)
    support_pool: list[ImageRecord]  # class records, or the object's normal records in FAD mode
    normals: list[ImageRecord]  # the object's normal records (calibration images held out)
    normal_queries: list[ImageRecord] = field(default_factory=list)
    calibration: list[ImageRecord] = field(default_factory=list)  # the object's held-out normals
    unlabelled: list[ImageRecord] = field(default_factory=list)  # queries without ground truth (capped)


def _plan_classes(
    records: list[ImageRecord], fad: bool, max_queries: int | None, base_seed: int
) -> tuple[list[_ClassPlan], dict[str, str]]:
    """One plan per class that can make episodes (sorted by class id), and ``{class_id: why}`` for the others."""
    by_class: dict[str, list[ImageRecord]] = defaultdict(list)
    unlabelled: dict[str, list[ImageRecord]] = defaultdict(list)
    normals_by_object: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in records:
        if not record.is_labelled:
            unlabelled[record.class_id].append(record)
        else:
            (normals_by_object[record.object] if record.is_normal else by_class[record.class_id]).append(record)
    plans, skip_reasons = [], {}
    for class_id in sorted(set(by_class) | set(unlabelled)):
        class_records, class_unlabelled = by_class[class_id], unlabelled[class_id]
        first = (class_records or class_unlabelled)[0]
        normals = normals_by_object[first.object]
        queries = [r for r in class_records if r.role != "support"]
        support_pool = [r for r in (normals if fad else class_records) if r.role != "query"]
        if fad and not support_pool:
            skip_reasons[class_id] = "no normal image of the object for FAD supports"
        elif not fad and not support_pool:
            skip_reasons[class_id] = "no image that may be a support (role 'query' or unlabelled only)"
        elif not fad and len(class_records) < 2 and not class_unlabelled:
            skip_reasons[class_id] = "single image: no support other than the query"
        elif not queries and not class_unlabelled:
            skip_reasons[class_id] = "no image that may be a query (role 'support' only)"
        else:
            plans.append(
                _ClassPlan(
                    class_id, first.object, first.category,
                    queries=_cap_queries(queries, max_queries, base_seed, class_id),
                    support_pool=support_pool, normals=[r for r in normals if r.role != "support"],
                    unlabelled=_cap_queries(class_unlabelled, max_queries, base_seed, class_id + "?unlabelled"),
                )
            )
    return plans, skip_reasons


def _allocate_normal_queries(total: int, weights: dict[str, int], caps: dict[str, int]) -> dict[str, int]:
    """Split ``total`` normal queries over classes proportionally to ``weights``, at most ``caps[c]`` each.

    Greedy largest deficit (``total * w_c / Σw − given_c``), ties by class id: deterministic, and
    a class capped by its object's normal images hands its share to the others.
    """
    given = {c: 0 for c in weights}
    weight_sum = sum(weights.values())
    heap = [(-total * w / weight_sum, c) for c, w in sorted(weights.items()) if caps[c] > 0]
    heapq.heapify(heap)
    for _ in range(total):
        if not heap:
            break
        _, class_id = heapq.heappop(heap)
        given[class_id] += 1
        if given[class_id] < caps[class_id]:
            deficit = total * weights[class_id] / weight_sum - given[class_id]
            heapq.heappush(heap, (-deficit, class_id))
    return given


def _hold_out_calibration(records: list[ImageRecord], n: int, base_seed: int
                          ) -> tuple[list[ImageRecord], dict[str, list[ImageRecord]], dict[str, str]]:
    """Take ``n`` normal images per object out of ``records`` for calibration (hash-drawn).

    Returns ``(remaining records, {object: calibration records}, {object: why none})``. An object
    with fewer than ``2 n`` normal images keeps them all: half or more stay for test queries.
    """
    if n <= 0:
        return records, {}, {}
    normals: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in records:
        if record.is_normal and record.is_labelled:  # an unlabelled image is not known to be good
            normals[record.object].append(record)
    objects = sorted({r.object for r in records})
    held, skipped = {}, {}
    for obj in objects:
        pool = sorted(normals.get(obj, []), key=lambda r: r.image_id)
        if len(pool) < 2 * n:
            skipped[obj] = (f"{len(pool)} defect-free image(s); --calibration-normals {n} needs {2 * n} "
                            f"({n} held out, {n} left for test queries)")
            continue
        rng = np.random.default_rng(derive_seed(base_seed, obj, "calibration-normals"))
        held[obj] = sorted((pool[i] for i in rng.permutation(len(pool))[:n]), key=lambda r: r.image_id)
    held_ids = {(r.object, r.image_id) for chosen in held.values() for r in chosen}
    return [r for r in records if (r.object, r.image_id) not in held_ids], held, skipped


def _deal_normal_queries(plans: list[_ClassPlan], per_object: int, fad: bool, base_seed: int) -> None:
    """``per_object`` normal queries per object (as many as it has), dealt round-robin to its
    classes in class-id order, each image a query once."""
    by_object: dict[str, list[_ClassPlan]] = defaultdict(list)
    for plan in plans:
        by_object[plan.object].append(plan)
    for obj, object_plans in by_object.items():
        normals = sorted(object_plans[0].normals, key=lambda r: r.image_id)
        if fad and len(normals) < 2:
            continue  # an FAD normal query needs another normal image as its support
        rng = np.random.default_rng(derive_seed(base_seed, obj, "normal-queries-per-object"))
        chosen = [normals[i] for i in rng.permutation(len(normals))[:per_object]]
        for index, record in enumerate(chosen):
            object_plans[index % len(object_plans)].normal_queries.append(record)
        for plan in object_plans:
            plan.normal_queries.sort(key=lambda r: r.image_id)


def _choose_normal_queries(plans: list[_ClassPlan], normal_fraction: float, fad: bool, base_seed: int) -> None:
    """Fill ``plan.normal_queries``: the same images for every (k, r), so shots and repeats stay paired."""
    n_defective = sum(len(plan.queries) for plan in plans)
    total = math.floor(normal_fraction / (1 - normal_fraction) * n_defective + 0.5)
    # a class gets each normal image at most once (no duplicate episodes); in FAD mode a normal
    # query needs another normal image as its support
    caps = {p.class_id: len(p.normals) if not fad or len(p.normals) >= 2 else 0 for p in plans}
    allocation = _allocate_normal_queries(total, {p.class_id: len(p.queries) for p in plans}, caps)
    for plan in plans:
        rng = np.random.default_rng(derive_seed(base_seed, plan.class_id, "normal-queries"))
        chosen = rng.permutation(len(plan.normals))[: allocation[plan.class_id]]
        plan.normal_queries = sorted((plan.normals[i] for i in chosen), key=lambda r: r.image_id)


def _class_episodes(
    plan: _ClassPlan, k: int, repeat: int, dataset_name: str, fad: bool, base_seed: int
) -> tuple[list[Episode], bool]:
    """The episodes of one class at (k, r), defective queries first; and whether any drew with replacement."""
    episodes, replaced = [], False
    groups = ((False, plan.queries, "test"), (False, plan.unlabelled, "unlabelled"), (True, plan.normal_queries, "test"))
    for is_normal, queries, role in groups:
        for query in queries:
            seed = derive_seed(base_seed, plan.class_id, k, repeat, query.image_id, is_normal)
            candidates = _other_images(plan.support_pool, query)
            replaced |= len(candidates) < k
            episodes.append(
                _make_episode(
                    dataset=dataset_name, object=plan.object, category=plan.category, shots=k, seed=seed,
                    repeat=repeat, support_ids=_draw(np.random.default_rng(seed), candidates, k),
                    query_id=query.image_id, query_is_normal=is_normal, support_is_normal=fad, role=role,
                )
            )
    if plan.calibration:
        # one support draw per (class, k, r) scores every calibration image: a deployed model
        # (method + these supports) and the good parts its threshold is set on
        seed = derive_seed(base_seed, plan.class_id, k, repeat, "calibration")
        replaced |= len(plan.support_pool) < k
        supports = _draw(np.random.default_rng(seed), plan.support_pool, k)
        episodes += [
            _make_episode(dataset=dataset_name, object=plan.object, category=plan.category, shots=k, seed=seed,
                          repeat=repeat, support_ids=supports, query_id=query.image_id, query_is_normal=True,
                          support_is_normal=fad, role="calibration")
            for query in plan.calibration
        ]
    return episodes, replaced


def build_manifest(
    dataset,
    *,
    shots: Sequence[int] = (1,),
    seeds: int = 5,
    normal_fraction: float = 0.2,
    fad: bool = False,
    fold: str | None = None,
    max_queries_per_class: int | None = None,
    base_seed: int = 0,
    hash_content: bool = False,
    calibration_normals: int = 0,
    normal_queries_per_object: int | None = None,
    classes: Sequence[str] = (),
) -> Manifest:
    """Episodes of ``dataset`` (fields ``name, root, format, records, folds, meta``) under the SOFS protocol.

    ``fold`` keeps the members of ``dataset.folds[fold]`` (objects or classes); ``None`` keeps all.
    ``classes`` keeps those classes (names as :func:`resolve_class_names`; inside ``fold`` when both
    are given); the defect-free images of their objects stay in.
    ``max_queries_per_class`` keeps a fixed hash-drawn subset of each class's queries.
    Normal queries: ``round(f / (1 − f) · D)`` for ``D`` defective episodes per (k, r), so that
    ≈ f of all episodes are normal, spread over classes by their query counts (see
    :func:`_allocate_normal_queries`); a class gets at most as many as its object has normal
    images (one episode per normal image per (k, r)), none when the object has no normal images.
    ``normal_queries_per_object`` replaces that rule by a count per object (see the module doc);
    ``calibration_normals`` holds out that many normal images per object for calibration episodes.
    Episodes are ordered by (k, r, class id, defective, normal, calibration, query id).
    ``hash_content`` adds ``params["data_sha256"]`` (:func:`data_fingerprint`) to the hashed params.
    """
    shot_list = sorted({int(k) for k in shots})
    if not shot_list or shot_list[0] < 1:
        raise ManifestError(f"shots must be positive integers, got {list(shots)}")
    if seeds < 1:
        raise ManifestError(f"seeds must be >= 1, got {seeds}")
    if not 0 <= normal_fraction < 1:
        raise ManifestError(f"normal_fraction must be in [0, 1), got {normal_fraction}")
    if max_queries_per_class is not None and max_queries_per_class < 1:
        raise ManifestError(f"max_queries_per_class must be >= 1, got {max_queries_per_class}")
    if calibration_normals < 0:
        raise ManifestError(f"calibration_normals must be >= 0, got {calibration_normals}")
    if normal_queries_per_object is not None and normal_queries_per_object < 0:
        raise ManifestError(f"normal_queries_per_object must be >= 0, got {normal_queries_per_object}")

    records, calibration, calibration_skipped = _hold_out_calibration(
        _select_records(dataset, fold, classes), calibration_normals, base_seed)
    plans, skip_reasons = _plan_classes(records, fad, max_queries_per_class, base_seed)
    for plan in plans:
        plan.calibration = calibration.get(plan.object, [])
    if normal_queries_per_object is None:
        _choose_normal_queries(plans, normal_fraction, fad, base_seed)
    else:
        _deal_normal_queries(plans, normal_queries_per_object, fad, base_seed)
    episodes: list[Episode] = []
    with_replacement: set[str] = set()
    for k in shot_list:
        for repeat in range(seeds):
            for plan in plans:
                class_episodes, replaced = _class_episodes(plan, k, repeat, dataset.name, fad, base_seed)
                episodes += class_episodes
                if replaced:
                    with_replacement.add(f"{plan.class_id}@{k}")

    params = {
        "manifest_version": MANIFEST_VERSION,
        "dataset": dataset.name,
        "dataset_format": dataset.format,
        "dataset_root": str(dataset.root),
        "shots": shot_list,
        "seeds": int(seeds),
        "normal_fraction": float(normal_fraction),
        "fad": bool(fad),
        "fold": fold,
        "max_queries_per_class": max_queries_per_class,
        "base_seed": int(base_seed),
        "classes": [plan.class_id for plan in plans],
        "skipped_classes": sorted(skip_reasons),
        "skip_reasons": skip_reasons,
        "supports_with_replacement": sorted(with_replacement),
        "n_episodes": len(episodes),
        "n_defective_episodes": sum(not e.query_is_normal and e.role == "test" for e in episodes),
        "n_normal_episodes": sum(e.query_is_normal and e.role == "test" for e in episodes),
    }
    # Only when used, so manifests built without them keep their ids.
    if classes:
        params["class_selection"] = list(resolve_class_names(dataset, classes, "--classes"))
    if normal_queries_per_object is not None:
        params["normal_queries_per_object"] = int(normal_queries_per_object)
    if calibration_normals:
        params["calibration_normals"] = int(calibration_normals)
        params["calibration_ids"] = {obj: [r.image_id for r in chosen] for obj, chosen in sorted(calibration.items())}
        params["calibration_skipped"] = calibration_skipped
        params["n_calibration_episodes"] = sum(e.role == "calibration" for e in episodes)
    n_unlabelled = sum(e.role == "unlabelled" for e in episodes)
    if n_unlabelled:
        params["n_unlabelled_episodes"] = n_unlabelled
    if hash_content:
        params["data_sha256"] = data_fingerprint(dataset.by_id(), named_ids(episodes))
    return Manifest(manifest_id_for(params, episodes), tuple(episodes), params)


# ------------------------------------------------------------------------------------------------
# data content


def named_ids(episodes: Sequence[Episode]) -> list[str]:
    return sorted({i for e in episodes for i in (*e.support_ids, e.query_id)})


def data_fingerprint(by_id: dict[str, ImageRecord], image_ids: Sequence[str]) -> str:
    """sha256 over (image id, image bytes hash, mask bytes hash, mask value) of ``image_ids``.

    File hashes come from :class:`harness.provenance.ContentHashes` (cached by path, size and
    mtime, so an unchanged dataset costs one ``stat`` per file). Link stubs are hashed by target.
    """
    from datasets.base import resolve_link_stub
    from harness.provenance import ContentHashes

    hashes = ContentHashes()
    entries = []
    for image_id in image_ids:
        record = by_id[image_id]
        files = [resolve_link_stub(Path(record.path))] + ([Path(record.mask_path)] if record.mask_path else [])
        digests = []
        for path in files:
            try:
                digests.append(hashes.digest(path))
            except OSError as exc:
                raise ManifestError(f"{path}: cannot read to hash the dataset ({exc.strerror or exc})") from None
        entries.append([image_id, *digests, record.mask_value])
    hashes.save()
    return _sha256_hex(entries)


def check_data_unchanged(manifest: Manifest, dataset) -> None:
    """Refuse a manifest whose ``data_sha256`` no longer matches the dataset's files."""
    expected = manifest.params.get("data_sha256")
    by_id = dataset.by_id()
    ids = named_ids(manifest.episodes)
    if expected is None or any(i not in by_id for i in ids):
        return  # built without content hashing, or ids missing (the runner names them)
    if data_fingerprint(by_id, ids) != expected:
        raise ManifestError(f"{dataset.root}: images or masks changed since manifest {manifest.manifest_id} "
                            "was built; build a new manifest (bench.py episodes build)")


# ------------------------------------------------------------------------------------------------
# files


def _atomic_write(path: Path, data: bytes) -> None:
    try:
        atomic_write(path, lambda temp: temp.write_bytes(data))
    except OSError as exc:
        raise ManifestError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _episode_table(manifest: Manifest) -> pa.Table:
    columns = {name: [getattr(e, name) for e in manifest.episodes] for name in _EPISODE_FIELD_NAMES}
    columns["support_ids"] = [list(ids) for ids in columns["support_ids"]]
    metadata = {"manifest_id": manifest.manifest_id, "manifest_version": str(MANIFEST_VERSION)}
    return pa.table(columns, schema=MANIFEST_SCHEMA.with_metadata(metadata))


def write_manifest(manifest: Manifest, directory: str | os.PathLike) -> Path:
    """Write ``<directory>/<manifest_id>.parquet`` (episodes) and ``<manifest_id>.json`` (params).

    Same manifest -> byte-identical files. Each file is written to a temp name then renamed.
    Returns the Parquet path.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ManifestError(f"{directory}: cannot create ({exc.strerror or exc})") from None
    parquet_path = directory / f"{manifest.manifest_id}.parquet"
    sink = pa.BufferOutputStream()
    pq.write_table(_episode_table(manifest), sink, compression="zstd")
    _atomic_write(parquet_path, sink.getvalue().to_pybytes())
    sidecar = {"manifest_id": manifest.manifest_id, "params": manifest.params}
    _atomic_write(parquet_path.with_suffix(".json"), (json.dumps(sidecar, sort_keys=True, indent=2) + "\n").encode())
    return parquet_path


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read a manifest back from its ``.parquet`` or ``.json`` path; checks schema and content hash."""
    path = Path(path)
    parquet_path, json_path = path.with_suffix(".parquet"), path.with_suffix(".json")
    for needed in sorted((parquet_path, json_path), key=lambda p: p != path):  # the given path first
        if not needed.is_file():
            raise ManifestError(f"{needed}: manifest file not found")
    try:
        sidecar = json.loads(json_path.read_text())
        manifest_id, params = sidecar["manifest_id"], sidecar["params"]
    except (ValueError, KeyError, TypeError) as error:
        raise ManifestError(f"{json_path}: not a manifest sidecar ({type(error).__name__}: {error})") from None
    try:
        table = pq.read_table(parquet_path)
    except (OSError, pa.ArrowException) as error:
        raise ManifestError(f"{parquet_path}: unreadable Parquet ({error})") from None
    schema = table.schema.remove_metadata()
    if schema.equals(MANIFEST_SCHEMA_V1):
        table = table.append_column("role", pa.array(["test"] * table.num_rows, pa.string()))
    elif not schema.equals(MANIFEST_SCHEMA):
        raise ManifestError(f"{parquet_path}: columns {table.schema.names} do not match the manifest schema")
    episodes = tuple(Episode(**{**row, "support_ids": tuple(row["support_ids"])}) for row in table.to_pylist())
    for episode in episodes:
        if episode.role not in EPISODE_ROLES:
            raise ManifestError(f"{parquet_path}: episode {episode.episode_id} has role {episode.role!r} "
                                f"(expected {' or '.join(EPISODE_ROLES)})")
    for episode in episodes:
        if episode.episode_id != episode_id_for(episode):
            raise ManifestError(f"{parquet_path}: episode {episode.episode_id} does not match its content (file edited?)")
    if manifest_id_for(params, episodes) != manifest_id:
        raise ManifestError(f"{parquet_path}: content hash differs from manifest id {manifest_id} (file edited?)")
    return Manifest(manifest_id, episodes, params)
