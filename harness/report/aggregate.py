"""Pooled numbers per (method, shots) from episode rows: vectorised group-bys, no row loops.

Every function here takes the episode frame (schema of ``harness.schema`` plus ``method``) and
returns plain frames of numbers; formatting lives in ``tables.py``. The per-episode metric
formulas are ``harness.metrics``'s; this module only decides which rows are pooled together.

Pooling rules (also written in the report's captions):
- mIoU: per ``repeat`` (one support draw), class-wise pooled IoU over the defective episodes,
  unweighted mean over classes; then mean and std (ddof=0) over repeats.
- FB-IoU, size-stratified mIoU, per-class IoU, oracle IoU, pixel AUROC/AP/F1-max, component
  recall and false alarms: pooled over all repeats.
- Image AUROC / AP / F1-max: per-episode ``max_score`` of all ok queries, defective vs normal
  (exact, ties counted half). AUPRO: ``pro_overlap_sum`` of the defective queries and the
  negative histograms of all ok queries, FPR <= 30 %. Both component-hit rules ("touch": >= 1
  predicted pixel; "half": >= 50 % of the component predicted). Schema-1 rows lack
  ``pro_overlap_sum`` / ``gt_comp_pred_px``: AUPRO and the "half" rule use only the rows that
  have them (nan when none does).
- Only rows with ``status == "ok"`` enter a metric; the others are counted as failed, except
  ``"unscored"`` rows (queries without a label, ``harness.records.UNSCORED_STATUS``): ``n_unscored``.
- Classes the method trained on (rows with ``trained_class``, scored with --allow-trained-classes,
  ``harness.class_split``) are pooled like the others and counted: ``n_trained_classes`` per group,
  ``trained_class`` per class (the tables flag them).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness import metrics
from harness.records import UNSCORED_STATUS
from harness.schema import HIST_BINS

GROUP_KEYS = ["method", "shots"]
_SCALAR_COLUMNS = ["dataset", "method", "shots", "repeat", "class_id", "episode_id", "query_is_normal",
                   "status", "gt_area_frac", "threshold", "tp", "fp", "fn", "tn", "image_positive",
                   "fp_components", "latency_s"]
DEFAULT_SIZE_EDGES = metrics.SIZE_BIN_EDGES  # GT area fraction, half-open bins [lo, hi)
DEFAULT_COMPONENT_EDGES_PX = metrics.ABS_SIZE_BIN_EDGES_PX  # 8², 16², 32², 96² px
AUPRO_STRICT_FPR = 0.05  # AU-PRO up to 5 % pixel FPR (MVTec AD 2) beside the usual 30 %


@dataclass
class Aggregates:
    """All pooled numbers of a report, as long frames keyed by ``keys`` (+ a bin or class)."""

    keys: list[str]
    summary: pd.DataFrame  # one row per group
    miou_by_repeat: pd.DataFrame  # keys + repeat, miou
    size_miou: pd.DataFrame  # keys + size_bin, n_episodes, n_classes, miou
    component_recall: pd.DataFrame  # keys + component_bin, n_components, n_hit, recall
    per_class: pd.DataFrame  # keys + class_id, n_episodes, iou, oracle_iou, oracle_threshold
    pooled_hist: dict  # group tuple -> (hist_pos [64], hist_neg [64]) over defective episodes
    operating: object = None  # harness.report.operating.OperatingPoints (set by report.summarise)


def group_keys(rows: pd.DataFrame) -> list[str]:
    """``method, shots``, plus ``dataset`` first when the rows span several datasets."""
    return (["dataset"] if rows["dataset"].nunique() > 1 else []) + GROUP_KEYS


def _arrow(column: pd.Series):
    """The Arrow array behind an ``ArrowDtype`` column, as one chunk."""
    import pyarrow as pa

    array = pa.array(column)
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def list_matrix(column: pd.Series, width: int = HIST_BINS) -> np.ndarray:
    """A list column of fixed-length lists as an int64 matrix ``[N, width]``."""
    if len(column) == 0:
        return np.zeros((0, width), np.int64)
    if isinstance(column.dtype, pd.ArrowDtype):
        import pyarrow as pa

        flat = _arrow(column).flatten().to_numpy(zero_copy_only=False)
        return flat.astype(np.int64).reshape(len(column), width)
    return np.stack(column.to_numpy()).astype(np.int64, copy=False)


def flatten_lists(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A list column as ``(values, parent_row_position)``; null lists count as empty."""
    if isinstance(column.dtype, pd.ArrowDtype):
        import pyarrow as pa
        import pyarrow.compute as pc

        array = _arrow(column)
        return (pc.list_flatten(array).to_numpy(zero_copy_only=False),
                pc.list_parent_indices(array).to_numpy(zero_copy_only=False))
    items = [np.asarray(x) if x is not None else np.empty(0) for x in column.to_numpy()]
    lengths = np.fromiter((len(x) for x in items), np.int64, len(items))
    values = np.concatenate(items) if items else np.empty(0)
    return values, np.repeat(np.arange(len(items)), lengths)


