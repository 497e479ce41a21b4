"""The explicit pyarrow schema of one episode row (results/<run>/episodes/method=<m>/part-*.parquet).

One row = one (episode, method). The metric columns are the *sufficient statistics* of
harness.metrics.episode_metrics, so every pooled number of the report is a group-by over rows.
``method`` is the hive partition column (it lives in the folder name, not inside the files).
"""
import pyarrow as pa

SCHEMA_VERSION = 5
# Version history (older parts stay readable: read_run fills columns they lack with nulls):
#   1: initial schema.
#   2: + gt_comp_pred_px (predicted pixels inside each GT component: the ">= 50 %" hit rule) and
#      pro_overlap_sum (per score bin, summed over GT components: AUPRO). Null in version-1 rows.
#   3: + device (the torch device the method computed on: "cpu", "cuda:0", ...). Null in older rows.
#   4: + gt_comp_max_score (the highest score inside each GT component: component recall at ANY
#      threshold t is ``gt_comp_max_score > t``) and role ("test", or "calibration" for a held-out
#      good image scored only to set a deployable threshold). Null in older rows (read as "test").
#   5: + trained_class (the row's class is one the method's weights were trained on, scored with
#      --allow-trained-classes: not a novel class; harness.class_split). Null in older rows and when
#      the method's weights do not record their classes.
HIST_BINS = 64  # fixed bins of the score map over [0, 1] (bin i = [i/64, (i+1)/64), last closed)

EPISODE_FIELDS = [
    # keys
    pa.field("run_id", pa.string()),
    pa.field("manifest_id", pa.string()),
    pa.field("episode_id", pa.string()),
    pa.field("method_config_hash", pa.string()),
    pa.field("method_options", pa.string()),  # canonical JSON of the resolved options
    pa.field("dataset", pa.string()),
    pa.field("object", pa.string()),
    pa.field("category", pa.string()),
    pa.field("class_id", pa.string()),  # "<object>/<category>"
    pa.field("shots", pa.int32()),
    pa.field("seed", pa.int64()),
    pa.field("repeat", pa.int32()),
    pa.field("query_id", pa.string()),
    pa.field("support_ids", pa.list_(pa.string())),
    pa.field("query_is_normal", pa.bool_()),
    pa.field("support_is_normal", pa.bool_()),
    pa.field("role", pa.string()),  # v4: "test", "calibration" or "unlabelled" (harness.episodes); null = "test"
    pa.field("trained_class", pa.bool_()),  # v5: a class the method trained on (harness.class_split); null = unknown
    # geometry (native resolution)
    pa.field("height", pa.int32()),
    pa.field("width", pa.int32()),
    pa.field("gt_area_px", pa.int64()),
    pa.field("gt_area_frac", pa.float64()),
    pa.field("size_bin", pa.string()),  # by GT area fraction, default edges; "normal" for normal queries
    pa.field("gt_components", pa.int32()),
    pa.field("gt_comp_areas", pa.list_(pa.int64())),
    pa.field("gt_comp_hit", pa.list_(pa.bool_())),  # "touch" rule: >= 1 predicted pixel in the component
    pa.field("gt_comp_pred_px", pa.list_(pa.int64())),  # v2: predicted pixels inside each GT component
    pa.field("gt_comp_max_score", pa.list_(pa.float32())),  # v4: highest score inside each GT component
    # v2: [HIST_BINS]; entry i = sum over GT components of the fraction of its pixels in score bins >= i
    pa.field("pro_overlap_sum", pa.list_(pa.float64())),
    pa.field("pred_area_px", pa.int64()),
    pa.field("pred_components", pa.int32()),
    pa.field("fp_components", pa.int32()),  # predicted components touching no GT pixel
    pa.field("fp_comp_areas", pa.list_(pa.int64())),
    # sufficient statistics at the native threshold
    pa.field("threshold", pa.float64()),
    pa.field("tp", pa.int64()),
    pa.field("fp", pa.int64()),
    pa.field("fn", pa.int64()),
    pa.field("tn", pa.int64()),
    pa.field("iou_fg", pa.float64()),  # convenience only; pooled numbers use the counts
    pa.field("image_positive", pa.bool_()),  # any predicted component >= min area
    pa.field("max_score", pa.float32()),
    pa.field("score_hist_pos", pa.list_(pa.int64())),  # HIST_BINS counts over GT-positive pixels
    pa.field("score_hist_neg", pa.list_(pa.int64())),  # HIST_BINS counts over GT-negative pixels
    # operational
    pa.field("status", pa.string()),  # "ok" or "error: <Type>: <message>"
    pa.field("latency_s", pa.float64()),  # the method's own predict() wall time
    pa.field("load_s", pa.float64()),  # reading images + masks (harness overhead)
    pa.field("worker", pa.string()),
    pa.field("device", pa.string()),  # v3: torch device of the method ("cpu", "cuda:0"); null if unknown
    pa.field("finished_at", pa.timestamp("us", tz="UTC")),
    pa.field("pred_path", pa.string()),
]

EPISODE_SCHEMA = pa.schema(EPISODE_FIELDS, metadata={"schema_version": str(SCHEMA_VERSION)})
# As read back through hive partitioning (method comes from the folder name).
EPISODE_SCHEMA_WITH_METHOD = EPISODE_SCHEMA.append(pa.field("method", pa.string()))
METRIC_COLUMNS = [
    "height", "width", "gt_area_px", "gt_area_frac", "size_bin", "gt_components", "gt_comp_areas",
    "gt_comp_hit", "gt_comp_pred_px", "pred_area_px", "pred_components", "fp_components", "fp_comp_areas", "threshold",
    "tp", "fp", "fn", "tn", "iou_fg", "image_positive", "max_score", "score_hist_pos", "score_hist_neg",
    "pro_overlap_sum", "gt_comp_max_score",
]
