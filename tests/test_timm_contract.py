"""timm's model contract, exercised through timm's public API for every registered ``leanvit_*`` model:
pretrained cfgs and data config, feature wrappers, heads and pooling, overlays and ``checkpoint_path``."""
from __future__ import annotations

import pytest
import timm
import timm.data
import torch
from PIL import Image
from timm.models import PretrainedCfg

import leanvit
from leanvit.models.checkpoint import save_checkpoint

TIMM_NAMES = leanvit.register_with_timm()
# SepViT-T/S/B share SepViT-Lite's structure (strides, heads, token grids) at 2-15x its cost: the forward
# and backward checks run on the other 11 models, the cfg checks on all 14.
LIGHT = [n for n in TIMM_NAMES if n not in ("leanvit_sepvit_t", "leanvit_sepvit_s", "leanvit_sepvit_b")]
# The heavy checks run at 64 px (SepViT's token grids fix its input size: it is built for 64 px there).
SIDE = 64
PAPER_TRANSFORM = {  # model: (input side, resize side): bicubic, centre crop 0.875, as the papers evaluate
    "leanvit_shvit_s1": (224, 256), "leanvit_shvit_s4": (256, 292), "leanvit_efficientvit_m0": (224, 256),
    "leanvit_sepvit_t": (224, 256),
}


