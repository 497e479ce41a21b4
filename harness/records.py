"""Core records shared along the chain dataset -> manifest -> runner -> method -> metrics -> store.

Records are frozen dataclasses with typed fields. Paths are stored as strings so that records
serialise to Parquet/JSON unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass


IMAGE_ROLES = ("", "support", "query", "unlabelled")  # ImageRecord.role (Episode.role is another thing)
# Row status of an episode whose query has no label: predicted and stored, not scored (no metric
# column but the prediction's own: threshold, pred_area_px, pred_components, image_positive,
# max_score); neither "ok" (the report pools only "ok" rows) nor a failure.
UNSCORED_STATUS = "unscored"


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset, with the mask of ONE defect class (or none for a normal image).

    A class is ``(object, category)`` as in SOFS. An image holding several defect categories
    appears once per category, each record pointing at the mask of that category only.

    ``mask_path`` is ``None`` for defect-free (normal) images. ``mask_value`` says how the mask
    file encodes this class: ``None`` means "any non-zero pixel" (binary 0/255 masks, thresholded
    at > 127 for anti-aliased files), an integer means "pixels equal to this value" (multi-valued
    masks such as Defect Spectrum).

    ``role`` says which part an image may play in an episode, for formats that fix it: ``""`` either
    (most formats), ``"support"`` only a support, ``"query"`` only a query, ``"unlabelled"`` only a
    query, one without ground truth (``mask_path`` None, category of its class): predicted and
    stored, never scored (its rows have status ``UNSCORED_STATUS``). SOFS open-domain sets them.
    """

    image_id: str
    path: str
    mask_path: str | None
    category: str  # defect category; "good" for normal images
    object: str
    split: str  # "base" / "novel" / "test" ... as the adapter defines folds; "" when unknown
    width: int
    height: int
    mask_value: int | None = None
    role: str = ""  # one of IMAGE_ROLES

    @property
    def is_normal(self) -> bool:
        """No defect mask: a defect-free image, or (``role == "unlabelled"``) an image with no label."""
        return self.mask_path is None

    @property
    def is_labelled(self) -> bool:
        return self.role != "unlabelled"

    @property
    def class_id(self) -> str:
        return f"{self.object}/{self.category}"


@dataclass(frozen=True)
class Episode:
    """One few-shot episode: k supports of a class and one query (defective or normal)."""

    episode_id: str
    dataset: str
    object: str
    category: str
    shots: int
    seed: int
    repeat: int
    support_ids: tuple[str, ...]
    query_id: str
    query_is_normal: bool
    support_is_normal: bool = False  # FAD mode: supports are defect-free images
    # "test": a scored query; "calibration": a held-out good image scored only to set a
    # deployable threshold (never a query or support of a test episode; harness.episodes);
    # "unlabelled": a query without ground truth, predicted and stored (status UNSCORED_STATUS)
    role: str = "test"