def group_sum(codes: np.ndarray, matrix: np.ndarray, n_groups: int, dtype=np.int64) -> np.ndarray:
    """Row sums of ``matrix [N, B]`` per group code -> ``[n_groups, B]`` of ``dtype`` (sort, then
    reduceat): int64 for histogram counts, float64 for the AUPRO overlap sums."""
    return group_sums(codes, [matrix], n_groups, [dtype])[0]


def group_sums(codes: np.ndarray, matrices, n_groups: int, dtypes) -> list[np.ndarray]:
    """:func:`group_sum` of several matrices with the same row codes: one sort serves them all."""
    outs = [np.zeros((n_groups, matrix.shape[1]), dtype) for matrix, dtype in zip(matrices, dtypes)]
    if len(codes):
        order = np.argsort(codes, kind="stable")
        sorted_codes = codes[order]
        starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
        for out, matrix, dtype in zip(outs, matrices, dtypes):
            out[sorted_codes[starts]] = np.add.reduceat(matrix[order], starts, axis=0, dtype=dtype)
    return outs


def _class_iou(sums: pd.DataFrame) -> np.ndarray:
    return np.array([metrics.pooled_iou(tp, fp, fn)
                     for tp, fp, fn in zip(sums["tp"], sums["fp"], sums["fn"])], dtype=float)


CELL_KEYS = ["dataset", "method", "shots", "class_id", "query_is_normal", "has_pro"]


@dataclass(eq=False)  # identity equality: pandas compares ``attrs`` when frames are combined
class HistCells:
    """The per-row 64-bin lists of the ok rows, summed per cell (``CELL_KEYS``): all the report
    needs of them. ``load.read_report_rows`` builds it while streaming the Parquet parts (the
    lists of a million rows never sit in memory); ``from_rows`` builds it from an in-memory frame."""

    frame: pd.DataFrame  # CELL_KEYS (+ n), one row per cell
    pos: np.ndarray  # [cells, 64] int64: summed score_hist_pos
    neg: np.ndarray  # [cells, 64] int64: summed score_hist_neg
    pro: np.ndarray  # [cells, 64] float64: summed pro_overlap_sum (rows that have it)

    @staticmethod
    def from_rows(rows: pd.DataFrame) -> "HistCells":
        ok = (rows["status"] == "ok").to_numpy()
        if "role" in rows:  # calibration rows (schema 4) only set thresholds
            ok = ok & (rows["role"].astype(object) != "calibration").to_numpy(bool)
        keys = rows.loc[ok, [k for k in CELL_KEYS if k != "has_pro"]].copy()
        keys["class_id"] = keys["class_id"].astype(str)
        keys["query_is_normal"] = keys["query_is_normal"].astype(bool)
        if "pro_overlap_sum" in rows:
            overlap, present = _float_lists(rows.loc[ok, "pro_overlap_sum"])
        else:
            overlap, present = np.zeros((0, HIST_BINS)), np.zeros(int(ok.sum()), bool)
        keys["has_pro"] = present
        pro = np.zeros((len(keys), HIST_BINS))
        pro[present] = overlap
        return HistCells.combine([(keys, list_matrix(rows["score_hist_pos"][ok]),
                                   list_matrix(rows["score_hist_neg"][ok]), pro)])

    @staticmethod
    def combine(parts) -> "HistCells":
        """Sum ``[(key frame, pos, neg, pro), ...]`` (row-aligned) into one cell per key."""
        parts = [p for p in parts if len(p[0])]
        if not parts:
            empty = np.zeros((0, HIST_BINS))
            return HistCells(pd.DataFrame(columns=CELL_KEYS + ["n"]), empty.astype(np.int64), empty.astype(np.int64), empty)
        frame = pd.concat([p[0] for p in parts], ignore_index=True)
        grouped = frame.groupby(CELL_KEYS, sort=True, observed=True)
        codes, n = grouped.ngroup().to_numpy(), grouped.ngroups
        weights = frame["n"].to_numpy() if "n" in frame else np.ones(len(frame), np.int64)
        out = grouped.size().rename("n").reset_index()
        out["n"] = np.bincount(codes, weights=weights, minlength=n).astype(np.int64)
        sums = group_sums(codes, [np.concatenate([p[i] for p in parts]) for i in (1, 2, 3)], n,
                          [np.int64, np.int64, np.float64])
        return HistCells(out, *sums)