def _small_model(name: str, **kwargs) -> torch.nn.Module:
    if "sepvit" in name:
        kwargs["img_size"] = (SIDE, SIDE)
    return timm.create_model(name, **kwargs)


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_pretrained_cfg_has_timm_keys_and_matches_the_model(name):
    model = timm.create_model(name)
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg
    missing = {"url", "hf_hub_id", "num_classes", "input_size", "pool_size", "crop_pct", "crop_mode",
               "interpolation", "mean", "std", "first_conv", "classifier", "license", "paper_ids",
               "origin_url"} - set(cfg)
    assert not missing
    PretrainedCfg(**cfg)  # every key is one timm knows
    assert isinstance(model.get_submodule(cfg["first_conv"]), torch.nn.Conv2d)
    assert isinstance(model.get_submodule(cfg["classifier"]), torch.nn.Linear)
    assert model.num_features == model.head_hidden_size == model.feature_info[-1]["num_chs"]
    assert model.global_pool == "avg"
    side = cfg["input_size"][-1]
    stride = model.feature_info[-1]["reduction"]
    assert cfg["pool_size"] == (-(-side // stride),) * 2
    if name in LIGHT:
        with torch.no_grad():
            feats = model.eval().forward_features(torch.randn(1, 3, side, side))
        assert tuple(feats.shape) == (1, model.num_features, *cfg["pool_size"])
    if "sepvit" in name:
        assert not cfg.get("tag") and not cfg["url"] and "no trained weights" in cfg["notes"][0]
    else:
        tag = "in1k" if "shvit" in name else "r224_in1k"
        assert cfg["tag"] == tag and cfg["hf_hub_id"] == f"timm/{name.removeprefix('leanvit_')}.{tag}"
        assert cfg["url"].startswith("https://github.com/") and cfg["license"] == "mit"
        assert f"{name}.{tag}" in timm.list_pretrained("leanvit_*")


@pytest.mark.parametrize("name", sorted(PAPER_TRANSFORM))
def test_data_config_gives_the_papers_eval_transform(name):
    side, resize = PAPER_TRANSFORM[name]
    cfg = timm.data.resolve_data_config({}, model=timm.create_model(name))
    assert cfg["input_size"] == (3, side, side) and cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 0.875
    transform = timm.data.create_transform(**cfg)
    resize_op = transform.transforms[0]
    assert resize_op.size == resize and resize_op.interpolation.value == "bicubic"
    x = transform(Image.new("RGB", (400, 300), (255, 128, 0)))
    assert tuple(x.shape) == (3, side, side)
    torch.testing.assert_close(x[:, 0, 0], (torch.tensor([1.0, 128 / 255, 0.0]) - torch.tensor(cfg["mean"]))
                               / torch.tensor(cfg["std"]))


@pytest.mark.parametrize("name", LIGHT)
def test_features_only_forward_backward_at_one_and_two_images(name):
    side = SIDE
    feat = _small_model(name, features_only=True)
    assert feat.pretrained_cfg["input_size"][0] == 3 and feat.default_cfg is feat.pretrained_cfg
    channels, reductions = feat.feature_info.channels(), feat.feature_info.reduction()
    assert len(channels) == (4 if "sepvit" in name else 3)
    for batch in (1, 2):
        outs = feat(torch.randn(batch, 3, side, side, requires_grad=batch == 2))
        assert [tuple(o.shape) for o in outs] == [
            (batch, c, -(-side // r), -(-side // r)) for c, r in zip(channels, reductions)]
    sum(o.float().square().mean() for o in outs).backward()
    stem = next(feat.parameters())  # the first conv: gradients reach the input end
    assert stem.grad is not None and stem.grad.abs().sum() > 0


@pytest.mark.parametrize("name", LIGHT)
def test_heads_pooling_and_intermediates(name):
    side = SIDE
    model = _small_model(name, num_classes=5).eval()
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert tuple(model(x).shape) == (2, 5)
        pooled = model.forward_head(feats, pre_logits=True)
        assert tuple(pooled.shape) == (2, model.num_features)
        inter = model.forward_intermediates(x, intermediates_only=True)
        assert [o.shape[1] for o in inter] == [f["num_chs"] for f in model.feature_info]
        model.reset_classifier(0, "")
        assert model.global_pool == "" and model.num_classes == 0
        torch.testing.assert_close(model(x), feats)  # no pooling: the last feature map
        model.reset_classifier(0)  # keeps '' (None = unchanged), as timm
        assert model(x).dim() == 4
        model.reset_classifier(0, "avg")
        torch.testing.assert_close(model(x), pooled)
        model.reset_classifier(3)
        assert tuple(model(x).shape) == (2, 3)
    model.train()
    model(torch.randn(2, 3, side, side)).sum().backward()


def test_global_pool_constructor_argument_and_errors():
    model = timm.create_model("leanvit_efficientvit_m0", num_classes=0, global_pool="")
    assert model.global_pool == "" and tuple(model(torch.randn(1, 3, 64, 64)).shape) == (1, 192, 1, 1)
    with pytest.raises(ValueError, match="needs num_classes=0"):
        timm.create_model("leanvit_shvit_s1", global_pool="")
    with pytest.raises(ValueError, match="'avg' or ''"):
        model.reset_classifier(0, "max")


def test_distillation_head_through_timm():
    model = timm.create_model("leanvit_shvit_s1", distillation=True)
    model.reset_classifier(4)
    assert model.head_dist.linear.out_features == 4
    model.set_distilled_training(True)
    out = model.train()(torch.randn(2, 3, 64, 64))
    assert isinstance(out, tuple) and [tuple(o.shape) for o in out] == [(2, 4), (2, 4)]
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 64)
        feats = model.eval().forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(model(x), (model.head(pre) + model.head_dist(pre)) / 2)
    model.reset_classifier(0, "")
    assert model.head_dist is not None and model(torch.randn(1, 3, 64, 64)).dim() == 4


def test_feature_classes_out_indices_and_overlay():
    x = torch.randn(2, 3, 64, 64)
    getter = timm.create_model("leanvit_shvit_s1", features_only=True, out_indices=(1, 2))
    with torch.no_grad():
        ref = getter.eval()(x)
        for cls in ("list", "dict", "hook"):
            feat = timm.create_model("leanvit_shvit_s1", features_only=True, out_indices=(1, 2), feature_cls=cls)
            outs = feat.eval()(x)
            outs = list(outs.values()) if isinstance(outs, dict) else outs
            assert [tuple(o.shape) for o in outs] == [tuple(r.shape) for r in ref]
            assert feat.feature_info.channels() == [224, 320]
    with pytest.raises(ValueError, match="feature_cls='getter'"):
        timm.create_model("leanvit_sepvit_lite", features_only=True, feature_cls="list")
    model = timm.create_model("leanvit_efficientvit_m0", pretrained_cfg_overlay=dict(crop_pct=0.95))
    assert model.pretrained_cfg["crop_pct"] == 0.95
    assert timm.data.resolve_data_config({}, model=model)["crop_pct"] == 0.95
    s4 = timm.create_model("leanvit_shvit_s4.in1k")
    assert s4.pretrained_cfg["input_size"] == (3, 256, 256) and s4.pretrained_cfg["tag"] == "in1k"


def test_checkpoint_path_and_same_logits_as_leanvit(tmp_path):
    torch.manual_seed(0)
    model = leanvit.create_model("efficientvit_m0").eval()
    path = save_checkpoint(model, tmp_path / "m0.safetensors")
    via_timm = timm.create_model("leanvit_efficientvit_m0", checkpoint_path=str(path)).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(via_timm(x), model(x), rtol=0, atol=0)
