"""``RunRecord``: run.json as a typed record, read and written here only.

``harness.run`` fills one before the first episode runs and again at the end; ``harness.store``
reads and writes the file through :func:`parse` / :meth:`RunRecord.to_json`; the report reads the
fields it needs from it. A run.json written by an older version reads back: a field it lacks
takes its default (``None``, ``{}``, ``[]``), and a field this version does not know is kept in
``extra`` and written back unchanged on resume.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


class RecordError(ValueError):
    """run.json holds a field of the wrong type (one line, naming the file and the field)."""


SCHEMA_VERSION = 1
CHUNK_ORDERS = ("query", "manifest")


@dataclass
class RunRecord:
    run_id: str | None = None
    schema_version: int = SCHEMA_VERSION
    command: str | None = None
    dataset: dict = field(default_factory=dict)  # {"spec", "name", "root", "format", "meta"}
    manifest_id: str | None = None
    manifest_params: dict = field(default_factory=dict)
    eval_settings: dict | None = None  # harness.runner.EvalSettings as JSON
    chunk_size: int | None = None
    chunk_order: str | None = None  # CHUNK_ORDERS; None: a run.json from before chunk orders
    episode_timeout_s: float | None = None
    git: dict = field(default_factory=dict)
    packages: dict = field(default_factory=dict)
    hardware: dict = field(default_factory=dict)
    status: str | None = None  # running | interrupted | complete | incomplete
    started_at: str | None = None
    ended_at: str | None = None
    elapsed_s: float | None = None  # summed over invocations
    executor: dict = field(default_factory=dict)
    invocations: list = field(default_factory=list)
    methods: dict = field(default_factory=dict)  # name -> identity, config_hash, backbone_views, device
    counts: dict = field(default_factory=dict)
    backbone_views: dict | None = None
    extra: dict = field(default_factory=dict)  # fields of another version, kept as they were

    @property
    def resolved_chunk_order(self) -> str:
        """The chunk order of this run: a run made before chunks were grouped by query (a chunk
        size but no order) keeps the manifest order."""
        return self.chunk_order or ("manifest" if self.chunk_size else "query")

    def method_protocol(self, method: str) -> str | None:
        """The threshold protocol the method class declared (``methods.base``), None if unknown."""
        entry = self.methods.get(method)
        protocol = entry.get("threshold_protocol") if isinstance(entry, dict) else None
        return str(protocol) if protocol else None

    @property
    def planned_episodes(self) -> int | None:
        """Episodes per method of the run's manifest, None when unknown."""
        planned = self.manifest_params.get("n_episodes")
        return planned if isinstance(planned, int) and not isinstance(planned, bool) and planned >= 0 else None

    def to_json(self) -> dict:
        """The run.json object: the fields known so far (``ended_at`` and ``episode_timeout_s``
        also when null) and the ``extra`` fields of another version."""
        return {**self.extra, **{k: v for k, v in asdict(self).items()
                                 if k != "extra" and (v is not None or k in ("ended_at", "episode_timeout_s"))}}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True, default=str)


# The JSON types each field may hold (None is always allowed: a field an older run.json lacks).
_TYPES = {"run_id": str, "schema_version": int, "command": str, "dataset": dict, "manifest_id": str,
          "manifest_params": dict, "eval_settings": dict, "chunk_size": int, "chunk_order": str,
          "episode_timeout_s": (int, float), "git": dict, "packages": dict, "hardware": dict, "status": str,
          "started_at": str, "ended_at": str, "elapsed_s": (int, float), "executor": dict, "invocations": list,
          "methods": dict, "counts": dict, "backbone_views": dict}
_NAMES = {str: "a string", int: "an integer", float: "a number", dict: "a JSON object", list: "a JSON list"}


def parse(data, path: Path) -> RunRecord:
    """A :class:`RunRecord` from a parsed run.json; :class:`RecordError` naming ``path`` and the
    field when a field holds another type than this project writes (a hand-edited or damaged file)."""
    if not isinstance(data, dict):
        raise RecordError(f"{path}: not a run record (a JSON object)")
    known = {f.name for f in fields(RunRecord)} - {"extra"}
    for key, kind in _TYPES.items():
        value = data.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            raise RecordError(f"{path}: field '{key}' holds {json.dumps(value)[:60]}, not "
                              f"{' or '.join(dict.fromkeys(_NAMES[k] for k in kinds))}; the run record is damaged "
                              "(restore it, or use another --out)")
    bad = next((name for name, entry in (data.get("methods") or {}).items() if not isinstance(entry, dict)), None)
    if bad is not None:
        raise RecordError(f"{path}: field 'methods.{bad}' is not an object; the run record is damaged")
    order, size = data.get("chunk_order"), data.get("chunk_size")
    if order not in (None, *CHUNK_ORDERS) or size is not None and size < 1:
        raise RecordError(f"{path}: chunk_order {data.get('chunk_order')!r} / chunk_size {data.get('chunk_size')!r} "
                          f"are not a chunking this project writes ({' or '.join(CHUNK_ORDERS)}, >= 1)")
    values = {key: value for key, value in data.items() if key in known and value is not None}
    return RunRecord(**values, extra={key: value for key, value in data.items() if key not in known})


def loads(text: str, path: Path) -> RunRecord:
    try:
        return parse(json.loads(text), path)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}: not valid JSON ({exc})") from None