def threshold_protocol(rows: pd.DataFrame, declared: str | None) -> str:
    """"native" for a fixed method threshold, "deployable" for one fitted per episode on support
    data (the stored threshold varies between episodes), unless run.json declares it."""
    if declared:
        return declared
    return "deployable" if rows["threshold"].nunique(dropna=True) > 1 else "native"


def aggregate(rows: pd.DataFrame, *, size_edges=DEFAULT_SIZE_EDGES,
              component_edges_px=DEFAULT_COMPONENT_EDGES_PX,
              declared_protocols: dict[str, str] | None = None,
              run_rates: dict[str, float] | None = None,
              hist_cells: HistCells | None = None) -> Aggregates:
    """Every pooled number of the report.

    ``declared_protocols``: method label -> threshold protocol from run.json (optional).
    ``run_rates``: method label -> episodes/s of its run from run.json, used when rows carry
    no ``latency_s``. ``hist_cells``: the histogram lists already summed per cell (rows then need
    no list of 64 bins, only ``has_pro``); built from ``rows`` when not given.
    """
    keys = group_keys(rows)
    if hist_cells is None and "score_hist_pos" not in rows:
        hist_cells = rows.attrs.get("hist_cells")  # streamed by load.load_runs
    if hist_cells is None:
        hist_cells = HistCells.from_rows(rows)
        rows = rows.assign(has_pro=rows["pro_overlap_sum"].notna().to_numpy() if "pro_overlap_sum" in rows
                           else np.zeros(len(rows), bool))
    # A narrow frame of scalar columns: group-bys never drag the list columns along.
    scalars = rows[keys + [c for c in _SCALAR_COLUMNS if c not in keys]].copy()
    scalars["class_id"] = scalars["class_id"].astype("category")
    codes_all = scalars.groupby(keys, sort=True, observed=True).ngroup().to_numpy()
    groups = scalars[keys].drop_duplicates().sort_values(keys).reset_index(drop=True)
    n_groups = len(groups)
    ok_mask = (scalars["status"] == "ok").to_numpy()
    ok = scalars[ok_mask]
    ok_codes = codes_all[ok_mask]
    normal_mask = ok["query_is_normal"].to_numpy(bool)
    defective, normal = ok[~normal_mask], ok[normal_mask]
    defective_codes = ok_codes[~normal_mask]
    comp_areas = rows["gt_comp_areas"][ok_mask][~normal_mask]
    comp_hits = rows["gt_comp_hit"][ok_mask][~normal_mask]

    summary = groups.copy()
    summary["n_episodes"] = np.bincount(codes_all, minlength=n_groups)
    unscored_mask = (scalars["status"] == UNSCORED_STATUS).to_numpy()  # unlabelled queries: neither ok nor failed
    summary["n_failed"] = np.bincount(codes_all[~ok_mask & ~unscored_mask], minlength=n_groups)
    summary["n_unscored"] = np.bincount(codes_all[unscored_mask], minlength=n_groups)
    summary["n_defective"] = np.bincount(defective_codes, minlength=n_groups)
    summary["n_normal"] = np.bincount(ok_codes[normal_mask], minlength=n_groups)
    trained = _trained_classes(rows, keys)
    summary["n_trained_classes"] = 0
    if len(trained):
        counts = trained.groupby(keys, observed=True).size()
        summary["n_trained_classes"] = [int(counts.get(tuple(g) if len(keys) > 1 else g[0], 0))
                                        for g in summary[keys].itertuples(index=False)]

    miou_by_repeat = _miou_by_repeat(defective, keys)
    stats = miou_by_repeat.groupby(keys, observed=True)["miou"].agg(
        miou_mean="mean", miou_std=lambda s: float(np.std(s)), n_repeats="size")
    summary = summary.merge(stats.reset_index(), on=keys, how="left")
    # Fewest defective episodes in any (repeat, class) stratum: the bootstrap resamples within
    # strata, so a CI from strata of 1-4 episodes is too narrow to trust (flagged in the tables).
    strata = defective.groupby(keys + ["repeat", "class_id"], sort=False, observed=True).size()
    strata = strata[strata > 0].groupby(level=list(range(len(keys))), observed=True).min()
    summary = summary.merge(strata.rename("min_class_episodes").reset_index(), on=keys, how="left")

    sums = defective.groupby(keys, observed=True)[["tp", "fp", "fn", "tn"]].sum().reset_index()
    sums["fb_iou"] = [metrics.fb_iou(*r) for r in sums[["tp", "fp", "fn", "tn"]].to_numpy()]
    summary = summary.merge(sums[keys + ["fb_iou"]], on=keys, how="left")

    hist_metrics, pooled_hist, per_class = _histogram_metrics(hist_cells, ok, defective, keys, groups)
    summary = summary.merge(hist_metrics, on=keys, how="left")
    oracle = per_class.groupby(keys, observed=True)["oracle_iou"].mean().rename("oracle_miou")
    summary = summary.merge(oracle.reset_index(), on=keys, how="left")
    summary = summary.merge(_image_and_region(rows, ok_mask, keys, groups, hist_cells), on=keys, how="left")
    per_class = per_class.merge(_per_class_image_region(rows, ok_mask, keys, hist_cells),
                                on=keys + ["class_id"], how="left")
    marked = set(trained[keys + ["class_id"]].astype(str).itertuples(index=False, name=None))
    per_class["trained_class"] = [tuple(map(str, g)) in marked
                                  for g in per_class[keys + ["class_id"]].itertuples(index=False, name=None)]
    class_means = per_class.groupby(keys, observed=True)[["iou", "pixel_auroc", "image_auroc", "aupro"]].mean()
    class_means.columns = ["class_mean_iou", "class_mean_pixel_auroc", "class_mean_image_auroc", "class_mean_aupro"]
    summary = summary.merge(class_means.drop(columns="class_mean_iou").reset_index(), on=keys, how="left")
    summary = summary.merge(_false_alarms(normal, keys), on=keys, how="left")
    summary = summary.merge(_operational(scalars, ok, keys, declared_protocols or {}, run_rates or {}),
                            on=keys, how="left")
    return Aggregates(
        keys=keys, summary=summary, miou_by_repeat=miou_by_repeat,
        size_miou=_size_miou(defective, keys, size_edges),
        component_recall=_component_recall(defective, comp_areas, comp_hits, keys, component_edges_px,
                                           rows["gt_comp_pred_px"][ok_mask][~normal_mask]
                                           if "gt_comp_pred_px" in rows else None),
        per_class=per_class, pooled_hist=pooled_hist)


