"""The GPU check's stages; each runs in its own process (``run.py`` starts it with ``--stage``).

A stage appends measurement rows to its :class:`StageContext`, which rewrites the stage's result
file after every row, so the rows measured before a crash or a kill at the time cap are kept.
A measurement that raises becomes a row with an ``error`` (one line) and the stage goes on.
"""
from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from benchmarks.gpu_check.inputs import PROFILES, Profile
from harness.io import REPO_ROOT, atomic_write, short_error

# CPU vs device score maps of one episode (scores in [0, 1]), fp32 on both sides. On a GPU the
# convolutions run in TF32 by default (torch's cudnn.allow_tf32), so the maps agree to about
# 1e-3 there, not bit for bit.
AGREEMENT_MAX_ABS = 1e-2
AGREEMENT_MEAN_ABS = 1e-3
METHODS = ("sofs", "panet", "patchcore")
BACKBONES = {"lite0": "EfficientNet-Lite0", "vitb14": "ViT-B/14 (random)"}


@dataclass
class StageContext:
    name: str
    device: str
    profile: Profile
    inputs: dict
    stop_at: float  # time.time() by which the stage must be done (the parent kills it then)
    result_path: Path
    rows: list = field(default_factory=list)
    skipped: str = ""  # why the stage did not run (a reason, not an error)

    def left(self) -> float:
        return self.stop_at - time.time()

    def measure(self, what: str, work: Callable[[], dict]) -> dict | None:
        """Run ``work`` (-> value, unit, note, ok, torch_peak_mib) as one row; an exception
        becomes the row's one-line error."""
        start = time.time()
        try:
            row = {"measure": what, **work()}
        except Exception as exc:  # noqa: BLE001 - recorded, and the stage goes on
            row = {"measure": what, "error": f"{type(exc).__name__}: {short_error(exc, 300)}"}
        row.update(t0=start, t1=time.time())
        self.rows.append(row)
        self.save()
        return row

    def save(self) -> None:
        payload = {"rows": self.rows, "skipped": self.skipped}
        atomic_write(self.result_path, lambda tmp: tmp.write_text(json.dumps(payload, indent=1)))


# -- device helpers -------------------------------------------------------------------------


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None


def _release(device: str) -> None:
    import torch

    from methods.sharing import reset_shared

    reset_shared()
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# -- episodes -------------------------------------------------------------------------------


def load_episodes(data: str, count: int) -> list[tuple]:
    """The first ``count`` 1-shot episodes of the novel fold as (supports, masks, query) arrays."""
    from datasets.base import load_dataset, read_image, read_mask
    from harness.episodes import build_manifest

    dataset = load_dataset(data)
    by_id = dataset.by_id()
    manifest = build_manifest(dataset, shots=(1,), seeds=1, fold="novel")
    episodes = []
    for episode in manifest.episodes[:count]:
        supports = [by_id[i] for i in episode.support_ids]
        episodes.append(([read_image(r) for r in supports], [read_mask(r) for r in supports],
                         read_image(by_id[episode.query_id])))
    return episodes


def method_spec(method: str, backbone: str, device: str, inputs: dict, precision: str = "fp32"):
    """sofs / panet / patchcore on ``lite0`` or ``vitb14``, feature cache off."""
    from methods.base import MethodSpec

    options: dict = {"device": device, "feature_cache_mb": 0}
    if method == "sofs":
        if backbone == "lite0":  # the shipped head
            return MethodSpec.create("sofs", options, {"backbone": inputs["lite0"]})
        side = inputs["profile"]["sofs_vit_size"]
        return MethodSpec.create("sofs", {**options, "image_size": side, "crop_size": side},
                                 {"checkpoint": inputs["sofs_vitb14_head"], "backbone": inputs["vitb14"]})
    arch, weights = ("efficientnet_lite0", inputs["lite0"]) if backbone == "lite0" else ("dinov2_vitb14", inputs["vitb14"])
    return MethodSpec.create(method, {**options, "backbone": arch, "precision": precision}, {"backbone": weights})


