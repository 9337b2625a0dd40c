"""Recipes: every preset resolves, composition and overrides work, bad keys are clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from leanvit.train import ConfigError, list_recipes, load_config
from leanvit.train.config import config_from_dict, config_to_dict


def test_every_recipe_resolves() -> None:
    names = list_recipes()
    for expected in ("quick", "shvit_s1", "shvit_s4", "shvit_s4_512", "efficientvit_m0", "efficientvit_m5",
                     "sepvit_lite", "sepvit_t", "distill"):
        assert expected in names
    for name in names:
        overrides = ["distill.teacher_checkpoint=t.pth"] if name == "distill" else []
        load_config(name, overrides)


@pytest.mark.parametrize("variant,wd", [("s1", 0.025), ("s2", 0.032), ("s3", 0.035), ("s4", 0.03)])
def test_shvit_recipes_match_the_paper(variant: str, wd: float) -> None:
    cfg = load_config(f"shvit_{variant}")
    assert cfg.model.name == f"shvit_{variant}" and cfg.optim.weight_decay == wd
    assert (cfg.optim.clip_grad, cfg.optim.clip_mode) == (0.02, "agc")
    assert (cfg.optim.opt, cfg.optim.lr_base, cfg.optim.lr_base_size) == ("adamw", 1e-3, 512)
    assert (cfg.sched.warmup_epochs, cfg.sched.min_lr, cfg.train.epochs) == (5, 1e-5, 300)
    assert cfg.aug.auto_augment == "rand-m9-mstd0.5-inc1" and cfg.aug.color_jitter == 0.4
    assert (cfg.aug.mixup, cfg.aug.cutmix, cfg.aug.smoothing, cfg.aug.reprob) == (0.8, 1.0, 0.1, 0.25)
    assert cfg.data.repeated_aug and cfg.ema.enable and cfg.ema.decay == 0.99996
    assert cfg.data.interpolation == "bicubic"


def test_efficientvit_and_sepvit_recipes() -> None:
    e = load_config("efficientvit_m3")
    assert e.model.name == "efficientvit_m3" and e.optim.weight_decay == 0.025 and e.optim.clip_mode == "agc"
    for name, dp in (("sepvit_t", 0.2), ("sepvit_s", 0.3), ("sepvit_b", 0.5)):
        s = load_config(name)
        assert s.model.drop_path == dp and s.optim.lr_base == 5e-4 and s.optim.weight_decay == 0.05
        assert (s.optim.clip_grad, s.optim.clip_mode) == (5.0, "norm")
        assert not s.data.repeated_aug and not s.ema.enable


def test_hires_finetune_and_distill_composition() -> None:
    hr = load_config("shvit_s4_512")
    assert hr.model.img_size == 512 and hr.train.epochs == 30 and hr.optim.weight_decay == 1e-8
    assert hr.optim.weight_decay == 1e-8 and hr.sched.min_lr == 2e-7 and hr.optim.clip_mode == "agc"
    d = load_config("shvit_s2+distill", ["distill.teacher_checkpoint=teacher.pth"])
    assert d.distill.type == "hard" and d.optim.weight_decay == 0.032 and d.recipe == ["shvit_s2", "distill"]
    with pytest.raises(ConfigError, match="teacher_checkpoint"):
        load_config("shvit_s2+distill")


def test_overrides_are_typed() -> None:
    cfg = load_config("quick", ["optim.lr=1e-3", "aug.scale=[0.5, 1.0]", "train.max_steps=null",
                                "ema.enable=yes", "train.epochs=3", "model.kwargs={drop_rate: 0.1}"])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.aug.scale == [0.5, 1.0] and cfg.train.max_steps is None and cfg.ema.enable is True
    assert cfg.train.epochs == 3 and cfg.model.kwargs == {"drop_rate": 0.1}
    with pytest.raises(ConfigError, match="integer"):
        load_config("quick", ["train.epochs=2.5"])
    with pytest.raises(ConfigError, match="true/false"):
        load_config("quick", ["ema.enable=maybe"])
    with pytest.raises(ConfigError, match="choose one of none, bf16, fp16, auto"):
        load_config("quick", ["train.amp=fp8"])


def test_unknown_keys_list_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config("quick", ["optim.lrr=1"])
    assert "optim.lr" in str(e.value) and "optim.weight_decay" in str(e.value) and "Did you mean" in str(e.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: quick\naug:\n  mixupp: 0.5\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(bad))
    assert "aug.mixupp" in str(e.value) and "aug.mixup" in str(e.value) and "aug.cutmix" in str(e.value)
    with pytest.raises(ConfigError, match="unknown recipe 'shvit_s9'"):
        load_config("shvit_s9")
    with pytest.raises(ConfigError, match="key=value"):
        load_config("quick", ["optim.lr"])


def test_user_recipe_extends_a_preset_and_saved_config_roundtrips(tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: shvit_s3\ntrain:\n  epochs: 7\n")
    cfg = load_config(str(mine))
    assert cfg.train.epochs == 7 and cfg.optim.weight_decay == 0.035
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump({**config_to_dict(cfg), "resolved": {"lr": 1.0}}))
    again = load_config(str(saved))  # a run's config.yaml is itself a recipe
    assert config_to_dict(again) == config_to_dict(cfg) | {"recipe": [str(saved)]}
    assert config_from_dict(config_to_dict(cfg)) == cfg
