"""Tiny real methods for harness tests (loaded with SOFS_BENCH_PLUGINS=tests.toy_methods).

``toy-bright`` scores each pixel by its grey level: the fixture defects are bright on a dark
surface, so it segments them exactly. Options make it slow, crash on a query, or kill its own
worker process once (to exercise retries), hang, kill its worker on one query, or fail as a full disk.
"""
import errno
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from methods.base import MethodError, register


@dataclass(frozen=True)
class BrightConfig:
    sleep_s: float = 0.0
    crash_width: int = 0  # raise on queries of this width
    die_once_marker: str = ""  # os._exit(1) on the first call if this file does not exist yet
    fail_init: str = ""  # raise MethodError(fail_init) in the constructor (e.g. unreadable weights)
    hang_width: int = 0  # never return on queries of this width (a hung predict)
    die_width: int = 0  # os._exit(1) on every query of this width (an episode that kills its worker)
    full_disk_width: int = 0  # OSError ENOSPC on queries of this width while full_disk_until is absent
    full_disk_until: str = ""
    support_scale: bool = False  # scale scores by 0.3, 1 or 3 as the first support's corner pixel says (draws differ)


class Bright:
    Config = BrightConfig
    weight_specs = ()
    threshold = 0.5
    threshold_protocol = "native"

    def __init__(self, config: BrightConfig, weights):
        if config.fail_init:
            raise MethodError(config.fail_init)
        self.config = config

    def predict(self, support_images, support_masks, query_image):
        if self.config.die_once_marker and not Path(self.config.die_once_marker).exists():
            Path(self.config.die_once_marker).touch()
            os._exit(1)
        width = query_image.shape[1]
        if self.config.crash_width and width == self.config.crash_width:
            raise RuntimeError("toy crash on purpose")
        if self.config.hang_width and width == self.config.hang_width:
            threading.Event().wait()
        if self.config.die_width and width == self.config.die_width:
            os._exit(1)
        if self.config.full_disk_width == width and not Path(self.config.full_disk_until).exists():
            raise OSError(errno.ENOSPC, "No space left on device")
        time.sleep(self.config.sleep_s)
        score = query_image.mean(axis=2).astype(np.float32) / 255.0
        if self.config.support_scale:
            score = np.clip(score * (0.3, 1.0, 3.0)[int(support_images[0][0, 0, 0]) % 3], 0.0, 1.0)
        return score


register("toy-bright", "tests.toy_methods:Bright", "grey level as defect score (tests)")


def make_folder_dataset(root: Path, name: str = "widget", n_per_category: int = 4, seed: int = 0) -> Path:
    """<root>/<name>/{spot,line,good}/{images,masks}: dark noise, bright defects, 0/255 masks."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = root / name
    for category in ("spot", "line", "good"):
        (base / category / "images").mkdir(parents=True, exist_ok=True)
        if category != "good":
            (base / category / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n_per_category):
            height, width = 48, 64 + i  # odd sizes on purpose
            image = rng.integers(10, 60, size=(height, width, 3), dtype=np.uint8)
            mask = np.zeros((height, width), dtype=np.uint8)
            if category == "spot":
                mask[10 + i : 13 + i, 20:23] = 255
            elif category == "line":
                mask[30, 5 : 40 + i] = 255
            image[mask > 0] = 230
            Image.fromarray(image).save(base / category / "images" / f"{category}_{i}.png")
            if category != "good":
                Image.fromarray(mask).save(base / category / "masks" / f"{category}_{i}.png")
    return base