def _trained_classes(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``keys + class_id`` of the classes whose rows are marked ``trained_class`` (schema 5; older
    rows and rows without the column: none)."""
    if "trained_class" not in rows:
        return pd.DataFrame(columns=keys + ["class_id"])
    marked = rows["trained_class"].astype("boolean").fillna(False).to_numpy(bool)
    return rows.loc[marked, keys + ["class_id"]].astype({"class_id": str}).drop_duplicates().reset_index(drop=True)


def _histogram_metrics(hist_cells: HistCells, ok: pd.DataFrame, defective: pd.DataFrame,
                       keys: list[str], groups: pd.DataFrame):
    """Pixel AUROC / AP / F1-max per group, the pooled defective histograms, and per-class IoU
    with the oracle threshold.

    The ``[N, 64]`` histograms are summed once per (group, class, normal?) cell; every pooled
    curve then sums a few cells.
    """
    n_groups = len(groups)
    cells = ok.groupby(keys + ["class_id", "query_is_normal"], sort=True, observed=True).size()
    cells = cells.rename("n").reset_index()
    # The same cells from the summed histograms (both sorted: class ids as sorted categories).
    by_cell = hist_cells.frame.groupby(keys + ["class_id", "query_is_normal"], sort=True, observed=True)
    if by_cell.ngroups != len(cells):
        raise ValueError(f"report: histogram cells ({by_cell.ngroups}) do not match the ok rows ({len(cells)})")
    cell_codes = by_cell.ngroup().to_numpy()
    cell_pos = group_sum(cell_codes, hist_cells.pos, len(cells))
    cell_neg = group_sum(cell_codes, hist_cells.neg, len(cells))
    cell_group = cells.merge(groups.assign(_group=np.arange(n_groups)), on=keys, how="left")["_group"]
    cell_group = cell_group.to_numpy()
    pos_all = group_sum(cell_group, cell_pos, n_groups)
    neg_all = group_sum(cell_group, cell_neg, n_groups)
    hist_metrics = groups.copy()
    hist_metrics["pixel_auroc"] = _per_group_hist(metrics.auroc_from_hist, pos_all, neg_all)
    hist_metrics["pixel_ap"] = _per_group_hist(metrics.ap_from_hist, pos_all, neg_all)
    hist_metrics["f1_max"] = _per_group_hist(metrics.f1max_from_hist, pos_all, neg_all)
    defective_cells = ~cells["query_is_normal"].to_numpy(bool)
    pos_def = group_sum(cell_group[defective_cells], cell_pos[defective_cells], n_groups)
    neg_def = group_sum(cell_group[defective_cells], cell_neg[defective_cells], n_groups)
    pooled_hist = {tuple(g): (pos_def[i], neg_def[i])
                   for i, g in enumerate(groups.itertuples(index=False))}
    per_class = _per_class(defective, keys, cells[defective_cells].reset_index(drop=True),
                           cell_pos[defective_cells], cell_neg[defective_cells])
    return hist_metrics, pooled_hist, per_class


def _per_group_hist(fn, hist_pos: np.ndarray, hist_neg: np.ndarray) -> list[float]:
    return [fn(p, n) if p.sum() > 0 and n.sum() > 0 else np.nan for p, n in zip(hist_pos, hist_neg)]


def _miou_by_repeat(defective: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """mIoU per (group, repeat): one group-by of the class sums, then ``metrics.class_miou``'s rule
    (ΣTP/Σ(TP+FP+FN) per class, classes with an empty union left out, unweighted mean)."""
    sums = defective.groupby(keys + ["repeat", "class_id"], sort=True, observed=True)[["tp", "fp", "fn"]].sum()
    union = (sums["tp"] + sums["fp"] + sums["fn"]).to_numpy(float)
    sums["iou"] = np.where(union > 0, sums["tp"].to_numpy(float) / np.where(union > 0, union, 1), np.nan)
    out = sums.groupby(level=list(range(len(keys) + 1)), observed=True)["iou"].mean()  # mean skips nan
    return out.rename("miou").reset_index()[keys + ["repeat", "miou"]]


def _per_class(defective: pd.DataFrame, keys: list[str], class_cells: pd.DataFrame,
               hist_pos: np.ndarray, hist_neg: np.ndarray) -> pd.DataFrame:
    """Per (group, class): pooled IoU, and the oracle IoU-max threshold of the class histogram
    (``class_cells`` keys + class_id, aligned with ``hist_pos`` / ``hist_neg`` ``[n_cells, B]``)."""
    grouped = defective.groupby(keys + ["class_id"], sort=True, observed=True)
    sums = grouped[["tp", "fp", "fn"]].sum()
    sums["n_episodes"] = grouped.size()
    sums = sums.reset_index()
    sums["iou"] = _class_iou(sums)
    position = sums.merge(class_cells[keys + ["class_id"]].assign(_cell=np.arange(len(class_cells))),
                          on=keys + ["class_id"], how="left")["_cell"].to_numpy()
    pos, neg = hist_pos[position], hist_neg[position]
    best_iou, best_threshold = [], []
    for p, n in zip(pos, neg):
        thresholds, iou = metrics.iou_sweep_from_hist(p, n)
        i = int(np.nanargmax(iou))
        best_iou.append(float(iou[i]))
        best_threshold.append(float(thresholds[i]))
    sums["class_id"] = sums["class_id"].astype(str)
    sums["oracle_iou"] = best_iou
    sums["oracle_threshold"] = best_threshold
    sums["pixel_auroc"] = _per_group_hist(metrics.auroc_from_hist, pos, neg)  # the class's defective queries
    return sums[keys + ["class_id", "n_episodes", "iou", "oracle_iou", "oracle_threshold", "pixel_auroc"]]


def _per_class_image_region(rows: pd.DataFrame, ok_mask: np.ndarray, keys: list[str],
                            hist_cells: HistCells) -> pd.DataFrame:
    """Per (group, class): image AUROC (max score of the class's defective vs its normal queries)
    and AUPRO (its components, the negatives of all its queries, FPR <= 30 %)."""
    ok = rows.loc[ok_mask, keys + ["class_id", "query_is_normal", "max_score", "gt_comp_areas", "has_pro"]]
    name = lambda group: tuple(str(v) for v in group)  # noqa: E731 - one key type for both frames
    frame = hist_cells.frame
    with_pro = frame["has_pro"].to_numpy(bool)
    pro_sums = {}
    if with_pro.any():
        grouped = frame[with_pro].groupby(keys + ["class_id"], sort=True, observed=True)
        codes = grouped.ngroup().to_numpy()
        overlap = group_sum(codes, hist_cells.pro[with_pro], grouped.ngroups, np.float64)
        neg = group_sum(codes, hist_cells.neg[with_pro], grouped.ngroups)
        for i, group in enumerate(grouped.size().index):
            pro_sums[name(group)] = (overlap[i], neg[i])
    out = []
    for group, sub in ok.groupby(keys + ["class_id"], sort=True, observed=True):
        normal = sub["query_is_normal"].to_numpy(bool)
        scored = sub["max_score"].notna().to_numpy()
        entry = {**dict(zip(keys + ["class_id"], group)), "class_id": str(group[-1])}
        entry["image_auroc"] = metrics.image_auroc(sub["max_score"].to_numpy(np.float64)[scored], ~normal[scored])
        entry["aupro"] = np.nan
        if name(group) in pro_sums:
            v2 = sub["has_pro"].to_numpy(bool) & ~normal
            n_components = len(flatten_lists(sub["gt_comp_areas"][v2])[0])
            overlap_sum, negatives = pro_sums[name(group)]
            entry["aupro"] = metrics.aupro(overlap_sum, n_components, negatives)
        out.append(entry)
    return pd.DataFrame(out, columns=keys + ["class_id", "image_auroc", "aupro"])


def _size_miou(defective: pd.DataFrame, keys: list[str], edges) -> pd.DataFrame:
    labels = metrics.size_bin_labels(tuple(edges))
    frame = defective[keys + ["class_id", "tp", "fp", "fn"]].copy()
    frame["size_bin"] = np.searchsorted(np.asarray(edges, float),
                                        defective["gt_area_frac"].to_numpy(float), side="right")
    grouped = frame.groupby(keys + ["size_bin", "class_id"], sort=True, observed=True)
    sums = grouped[["tp", "fp", "fn"]].sum()
    sums["n_episodes"] = grouped.size()
    sums = sums.reset_index()
    sums["iou"] = _class_iou(sums)
    out = sums.groupby(keys + ["size_bin"], sort=True, observed=True).agg(
        n_episodes=("n_episodes", "sum"), n_classes=("class_id", "size"), miou=("iou", "mean"))
    out = out.reset_index()
    out["size_bin"] = pd.Categorical.from_codes(out["size_bin"], categories=labels)
    return out


def _float_lists(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Non-null fixed-length float lists as ``([n, B] float64, bool [N] which rows had one)``."""
    present = column.notna().to_numpy()
    if isinstance(column.dtype, pd.ArrowDtype):
        values, parent = flatten_lists(column[present])
        n = int(present.sum())
        return (values.astype(np.float64).reshape(n, -1) if n else np.zeros((0, HIST_BINS))), present
    items = [np.asarray(x, np.float64) for x in column[present]]
    return (np.stack(items) if items else np.zeros((0, HIST_BINS))), present


def _image_and_region(rows: pd.DataFrame, ok_mask: np.ndarray, keys: list[str],
                      groups: pd.DataFrame, hist_cells: HistCells) -> pd.DataFrame:
    """Per group: image AUROC / AP / F1-max, AUPRO, component recall under both hit rules."""
    columns = keys + ["query_is_normal", "max_score", "gt_comp_areas", "gt_comp_hit", "has_pro"]
    extra = [c for c in ("gt_comp_pred_px",) if c in rows]
    ok = rows.loc[ok_mask, columns + extra]
    with_pro = hist_cells.frame["has_pro"].to_numpy(bool)
    pro_frame = hist_cells.frame[with_pro]
    pro_sums = {}
    if len(pro_frame):
        grouped = pro_frame.groupby(keys, sort=True, observed=True)
        codes = grouped.ngroup().to_numpy()
        overlap = group_sum(codes, hist_cells.pro[with_pro], grouped.ngroups, np.float64)
        neg = group_sum(codes, hist_cells.neg[with_pro], grouped.ngroups)
        for i, group in enumerate(grouped.size().index):  # sorted, as the ngroup codes
            pro_sums[group if isinstance(group, tuple) else (group,)] = (overlap[i], neg[i])
    out = []
    for group, sub in ok.groupby(keys, sort=True, observed=True):
        group = group if isinstance(group, tuple) else (group,)
        normal = sub["query_is_normal"].to_numpy(bool)
        scored = sub["max_score"].notna().to_numpy()
        scores = sub["max_score"].to_numpy(np.float64)[scored]
        labels = ~normal[scored]
        entry = dict(zip(keys, group))
        entry["image_auroc"] = metrics.image_auroc(scores, labels)
        entry["image_ap"] = metrics.image_ap(scores, labels)
        entry["image_f1_max"] = metrics.image_f1max(scores, labels)
        areas, _ = flatten_lists(sub["gt_comp_areas"][~normal])
        hits, _ = flatten_lists(sub["gt_comp_hit"][~normal])
        entry["comp_recall_touch"] = metrics._ratio(int(hits.astype(bool).sum()), len(hits))
        entry["comp_recall_half"] = entry["aupro"] = entry["aupro_5"] = np.nan
        if "gt_comp_pred_px" in sub:
            has = sub["gt_comp_pred_px"].notna().to_numpy() & ~normal
            pred_px, _ = flatten_lists(sub["gt_comp_pred_px"][has])
            v2_areas, _ = flatten_lists(sub["gt_comp_areas"][has])
            entry["comp_recall_half"] = metrics.component_recall(v2_areas, pred_px, "half")
        if group in pro_sums:
            overlap, neg = pro_sums[group]
            v2 = sub[sub["has_pro"].to_numpy(bool)]
            n_components = len(flatten_lists(v2["gt_comp_areas"][~v2["query_is_normal"].to_numpy(bool)])[0])
            entry["aupro"] = metrics.aupro(overlap, n_components, neg)
            entry["aupro_5"] = metrics.aupro(overlap, n_components, neg, fpr_limit=AUPRO_STRICT_FPR)
        out.append(entry)
    names = ["image_auroc", "image_ap", "image_f1_max", "aupro", "aupro_5", "comp_recall_touch", "comp_recall_half"]
    return pd.DataFrame(out, columns=keys + names)


def _component_recall(defective: pd.DataFrame, comp_areas: pd.Series, comp_hits: pd.Series,
                      keys: list[str], edges_px, comp_pred_px: pd.Series | None = None) -> pd.DataFrame:
    """Recall per component-size bin under the "touch" rule (``recall``) and, over the rows that
    store ``gt_comp_pred_px`` (schema >= 2), the "half" rule (``recall_half``, ``n_components_half``)."""
    labels = metrics.abs_size_bin_labels(tuple(edges_px))
    groups = defective[keys].drop_duplicates().sort_values(keys).reset_index(drop=True)
    codes = defective.groupby(keys, sort=True, observed=True).ngroup().to_numpy()
    areas, parent = flatten_lists(comp_areas)
    hits, _ = flatten_lists(comp_hits)
    n_bins = len(labels)
    cell = codes[parent] * n_bins + np.searchsorted(np.asarray(edges_px, float), areas, side="right")
    size = len(groups) * n_bins
    n_components = np.bincount(cell, minlength=size)
    n_hit = np.bincount(cell, weights=hits.astype(float), minlength=size).astype(np.int64)
    out = groups.loc[groups.index.repeat(n_bins)].reset_index(drop=True)
    out["component_bin"] = pd.Categorical(labels * len(groups), categories=labels)
    out["n_components"] = n_components
    out["n_hit"] = n_hit
    with np.errstate(invalid="ignore", divide="ignore"):
        out["recall"] = np.where(n_components > 0, n_hit / np.maximum(n_components, 1), np.nan)
    n_half = np.zeros(size, np.int64)
    n_found_half = np.zeros(size, np.int64)
    if comp_pred_px is not None and len(comp_pred_px):
        has = comp_pred_px.notna().to_numpy()
        pred_px, parent_v2 = flatten_lists(comp_pred_px[has])
        areas_v2, _ = flatten_lists(comp_areas[has])
        cell_v2 = codes[has][parent_v2] * n_bins + np.searchsorted(np.asarray(edges_px, float), areas_v2, side="right")
        n_half = np.bincount(cell_v2, minlength=size)
        found = metrics.component_found(areas_v2, pred_px, "half")
        n_found_half = np.bincount(cell_v2, weights=found.astype(float), minlength=size).astype(np.int64)
    out["n_components_half"] = n_half
    out["n_hit_half"] = n_found_half
    out["recall_half"] = np.where(n_half > 0, n_found_half / np.maximum(n_half, 1), np.nan)
    return out


def _false_alarms(normal: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    out = [{**dict(zip(keys, group)), **metrics.false_alarm_stats(sub)}
           for group, sub in normal.groupby(keys, sort=True, observed=True)]
    columns = keys + ["false_alarm_rate", "fp_pixel_rate", "fp_blobs_per_image"]
    return pd.DataFrame(out, columns=columns) if out else pd.DataFrame(columns=columns)


def _operational(rows: pd.DataFrame, ok: pd.DataFrame, keys: list[str],
                 declared: dict[str, str], run_rates: dict[str, float]) -> pd.DataFrame:
    out = []
    for group, sub in ok.groupby(keys, sort=True, observed=True):
        entry = dict(zip(keys, group))
        method = entry["method"]
        entry["threshold_protocol"] = threshold_protocol(sub, declared.get(method))
        entry["threshold"] = float(sub["threshold"].median())
        out.append(entry)
    protocols = pd.DataFrame(out, columns=keys + ["threshold_protocol", "threshold"])
    latency = rows.groupby(keys, sort=True, observed=True)["latency_s"].agg(["sum", "count"])
    latency = latency.reset_index()
    total = latency["sum"].to_numpy(float)
    from_latency = latency["count"].to_numpy(float) / np.where(total > 0, total, np.nan)
    from_run = np.array([run_rates.get(m, np.nan) for m in latency["method"]], dtype=float)
    use_latency = np.isfinite(from_latency)
    latency["episodes_per_s"] = np.where(use_latency, from_latency, from_run)
    latency["episodes_per_s_source"] = np.where(use_latency, "latency", "run elapsed")
    latency = latency[keys + ["episodes_per_s", "episodes_per_s_source"]]
    return protocols.merge(latency, on=keys, how="outer")
