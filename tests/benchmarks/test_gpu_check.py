"""benchmarks.gpu_check: its pieces (fast) and a whole run on the CPU (slow)."""
import json
import subprocess
import sys
import time

import pytest
import torch

import benchmarks.small_backbones  # noqa: F401  (registers the test backbones vit_tiny14, vit_micro14)
from benchmarks.gpu_check import run as gpu_run
from benchmarks.gpu_check.inputs import PROFILES, VITB14, dinov2_shapes, dinov2_state_dict, write_dinov2_weights
from benchmarks.gpu_check.report import markdown
from benchmarks.gpu_check.sampler import UtilSampler
from benchmarks.gpu_check.stages import StageContext, shipped_recipe, stage_main
from tests.conftest import REPO_ROOT


# -- random DINOv2 weights in Meta's layout ---------------------------------------------------


def test_meta_layout_weights_load_through_the_project_vit_loader(tmp_path):
    """vit_tiny14 has DINOv2's layout at 192 wide x 11 blocks: the file in Meta's names goes
    through read_state_dict + timm's DINOv2 conversion + the strict key check of load_vit."""
    from harness.features import load_vit

    path = write_dinov2_weights(tmp_path / "tiny.pth", seed=3, embed_dim=192, depth=11)
    state = torch.load(path, weights_only=True)
    assert len(state) == 5 + 14 * 11 + 2 and "mask_token" in state and "blocks.10.ls1.gamma" in state
    model = load_vit("vit_tiny14", path)
    assert torch.equal(model.blocks[4].attn.qkv.weight, state["blocks.4.attn.qkv.weight"])
    assert torch.equal(model.pos_embed, state["pos_embed"])
    assert float(model.blocks[0].ls2.gamma[0]) == pytest.approx(0.1)


def test_vitb14_shapes_are_what_timm_expects_after_the_dinov2_conversion():
    from timm.models.vision_transformer import checkpoint_filter_fn

    from harness.features import build_model

    with torch.device("meta"):
        model = build_model("dinov2_vitb14")
        meta_file = {k: torch.empty(shape) for k, shape in dinov2_shapes(**VITB14).items()}
    assert len(meta_file) == 175  # Meta's dinov2_vitb14_pretrain.pth
    converted = checkpoint_filter_fn(meta_file, model)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("head")}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected


def test_random_weights_are_seeded_and_scaled():
    a, b = dinov2_state_dict(1, embed_dim=16, depth=1), dinov2_state_dict(1, embed_dim=16, depth=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert float(a["blocks.0.norm1.weight"].min()) == 1.0 and float(a["blocks.0.attn.qkv.bias"].abs().max()) == 0.0
    assert 0.015 < float(a["blocks.0.mlp.fc1.weight"].std()) < 0.025


# -- the shipped training recipe ---------------------------------------------------------------


def test_shipped_recipe_is_the_readme_command():
    """README "The shipped SOFS head": `bench.py train sofs --dataset synthetic --snapshot-every 200`,
    i.e. the --preset cpu recipe (2400 steps, 4 x 2 episodes, input 192, S = 2, Lite0 levels 2, 3)."""
    from dataclasses import replace

    from benchmarks.sofs_train_bench import preset_config

    config = shipped_recipe("cuda", "")
    assert (config.steps, config.batch_size, config.accumulate, config.reduce_dim) == (2400, 4, 2, 128)
    assert (config.lr, config.smooth_r, config.ce_weight, config.ce_form, config.seed) == (1e-4, 1.0, 1.0, "logits", 54)
    assert (config.episode.variants, config.episode.alpha, config.episode.image_size, config.episode.s_in_shot) == \
        (4, 0.1, 192, 2)
    assert config.backbone == "efficientnet_lite0" and config.layers == (2, 3) and config.device == "cuda"
    preset = replace(preset_config("cpu", "cuda"), fold="base", snapshot_every=200)
    assert config == preset


# -- stage processes: errors, time caps, skipped stages -----------------------------------------


def _script(result_rows=None, error=None, sleep=0.0, exit_code=0, skipped=""):
    """A stand-in stage process: writes rows, sleeps, fails as told."""
    return (
        "import json, sys, time\n"
        f"rows = {result_rows or []!r}\n"
        f"json.dump({{'rows': rows, 'skipped': {skipped!r}}}, open(sys.argv[1], 'w'))\n"
        f"time.sleep({sleep})\n"
        + (f"raise SystemExit({error!r})\n" if error else f"raise SystemExit({exit_code})\n")
    )


def test_a_failing_or_hanging_stage_is_recorded_and_the_others_run(tmp_path):
    scripts = {
        "prepare": _script([{"measure": "inputs created", "value": 1.0, "unit": "s"}]),
        "cuda-tests": _script(error="boom: the device fell over"),
        "episodes-lite0": _script([{"measure": "panet", "value": 2.0, "unit": "episodes/s"}], sleep=60),
        "agreement": _script([{"measure": "cpu vs cuda: panet", "value": 0.5, "ok": False}]),
        "ray": _script(skipped="ray is not installed"),
        "seggpt": _script([{"measure": "seggpt", "error": "RuntimeError: CUDA error"}]),
        "train": _script([{"measure": "sofs training", "value": 3.0, "unit": "steps/s"}]),
    }
    names = list(scripts)
    caps = {name: 20.0 for name in names} | {"episodes-lite0": 1.5}
    start = time.time()
    stages = gpu_run.run_all(names, lambda name, result, stop_at: [sys.executable, "-c", scripts[name], str(result)],
                             caps, 120, tmp_path)
    assert time.time() - start < 30  # the sleeper was ended at its cap
    by_name = {s["name"]: s for s in stages}
    assert [s["name"] for s in stages] == names
    assert by_name["prepare"]["status"] == "ok" and by_name["train"]["status"] == "ok"
    assert by_name["cuda-tests"]["status"] == "error" and by_name["cuda-tests"]["error"] == "boom: the device fell over"
    hung = by_name["episodes-lite0"]
    assert hung["status"] == "timeout" and hung["error"].startswith("timed out after 2 s")
    assert hung["rows"] == [{"measure": "panet", "value": 2.0, "unit": "episodes/s"}]  # measured before the kill
    assert by_name["agreement"]["status"] == "failed" and by_name["agreement"]["error"] == "check failed: cpu vs cuda: panet"
    assert by_name["ray"]["status"] == "skipped" and by_name["ray"]["error"] == "ray is not installed"
    assert by_name["seggpt"]["status"] == "error" and "1 of 1 measurements failed" in by_name["seggpt"]["error"]


def test_stages_needing_inputs_are_skipped_when_prepare_fails(tmp_path):
    scripts = {"prepare": _script(exit_code=1), "cuda-tests": _script(), "train": _script()}
    stages = gpu_run.run_all(list(scripts), lambda name, result, stop_at: [sys.executable, "-c", scripts[name], str(result)],
                             {n: 20.0 for n in scripts}, 120, tmp_path)
    assert [(s["name"], s["status"]) for s in stages] == [("prepare", "error"), ("cuda-tests", "ok"), ("train", "skipped")]
    assert stages[0]["error"] == "exit code 1" and stages[2]["error"] == "prepare did not succeed"


def test_stage_names_add_prepare_and_refuse_unknown_ones():
    assert gpu_run._stage_names("train,cuda-tests") == ["prepare", "cuda-tests", "train"]
    assert gpu_run._stage_names("cuda-tests") == ["cuda-tests"]
    with pytest.raises(SystemExit, match="unknown stage.*trian"):
        gpu_run._stage_names("trian")


def test_a_stage_exception_becomes_its_error_line_and_a_measurement_error_a_row(tmp_path):
    result = tmp_path / "r.json"
    assert stage_main("train", tmp_path, "cpu", "small", time.time() + 60, result) == 1  # no inputs.json
    assert json.loads(result.read_text())["error"].startswith("FileNotFoundError")

    ctx = StageContext("x", "cpu", PROFILES["small"], {}, time.time() + 60, tmp_path / "x.json")
    ctx.measure("fails", lambda: 1 / 0)
    ctx.measure("works", lambda: {"value": 2.5, "unit": "episodes/s"})
    rows = json.loads((tmp_path / "x.json").read_text())["rows"]
    assert rows[0]["error"] == "ZeroDivisionError: division by zero" and rows[1]["value"] == 2.5
    assert all(r["t0"] <= r["t1"] for r in rows)


# -- utilisation and the Markdown ---------------------------------------------------------------


def test_sampler_windows():
    sampler = UtilSampler(enabled=False)
    assert sampler.source == "n/a" and sampler.window(0, 10) is None
    sampler.samples = [(1.0, 10.0, 100.0), (2.0, 30.0, 300.0), (3.0, 80.0, 200.0), (9.0, 0.0, 50.0)]
    assert sampler.window(1.5, 3.5) == {"gpu_util_mean": 55.0, "gpu_util_max": 80.0, "gpu_mem_max_mib": 300.0, "samples": 2}
    assert sampler.window(8.85, 8.9)["gpu_util_max"] == 0.0  # none inside: widened by one interval
    assert sampler.window(5.0, 6.0) is None


def test_markdown_tables():
    report = {
        "started": "2026-12-03 18:00 UTC", "device": "cuda", "seconds": 300.4, "util_source": "nvidia-smi",
        "environment": {"gpu": "NVIDIA H200", "torch": "2.11.0", "cuda": "13.0"},
        "profile": {"name": "full", "width": 1024, "height": 768, "episodes": 20, "slice_s": 8.0},
        "tolerance": {"max_abs": 0.01, "mean_abs": 0.001},
        "stages": [
            {"name": "episodes-vitb14", "status": "ok", "seconds": 40.2, "cap_s": 80, "error": "", "rows": [
                {"measure": "panet, ViT-B/14 (random), fp32, 1024x768", "value": 12.345, "unit": "episodes/s",
                 "torch_peak_mib": 2048.0, "gpu_mem_max_mib": 3000.0, "gpu_util_mean": 71.4, "gpu_util_max": 99.0,
                 "note": "20 episodes"}]},
            {"name": "agreement", "status": "failed", "seconds": 10, "cap_s": 60, "error": "check failed: sofs", "rows": [
                {"measure": "cpu vs cuda: sofs", "value": 0.02, "unit": "max |cpu - device|", "ok": False, "note": ""}]},
            {"name": "ray", "status": "error", "seconds": 3, "cap_s": 90, "error": "x", "rows": [
                {"measure": "Ray run", "error": "ClusterError: no GPU"}]},
        ],
    }
    lines = markdown(report).splitlines()
    assert lines[0] == "# GPU check: cuda (NVIDIA H200), 2026-12-03 18:00 UTC"
    assert "| agreement | failed | 10 | 60 | check failed: sofs |" in lines
    assert ("| episodes-vitb14 | panet, ViT-B/14 (random), fp32, 1024x768 | 12.3 episodes/s |  | 2048 | 3000 | 71 / 99 "
            "| 20 episodes |") in lines
    assert "| agreement | cpu vs cuda: sofs | 0.02 max \\|cpu - device\\| | FAIL | n/a | n/a | n/a |  |" in lines
    assert "| ray | Ray run | error |  | n/a | n/a | n/a | error: ClusterError: no GPU |" in lines


# -- the whole check on the CPU -----------------------------------------------------------------


@pytest.mark.slow
def test_whole_check_on_cpu(tmp_path):
    """``python -m benchmarks.gpu_check --device cpu``: every stage ends ok (Ray: 2 CPU workers)."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--out", str(tmp_path)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    status = {s["name"]: s["status"] for s in report["stages"]}
    assert status == dict.fromkeys(gpu_run.CAPS, "ok"), report["stages"]
    rows = {r["measure"]: r for s in report["stages"] for r in s["rows"]}
    for backbone in ("EfficientNet-Lite0", "ViT-B/14 (random)"):
        for method in ("sofs", "panet", "patchcore"):
            assert rows[f"{method}, {backbone}, fp32, 256x192"]["value"] > 0
            assert rows[f"cpu vs cpu: {method}, {backbone}"]["value"] == 0.0  # two CPU builds agree exactly
    assert rows["panet, EfficientNet-Lite0, bf16, 256x192"]["value"] > 0
    assert rows["sofs training, shipped recipe, cpu"]["value"] > 0
    assert rows["Ray run, 2 workers x 0 GPU"]["ok"] is True
    tests = rows["tests marked cuda (pytest -m cuda)"]["unit"]
    assert "skipped" in tests and "failed" not in tests and "passed" not in tests
    assert (tmp_path / "gpu_check.md").read_text() in done.stdout
