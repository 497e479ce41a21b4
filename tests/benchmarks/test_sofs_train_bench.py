"""The SOFS training benchmark runs both loops on the same episodes (tiny sizes here)."""
# ruff: noqa: F401  (single_thread is an autouse fixture)
from dataclasses import replace

import torch

from benchmarks.sofs_train_bench import measure, preset_config, textured_dataset
from methods.sofs.cli import PRESETS
from tests.methods.test_sofs_fixtures import single_thread
from tests.methods.test_sofs_train import EPISODE, _config


def test_both_loops_are_timed_on_the_same_data():
    data = textured_dataset(images_per_class=3, height=200, width=260)
    config = replace(_config(fold="all", episode=replace(EPISODE, variants=2)), batch_size=2, accumulate=1)
    result = measure(steps=1, config=config, data=data)
    assert result["views"] == 2 * 3 * 2 * 2  # 2 classes x 3 images x 2 roles x 2 variants
    assert result["project_s"] > 0 and result["straightforward_s"] > 0 and result["episodes_per_step"] == 2
    project_only = measure(steps=1, config=config, data=data, straightforward=False)
    assert project_only["project_s"] > 0 and project_only["straightforward_s"] is None


def test_the_measured_recipe_is_the_cpu_preset():
    config = preset_config("cpu")
    cpu = PRESETS["cpu"]
    assert (config.steps, config.accumulate, config.reduce_dim, config.episode.image_size,
            config.episode.variants, config.ce_form) == (cpu["steps"], cpu["accumulate"], cpu["reduce_dim"],
                                                         cpu["image_size"], cpu["variants"], cpu["ce_form"])


def test_the_issue_time_episode_differs_only_in_its_sizes():
    from benchmarks.sofs_train_bench import ISSUE_EPISODE, issue_config

    config = preset_config("cpu")
    old = issue_config(config)
    assert (old.episode.image_size, old.episode.crop_size, old.episode.s_in_shot) == (256, 256, 4)
    assert replace(old, episode=config.episode) == config
    assert set(ISSUE_EPISODE) <= set(vars(config.episode))
