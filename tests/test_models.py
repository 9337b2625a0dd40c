"""SHViT and EfficientViT-M: sizes, counts, any-resolution behaviour and the timm model contract."""
from __future__ import annotations

import pytest
import timm
import torch

import leanvit
from leanvit.models.signal import signal_images, signal_weights_
from conftest import CONV_FAMILY_MODELS, assert_logits_close, fast_first, paper_tables


def test_registry_names():
    names = leanvit.list_models()
    for n in CONV_FAMILY_MODELS:
        assert n in names
    assert leanvit.list_models("shvit_*") == [f"shvit_s{i}" for i in range(1, 5)]
    assert leanvit.list_models(family="efficientvit_m") == [f"efficientvit_m{i}" for i in range(6)]


def test_unknown_model_suggests_close_names():
    with pytest.raises(KeyError, match="shvit_s1"):
        leanvit.create_model("shvit_s11")
    with pytest.raises(KeyError, match="efficientvit_m0"):
        leanvit.create_model("efficientvit-m0")


def test_default_configs():
    cfg = leanvit.get_config("shvit_s4")
    assert cfg.img_size == 256 and cfg.crop_pct == 0.875 and cfg.interpolation == "bicubic"
    assert cfg.top1 == 79.4 and cfg.mean == (0.485, 0.456, 0.406)
    m = leanvit.create_model("efficientvit_m2")
    assert m.pretrained_cfg["input_size"] == (3, 224, 224)
    assert m.leanvit_cfg.top1 == 70.8


@pytest.mark.parametrize("name", CONV_FAMILY_MODELS)
def test_param_counts_equal_timm_and_paper(name):
    table = paper_tables()[name]
    model = leanvit.create_model(name)
    n = leanvit.count_params(model)
    assert n == table["params"]
    assert n == sum(p.numel() for p in timm.create_model(name).parameters())
    assert len(model.state_dict()) == len(timm.create_model(name).state_dict())
    assert leanvit.count_params(leanvit.fuse(model)) == table["params_fused"]


@pytest.mark.parametrize("name", CONV_FAMILY_MODELS)
def test_macs_match_paper(name):
    table = paper_tables()[name]
    macs_m = leanvit.count_macs(leanvit.create_model(name)) / 1e6
    assert abs(macs_m - table["macs_m"]) / table["macs_m"] <= 0.005
    # Same counter, same convention as the table's flopcounter_fused_div2 column: agree to 0.1M.
    assert abs(macs_m - table["macs_m_detail"]["flopcounter_fused_div2"]) < 0.1


def test_se_rounding_shvit_s2():
    m = leanvit.create_model("shvit_s2")
    assert m.stages[2].downsample.patchmerge.se.fc1.out_channels == 312


@pytest.mark.parametrize("name", fast_first(CONV_FAMILY_MODELS, ["shvit_s1", "efficientvit_m0"]))
def test_any_input_size_matches_timm(name):
    timm_model = signal_weights_(timm.create_model(name)).eval()
    model = leanvit.create_model(name)
    leanvit.load_checkpoint(model, timm_model.state_dict())
    model.eval()
    for hw in [(160, 160), (256, 256), (320, 240), (225, 225)]:
        x = signal_images(2, hw, seed=hw[0] + hw[1])
        with torch.no_grad():
            out = model(x)
            assert out.shape == (2, 1000) and torch.isfinite(out).all()
            ref = timm_model(x)  # timm 1.0's SHViT and EfficientViT-M run at every one of these sizes
            model.set_channels_last(False)
            nchw = model(x)
            model.set_channels_last("auto")
        # timm's computation on the NCHW path (bit-equal at the native size, tests/test_checkpoint.py; other
        # sizes may pick other kernels), and within float32 rounding of it on the CPU's channels-last path
        assert_logits_close(ref, nchw, rel=1e-5)
        assert_logits_close(ref, out, rel=1e-4)


def test_shvit_feature_map_sizes():
    m = leanvit.create_model("shvit_s4").eval()
    for size, sides in [(224, (14, 7, 4)), (256, (16, 8, 4)), (384, (24, 12, 6))]:
        feats = m.forward_intermediates(torch.randn(1, 3, size, size), intermediates_only=True)
        assert [f.shape[-1] for f in feats] == list(sides)
        assert [f.shape[1] for f in feats] == [224, 336, 448]


def test_efficientvit_windows_and_bias_tables():
    m = leanvit.create_model("efficientvit_m4")
    windows = [s.blocks[0].mixer.m.attn.window for s in m.stages]
    assert windows == [7, 7, 4]
    assert tuple(m.stages[2].blocks[0].mixer.m.attn.attention_biases.shape) == (4, 16)
    small = leanvit.create_model("efficientvit_m4", img_size=160)
    assert [s.blocks[0].mixer.m.attn.window for s in small.stages] == [7, 5, 3]


def test_timm_contract():
    m = leanvit.create_model("efficientvit_m0").eval()
    x = torch.randn(2, 3, 224, 224)
    feats = m.forward_features(x)
    assert feats.shape == (2, 192, 4, 4)
    assert m.forward_head(feats, pre_logits=True).shape == (2, 192)
    assert [f["reduction"] for f in m.feature_info] == [16, 32, 64]
    assert [f["num_chs"] for f in m.feature_info] == [64, 128, 192]
    final, inter = m.forward_intermediates(x)
    assert torch.equal(final, feats) and [t.shape[1] for t in inter] == [64, 128, 192]
    assert len(m.forward_intermediates(x, indices=1, intermediates_only=True)) == 1
    assert len(m.no_weight_decay()) == 6 and all("attention_biases" in n for n in m.no_weight_decay())
    assert leanvit.create_model("shvit_s1").no_weight_decay() == set()
    m.reset_classifier(10)
    assert m.get_classifier().linear.out_features == 10 and m(x).shape == (2, 10)
    m.reset_classifier(0)
    assert m(x).shape == (2, 192)
    from timm.optim import create_optimizer_v2

    opt = create_optimizer_v2(leanvit.create_model("shvit_s1"), "adamw", lr=1e-3, layer_decay=0.8)
    assert len(opt.param_groups) > 2


