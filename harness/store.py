"""The results store: one folder per run, one Parquet part per finished chunk, plus run.json.

    results/<run>/run.json                                 provenance (see harness.provenance)
    results/<run>/manifest/<manifest_id>.parquet (+ .json) the episodes this run evaluates
    results/<run>/episodes/method=<m>/part-<chunk>.parquet one row per episode (harness.schema)
    results/<run>/predictions/<m>/<episode_id>.png         optional 8-bit score maps

Part names are deterministic (the chunk index in the manifest order) and written to a temp file
then renamed, so a killed run leaves only whole parts and a re-run replaces a chunk's own file.
Everything reads back with plain pandas / pyarrow / DuckDB (hive partitioning on ``method``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from harness.schema import EPISODE_SCHEMA, EPISODE_SCHEMA_WITH_METHOD


class StoreError(Exception):
    """A user-facing problem with a results folder (one line)."""


def partition_value(name: str) -> str:
    """Method names become folder names: keep them free of '/', '=' and spaces."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


class RunStore:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.episodes_dir = self.run_dir / "episodes"
        self.predictions_dir = self.run_dir / "predictions"
        self.manifest_dir = self.run_dir / "manifest"
        self.run_json = self.run_dir / "run.json"

    def method_dir(self, method: str) -> Path:
        return self.episodes_dir / f"method={partition_value(method)}"

    def part_path(self, method: str, chunk_index: int) -> Path:
        return self.method_dir(method) / f"part-{chunk_index:05d}.parquet"

    def prediction_path(self, method: str, episode_id: str) -> Path:
        return self.predictions_dir / partition_value(method) / f"{episode_id}.png"

    def done_chunks(self, method: str) -> set[int]:
        """Chunk indices whose part file exists (parts are atomic, so they are complete)."""
        folder = self.method_dir(method)
        if not folder.is_dir():
            return set()
        return {
            int(p.stem.removeprefix("part-"))
            for p in folder.glob("part-*.parquet")
            if p.stem.removeprefix("part-").isdigit()
        }

    def write_part(self, method: str, chunk_index: int, rows: list[dict]) -> Path:
        """Write one chunk's rows atomically (temp file + rename) with the explicit schema."""
        table = pa.Table.from_pylist(rows, schema=EPISODE_SCHEMA)
        path = self.part_path(method, chunk_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return path

    def clear_method(self, method: str) -> None:
        shutil.rmtree(self.method_dir(method), ignore_errors=True)
        shutil.rmtree(self.predictions_dir / partition_value(method), ignore_errors=True)

    def read_json(self) -> dict:
        if not self.run_json.exists():
            return {}
        try:
            return json.loads(self.run_json.read_text())
        except json.JSONDecodeError as exc:
            raise StoreError(f"{self.run_json}: not valid JSON ({exc})") from None

    def write_json(self, record: dict) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.run_json.with_name(f".run.json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
        os.replace(tmp, self.run_json)


def read_run(run_dir: Path | str, columns: list[str] | None = None) -> pd.DataFrame:
    """All episode rows of a run (errors included) with the ``method`` column from the folder."""
    episodes = Path(run_dir) / "episodes"
    if not episodes.is_dir():
        raise StoreError(f"{run_dir}: not a run folder (no episodes/ inside)")
    dataset = ds.dataset(
        episodes,
        format="parquet",
        partitioning=ds.partitioning(pa.schema([pa.field("method", pa.string())]), flavor="hive"),
        schema=EPISODE_SCHEMA_WITH_METHOD,
        exclude_invalid_files=False,
        ignore_prefixes=[".", "_"],
    )
    return dataset.to_table(columns=columns).to_pandas()