def score_map(method, episode):
    from methods.base import as_prediction

    return as_prediction(method.predict(*episode), method.threshold).score_map


def time_episodes(spec, episodes: list, device: str, budget_s: float, most: int) -> dict:
    """Build, one warm-up episode, then up to ``most`` episodes (cycling) within ``budget_s``."""
    _release(device)
    start = time.perf_counter()
    method = spec.build()
    score_map(method, episodes[0])
    _sync(device)
    warm_up = time.perf_counter() - start
    _reset_peak(device)
    timed = episodes[1:] or episodes
    first_map, done, start = None, 0, time.perf_counter()
    while done < most and (done == 0 or time.perf_counter() - start < budget_s):
        result = score_map(method, timed[done % len(timed)])
        first_map = result if first_map is None else first_map
        done += 1
    _sync(device)
    seconds = time.perf_counter() - start
    peak = _peak_mib(device)
    del method
    _release(device)
    return {"rate": done / seconds, "episodes": done, "warm_up_s": warm_up, "peak": peak, "map": first_map}


def stage_episodes(ctx: StageContext, backbone: str) -> None:
    import numpy as np

    p = ctx.profile
    episodes = load_episodes(ctx.inputs["data"], p.episodes + 1)
    bf16 = backbone in p.bf16_backbones
    plan = [(m, prec) for m in METHODS for prec in (("fp32", "bf16") if bf16 and m != "sofs" else ("fp32",))]
    fp32_maps = {}
    for index, (method, precision) in enumerate(plan):
        budget = min(p.slice_s, max(1.0, ctx.left() / (len(plan) - index) - 5))

        def work(method=method, precision=precision, budget=budget):
            spec = method_spec(method, backbone, ctx.device, ctx.inputs, precision)
            t = time_episodes(spec, episodes, ctx.device, budget, p.episodes)
            note = f"{t['episodes']} timed episode(s) after {t['warm_up_s']:.1f} s build + warm-up"
            if method == "sofs":
                note += "; shipped head" if backbone == "lite0" else f"; random head, {p.sofs_vit_size} px input"
            if precision == "fp32":
                fp32_maps[method] = t["map"]
            elif method in fp32_maps:
                note += f"; mean |bf16 - fp32| {float(np.abs(t['map'] - fp32_maps[method]).mean()):.2g}"
            return {"value": t["rate"], "unit": "episodes/s", "note": note, "torch_peak_mib": t["peak"]}

        ctx.measure(f"{method}, {BACKBONES[backbone]}, {precision}, {p.width}x{p.height}", work)


def stage_agreement(ctx: StageContext) -> None:
    """One episode's score map on the CPU and on ``ctx.device`` (on a CPU-only run: two CPU builds,
    which checks the comparison itself)."""
    import numpy as np

    (episode,) = load_episodes(ctx.inputs["data"], 1)
    for backbone in BACKBONES:
        for method in METHODS:
            def work(method=method, backbone=backbone):
                maps = []
                for device in ("cpu", ctx.device):
                    _release(device)
                    maps.append(score_map(method_spec(method, backbone, device, ctx.inputs).build(), episode))
                diff = np.abs(maps[0] - maps[1])
                ok = bool(diff.max() <= AGREEMENT_MAX_ABS and diff.mean() <= AGREEMENT_MEAN_ABS)
                return {"value": float(diff.max()), "unit": "max |cpu - device|", "ok": ok,
                        "note": f"mean {diff.mean():.2g}; tolerance max {AGREEMENT_MAX_ABS:g}, mean {AGREEMENT_MEAN_ABS:g}"}

            ctx.measure(f"cpu vs {ctx.device}: {method}, {BACKBONES[backbone]}", work)