def test_prune_intermediate_layers():
    m = leanvit.create_model("shvit_s1").eval()
    kept = m.prune_intermediate_layers(indices=[0, 1])
    assert kept == [0, 1] and len(m.stages) == 2
    assert m.forward_intermediates(torch.randn(1, 3, 224, 224), intermediates_only=True)[-1].shape[1] == 224


def test_grad_checkpointing_same_result():
    torch.manual_seed(0)
    m = leanvit.create_model("shvit_s1", num_classes=10)
    x = torch.randn(2, 3, 96, 96)
    loss_plain = m(x).sum()
    loss_plain.backward()
    g_plain = m.patch_embed.conv1.conv.weight.grad.clone()
    m.zero_grad()
    m.set_grad_checkpointing(True)
    loss_ckpt = m(x).sum()
    loss_ckpt.backward()
    assert torch.allclose(loss_plain, loss_ckpt)
    assert torch.allclose(g_plain, m.patch_embed.conv1.conv.weight.grad, atol=1e-6)


def test_distillation_head():
    m = leanvit.create_model("shvit_s1", num_classes=5, distillation=True)
    x = torch.randn(2, 3, 64, 64)
    m.train()
    cls, dist = m(x)
    assert cls.shape == dist.shape == (2, 5)
    m.eval()
    feats = m.forward_features(x)
    pooled = feats.mean((2, 3))
    expected = (m.head(pooled) + m.head_dist(pooled)) / 2
    assert torch.allclose(m(x), expected, atol=1e-6)


def test_bias_cache_never_stale():
    torch.manual_seed(0)
    m = leanvit.create_model("efficientvit_m0").eval()
    x = torch.randn(1, 3, 128, 128)  # two 7x7 windows per side in stage 1: the padded window path too
    with torch.no_grad():
        m(x)  # fills the cache
        other = signal_weights_(leanvit.create_model("efficientvit_m0"), seed=7)
        m.load_state_dict(other.state_dict())
        assert torch.equal(m(x), other.eval()(x))
        # in-place edit, dtype change and mode switches also refresh the bias
        for p in m.parameters():
            if p.ndim == 2 and p.shape[1] in (49, 16):
                p.add_(1.0)
        fresh = leanvit.create_model("efficientvit_m0").eval()
        fresh.load_state_dict(m.state_dict())
        assert torch.equal(m(x), fresh(x))
        m.double()
        assert m(x.double()).dtype == torch.float64
        m.float().train().eval()
        assert torch.equal(m(x), fresh(x))


@pytest.mark.slow
def test_importing_leanvit_leaves_timm_registry_alone():
    import subprocess
    import sys

    code = (
        "import timm; before = set(timm.list_models()); import leanvit; leanvit.list_models(); "
        "import timm.models.shvit as s; m = timm.create_model('shvit_s1'); "
        "assert type(m).__module__ == 'timm.models.shvit', type(m); assert set(timm.list_models()) == before; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_register_with_timm():
    names = leanvit.register_with_timm()
    assert "leanvit_shvit_s1" in names and "leanvit_shvit_s1" in timm.list_models("leanvit_*")
    m = timm.create_model("leanvit_efficientvit_m0", num_classes=3)
    assert isinstance(m, leanvit.models.efficientvit_m.EfficientViTM) and m.num_classes == 3
    assert leanvit.register_with_timm() == names  # idempotent
    feat = timm.create_model("leanvit_shvit_s1", features_only=True, feature_cls="getter")
    outs = feat(torch.randn(1, 3, 224, 224))
    assert [o.shape[1] for o in outs] == [128, 224, 320]


def test_one_factory_for_leanvit_and_timm_names(tmp_path):
    """``create_model`` is the one way to build a model from a name: leanvit's registry first, ``timm:NAME`` for
    timm's port (same weights layout for EfficientViT-M), options that do not apply refused."""
    ours = leanvit.create_model("leanvit:efficientvit_m0", img_size=160)
    theirs = leanvit.create_model("timm:efficientvit_m0", img_size=160, num_classes=10)
    assert isinstance(ours, leanvit.models.LeanViTModel) and not isinstance(theirs, leanvit.models.LeanViTModel)
    assert theirs.num_classes == 10 and theirs.patch_embed is not None
    path = tmp_path / "timm.pth"
    torch.save(signal_weights_(theirs).state_dict(), path)
    loaded = leanvit.create_model("timm:efficientvit_m0", img_size=160, num_classes=10, checkpoint=path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), theirs.state_dict().values()))
    assert leanvit.models.split_name("levit_128s") == ("timm", "levit_128s")
    with pytest.raises(ValueError, match="leanvit options"):
        leanvit.create_model("timm:efficientvit_m0", distillation=True)
    with pytest.raises(ValueError, match="only apply to pretrained"):
        leanvit.create_model("shvit_s1", cache_dir=tmp_path)
    with pytest.raises(KeyError, match="unknown registry prefix"):
        leanvit.create_model("hf:shvit_s1")
