"""The class-split protocol: score a method only on defect classes it never trained on.

A method that learns from defect classes declares what it was trained on
(:class:`DeclaresTraining`: ``trained_on(config, weights) -> TrainedOn | None``; SOFS reads it from
its head's checkpoint). Before any episode runs, :func:`check_trained_classes` compares the
manifest's classes with each method's record: a run that would score a training class as novel is
refused in one line naming the classes and ``--allow-trained-classes``; with that flag the rows of
those classes are scored and marked (row column ``trained_class``, flagged in the report). A
method that declares nothing (the training-free baselines) trained on no defect class.

A manifest class counts as trained when the record lists its id and the record's dataset has the
evaluated dataset's name (or none), or when its images and masks are byte for byte those of a class the
method trained on (a renamed copy of the data; :func:`class_fingerprints`).

run.json keeps, per method, ``trained_on`` (the record) and ``trained_classes_scored`` (the
manifest classes it trained on; ``null`` when the record does not say which classes).
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from methods.base import MethodError, MethodSpec, coerce_options


class TrainedClassesError(MethodError):
    """A run that would score classes a method was trained on as novel (one line)."""


@dataclass(frozen=True)
class TrainedOn:
    """What a method's weights were trained on.

    ``classes``: class ids (``object/category``) it saw, ``None`` when not recorded (the released
    SOFS head, heads trained before sofs-bench recorded them); ``class_sha256``: class id ->
    :func:`class_fingerprints` of its images; ``data_sha256``: one hash over those; ``notes``:
    facts about the training the report shows as the method's flags (a switch that could not act
    on the data, ``methods.sofs.switches``).
    """

    source: str  # what was read, for messages: "head results/x/sofs_head.pt"
    dataset: str = ""  # the training dataset's name ("" when unknown)
    classes: tuple[str, ...] | None = None
    class_sha256: dict[str, str] = field(default_factory=dict)
    data_sha256: str = ""
    notes: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["classes"] = None if self.classes is None else list(self.classes)
        data["notes"] = list(self.notes)
        return data


@runtime_checkable
class DeclaresTraining(Protocol):
    """Optional part of the method contract (``methods.base.Method``): what its weights learned from."""

    @staticmethod
    def trained_on(config: Any, weights: dict[str, Path]) -> TrainedOn | None: ...


def class_fingerprints(records: Sequence, read_image=None, read_mask=None) -> dict[str, str]:
    """``{class_id: sha256}`` over the bytes of the defective images and masks of each class
    (content hashes of the files and the mask value, sorted: ids and paths do not enter), so the
    same class under another folder or object name has the same fingerprint. With ``read_image``
    and ``read_mask`` (records held in memory, no files) the decoded arrays are hashed instead."""
    from datasets.base import resolve_link_stub
    from harness.provenance import ContentHashes

    hashes = ContentHashes()
    entries: dict[str, list] = defaultdict(list)
    for record in records:
        if record.mask_path is None:
            continue  # defect-free or unlabelled: not what a class is learnt from
        try:
            if read_image is not None and read_mask is not None:
                digests = [_array_sha256(read_image(record)), _array_sha256(read_mask(record))]
            else:
                digests = [hashes.digest(resolve_link_stub(Path(record.path))), hashes.digest(Path(record.mask_path))]
        except OSError as exc:
            raise MethodError(f"{record.path}: cannot read to fingerprint its class ({exc.strerror or exc})") from None
        entries[record.class_id].append([*digests, record.mask_value])
    hashes.save()
    return {class_id: _sha256(sorted(items)) for class_id, items in sorted(entries.items())}


def _array_sha256(array) -> str:
    import numpy as np

    array = np.ascontiguousarray(array)
    return hashlib.sha256(str((array.shape, array.dtype.str)).encode() + array.tobytes()).hexdigest()


def data_sha256(class_sha256: dict[str, str]) -> str:
    """One hash over the training classes' fingerprints."""
    return _sha256(sorted(class_sha256.values()))


def _sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, separators=(",", ":")).encode()).hexdigest()


def training_record(spec: MethodSpec, weights: dict[str, str]) -> TrainedOn | None:
    """The method's :class:`TrainedOn`, or ``None`` when it declares none (trained on no defect class)."""
    cls = spec.method_class()
    if not (isinstance(cls, type) and issubclass(cls, DeclaresTraining)):
        return None
    config = coerce_options(cls.Config, spec.resolved_options())
    return cls.trained_on(config, {key: Path(path) for key, path in weights.items()})


def trained_classes(record: TrainedOn, dataset, class_ids: Sequence[str]) -> list[str] | None:
    """The classes of ``class_ids`` that ``record`` trained on (sorted); ``None`` when it does not
    say which classes it trained on."""
    if record.classes is None:
        return None
    known = set(record.classes)
    same_dataset = record.dataset in ("", dataset.name)  # "": a record without the dataset's name
    hits = {c for c in class_ids if c in known and same_dataset}
    rest = [c for c in class_ids if c not in hits]
    if rest and record.class_sha256:
        seen = set(record.class_sha256.values())
        wanted = set(rest)
        fingerprints = class_fingerprints([r for r in dataset.records if r.class_id in wanted])
        hits |= {c for c, sha in fingerprints.items() if sha in seen}
    return sorted(hits)


def check_trained_classes(specs: Sequence[MethodSpec], identities: dict, dataset, manifest, allow: bool,
                          warn: Callable[[str], None]) -> None:
    """Refuse (``TrainedClassesError``) a run that would score as novel a class one of ``specs``
    trained on, unless ``allow``; record each method's ``trained_on`` and
    ``trained_classes_scored`` in its run.json entry (``identities[name][2]``)."""
    class_ids = sorted({f"{e.object}/{e.category}" for e in manifest.episodes})
    for spec in specs:
        identity = identities[spec.name][2]
        record = training_record(spec, identity.get("weights") or {})
        scored = [] if record is None else trained_classes(record, dataset, class_ids)
        if record is not None:
            identity["trained_on"] = record.as_json()
        identity["trained_classes_scored"] = scored
        if scored is None:
            where = f" on {record.dataset}" if record.dataset else ""
            warn(f"{spec.name}: {record.source} was trained{where} without a record of its classes: "
                 "cannot check that the evaluated classes are novel (rows: trained_class unknown)")
        elif scored and not allow:
            raise TrainedClassesError(
                f"{spec.name}: {record.source} was trained on {len(scored)} of the classes to evaluate "
                f"({', '.join(scored)}); evaluate other classes (--classes, --fold) or pass "
                "--allow-trained-classes to score them marked as training classes")
        elif scored:
            warn(f"{spec.name}: scoring {len(scored)} class(es) its weights were trained on ({', '.join(scored)}): "
                 "rows marked trained_class, flagged in the report (--allow-trained-classes)")


def mark_rows(rows: list[dict], scored: Sequence[str] | None) -> list[dict]:
    """Set each row's ``trained_class``: whether its class is among ``scored`` (``None`` = unknown)."""
    trained = None if scored is None else set(scored)
    for row in rows:
        row["trained_class"] = None if trained is None else row["class_id"] in trained
    return rows