def shipped_recipe(device: str, backbone_weights: str):
    """The TrainConfig recorded in the shipped head (README "The shipped SOFS head"), on ``device``."""
    from methods.sofs.checkpoint import read_checkpoint
    from methods.sofs.data import EpisodeConfig
    from methods.sofs.inference import DEFAULT_CHECKPOINT
    from methods.sofs.train import TrainConfig

    options = json.loads(read_checkpoint(DEFAULT_CHECKPOINT)[1]["train_options"])
    episode = EpisodeConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.pop("episode").items()})
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    return TrainConfig(**{**options, "episode": episode, "device": device, "backbone_weights": backbone_weights})


def stage_train(ctx: StageContext) -> None:
    """Steps/s = (N more steps) / (time of a 1 + N step run - time of a 1-step run), both fresh."""
    from datasets.base import load_dataset
    from methods.sofs.train import train

    packaged = ctx.inputs["lite0_note"].startswith("ImageNet")
    config = shipped_recipe(ctx.device, "" if packaged else ctx.inputs["lite0"])
    dataset = load_dataset(ctx.inputs["data"])
    out = Path(ctx.inputs["data"]).parent / "train"

    def work():
        start = time.perf_counter()
        train(dataset, config, out / "one", resume=False, stop_after=1, progress=False)
        one = time.perf_counter() - start
        more = max(1, min(ctx.profile.train_steps, int((ctx.left() - 2 * one) * 0.8 / one)))
        _release(ctx.device)
        _reset_peak(ctx.device)
        start = time.perf_counter()
        result = train(dataset, config, out / "more", resume=False, stop_after=1 + more, progress=False)
        seconds = time.perf_counter() - start - one
        return {"value": more / seconds, "unit": "steps/s", "torch_peak_mib": _peak_mib(ctx.device),
                "note": f"{more} steps of batch {config.batch_size} x accumulate {config.accumulate}, "
                        f"{config.episode.image_size} px, {config.backbone}; loss {result.losses[-1]:.3f}"}

    ctx.measure(f"sofs training, shipped recipe, {ctx.device}", work)


def stage_ray(ctx: StageContext) -> None:
    """2 Ray workers sharing the GPU (``gpus_per_worker=0.5``; 0 on a CPU-only run)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        ctx.skipped = "ray is not installed"
        ctx.save()
        return
    from benchmarks.harness_bench import _rate_after_warmup
    from harness.ray_executor import connect, shutdown_local
    from harness.run import ManifestSettings, RunConfig, execute
    from harness.store import read_run

    cuda = ctx.device.startswith("cuda")
    resources = connect(None)
    try:
        if cuda and resources.get("GPU", 0) < 1:
            ctx.skipped = f"the Ray cluster has no GPU (resources {resources})"
            ctx.save()
            return
        gpus = 0.5 if cuda else 0.0

        def work():
            config = RunConfig(
                methods=[method_spec(m, "lite0", "auto", ctx.inputs) for m in METHODS], dataset=ctx.inputs["data"],
                manifest=ManifestSettings(shots=(1,), seeds=1, max_queries_per_class=ctx.profile.ray_queries),
                out=str(Path(ctx.inputs["data"]).parent / "ray_run"), executor="ray", workers=2,
                gpus_per_worker=gpus, chunk_size=2,
            )
            start = time.perf_counter()
            summary = execute(config, progress_out=None)
            wall = time.perf_counter() - start
            rows = read_run(summary.run_dir)
            ok = rows[rows["status"] == "ok"]
            devices = sorted(set(ok["device"]))
            on_device = all(d.startswith("cuda") for d in devices) if cuda else True
            return {"value": _rate_after_warmup(ok), "unit": "episodes/s after warm-up", "ok": on_device and len(ok) == len(rows),
                    "note": f"{len(ok)}/{len(rows)} episodes ok (sofs,panet,patchcore, Lite0) in {wall:.0f} s incl. "
                            f"actor start; 2 workers x {gpus:g} GPU; devices {','.join(devices)}"}

        ctx.measure(f"Ray run, 2 workers x {gpus:g} GPU", work)
    finally:
        shutdown_local()


def stage_seggpt(ctx: StageContext) -> None:
    if "seggpt" not in ctx.inputs:
        ctx.skipped = ctx.inputs.get("seggpt_error", "no SegGPT")
        ctx.save()
        return
    from methods.base import MethodSpec

    episodes = load_episodes(ctx.inputs["data"], ctx.profile.episodes + 1)
    for dtype in ("float32", "bfloat16"):
        def work(dtype=dtype):
            spec = MethodSpec.create("seggpt", {"device": ctx.device, "dtype": dtype}, {"model": ctx.inputs["seggpt"]})
            t = time_episodes(spec, episodes, ctx.device, min(ctx.profile.slice_s, ctx.left() / 3), ctx.profile.episodes)
            return {"value": t["rate"], "unit": "episodes/s", "torch_peak_mib": t["peak"],
                    "note": "tiny random SegGPT (64 px input): the device path, not SegGPT-L speed"}

        ctx.measure(f"seggpt (tiny), {dtype}", work)


def stage_cuda_tests(ctx: StageContext) -> None:
    """``pytest -m cuda`` (slow ones included): a row with the counts; failures fail the row."""
    def work():
        command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests"]
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=max(5.0, ctx.left() - 5))
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        summary = lines[-1].strip("= ") if lines else done.stderr.strip()[-200:]
        failed = [line.split(" - ")[0].removeprefix("FAILED ").removeprefix("ERROR ")
                  for line in lines if line.startswith(("FAILED", "ERROR"))]
        row = {"value": None, "unit": summary, "ok": done.returncode in (0, 5)}  # 5: no test selected
        if failed:
            row["note"] = "failed: " + ", ".join(failed)
        return row

    ctx.measure("tests marked cuda (pytest -m cuda)", work)


def stage_prepare(ctx: StageContext) -> None:
    from benchmarks.gpu_check.inputs import prepare

    work = Path(ctx.inputs["work"])
    start = time.time()
    inputs = prepare(work, ctx.profile)
    env = inputs["environment"]
    ctx.rows.append({"measure": "inputs created", "value": time.time() - start, "unit": "s", "t0": start, "t1": time.time(),
                     "note": f"{ctx.profile.width}x{ctx.profile.height} synthetic images, ViT-B/14 random "
                             f"(Meta layout), Lite0 {inputs['lite0_note']}; torch {env['torch']}, "
                             f"{env.get('gpu', 'no GPU')}"})
    ctx.save()


STAGES: dict[str, Callable[[StageContext], None]] = {
    "prepare": stage_prepare,
    "cuda-tests": stage_cuda_tests,
    "episodes-lite0": lambda ctx: stage_episodes(ctx, "lite0"),
    "episodes-vitb14": lambda ctx: stage_episodes(ctx, "vitb14"),
    "agreement": stage_agreement,
    "train": stage_train,
    "ray": stage_ray,
    "seggpt": stage_seggpt,
}


def stage_main(name: str, work: Path, device: str, profile: str, stop_at: float, result: Path) -> int:
    """Entry of a stage process: run stage ``name``; an exception outside a measurement is written
    to the result file as the stage's error line."""
    ctx = StageContext(name, device, PROFILES[profile], {"work": str(work)}, stop_at, result)
    try:
        if name != "prepare":
            ctx.inputs.update(json.loads((work / "inputs.json").read_text()))
        STAGES[name](ctx)
    except Exception as exc:  # noqa: BLE001 - one line for the report
        payload = {"rows": ctx.rows, "skipped": ctx.skipped, "error": f"{type(exc).__name__}: {short_error(exc, 300)}"}
        atomic_write(result, lambda tmp: tmp.write_text(json.dumps(payload, indent=1)))
        return 1
    ctx.save()
    return 0
