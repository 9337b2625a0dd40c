"""Checkpoint loading/saving across the leanvit, timm and official layouts, and every bad input."""
from __future__ import annotations

import dataclasses
import os
import re

import pytest
import timm
import torch

import leanvit
from leanvit.models.checkpoint import CheckpointError
from leanvit.models.efficientvit_m import EfficientViTM
from leanvit.models.sepvit import SepViT
from leanvit.models.shvit import SHViT
from leanvit.models.signal import signal_images, signal_weights_
from conftest import CONV_FAMILY_MODELS, assert_logits_close, fast_first

# --- an independent timm -> official rewrite, straight from the official key names
# (ysj9909/SHViT model/shvit.py, microsoft/Cream EfficientViT/classification/model/efficientvit.py).
_DOWN_SHVIT = {"0": "0.0", "1": "0.1", "2": "1", "3": "2.0", "4": "2.1"}
_DOWN_EFFVIT = {"res1": "0", "patchmerge": "1", "res2": "2"}


def timm_to_official(sd: dict, family: str, window_of: dict | None = None) -> dict:
    out = {}
    for k, v in sd.items():
        m = re.match(r"stages\.(\d)\.blocks\.(\d+)\.(.*)", k)
        if m:
            s, j = int(m[1]), int(m[2])
            k = f"blocks{s + 1}.{j + (3 if s else 0)}.{m[3]}"
        m = re.match(r"stages\.(\d)\.downsample\.(\w+)\.(.*)", k)
        if m:
            s, part, rest = int(m[1]), m[2], m[3]
            if family == "shvit":
                first, _, rest2 = rest.partition(".")
                k = f"blocks{s + 1}.{_DOWN_SHVIT[part]}.{rest}" if part in _DOWN_SHVIT else k
            else:
                k = f"blocks{s + 1}.{_DOWN_EFFVIT[part]}.{rest}"
        if family == "efficientvit_m":
            k = k.replace(".conv.weight", ".c.weight").replace("head.linear.", "head.l.")
            k = re.sub(r"patch_embed\.conv(\d)\.", lambda mm: f"patch_embed.{(int(mm[1]) - 1) * 2}.", k)
        out[k] = v
        if k.endswith("attention_biases"):
            n = v.shape[1]
            w = int(n ** 0.5)
            pts = [(a, b) for a in range(w) for b in range(w)]
            offsets, idx = {}, []
            for p1 in pts:
                for p2 in pts:
                    off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                    idx.append(offsets.setdefault(off, len(offsets)))
            out[k.replace("attention_biases", "attention_bias_idxs")] = torch.tensor(idx).view(n, n)
    return out


def _family(name: str) -> str:
    return "shvit" if name.startswith("shvit") else "efficientvit_m"


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def _assert_same_as_timm(model, expected, x):
    """Bit-equal to timm on the NCHW path; the CPU's channels-last kernels round differently (measured
    1.5e-5 of the spread for shvit_s1)."""
    assert_logits_close(expected, _logits(model, x), rel=1e-4)
    model.set_channels_last(False)
    try:
        assert torch.equal(_logits(model, x), expected)
    finally:
        model.set_channels_last("auto")


@pytest.mark.parametrize("name", fast_first(CONV_FAMILY_MODELS, ["shvit_s1", "efficientvit_m0"]))
def test_timm_and_official_weights_reproduce_timm_logits(name):
    ref = signal_weights_(timm.create_model(name)).eval()
    size = leanvit.get_config(name).img_size
    x = signal_images(2, size, seed=1)
    expected = _logits(ref, x)

    model = leanvit.create_model(name)
    report = leanvit.load_checkpoint(model, ref.state_dict())
    assert report["layout"] in ("timm", "leanvit")
    _assert_same_as_timm(model, expected, x)

    official = {"model": timm_to_official(ref.state_dict(), _family(name))}
    assert all(k.startswith(("patch_embed.", "blocks", "head.")) for k in official["model"])
    model2 = leanvit.create_model(name)
    assert leanvit.load_checkpoint(model2, official)["layout"] == "official"
    _assert_same_as_timm(model2, expected, x)


@pytest.mark.parametrize("name", fast_first(["shvit_s1", "efficientvit_m0"], ["shvit_s1"]))
def test_round_trips_are_exact(name, tmp_path):
    model = signal_weights_(leanvit.create_model(name))
    sd = model.state_dict()
    for layout in ("timm", "official"):
        foreign = leanvit.convert_state_dict(sd, _family(name), "leanvit", layout)
        back = leanvit.convert_state_dict(foreign, _family(name), layout, "leanvit")
        assert back.keys() == sd.keys()
        assert all(torch.equal(back[k], sd[k]) for k in sd)
    # and through files, in every layout
    for layout, fname in (("leanvit", "w.safetensors"), ("timm", "w_timm.pth"), ("official", "w_official.pth")):
        path = leanvit.save_checkpoint(model, tmp_path / fname, layout=layout)
        fresh = leanvit.create_model(name)
        leanvit.load_checkpoint(fresh, path)
        assert all(torch.equal(fresh.state_dict()[k], sd[k]) for k in sd)


def test_timm_layout_file_loads_in_timm(tmp_path):
    model = signal_weights_(leanvit.create_model("shvit_s1"))
    path = leanvit.save_checkpoint(model, tmp_path / "s1.pth", layout="timm")
    ref = timm.create_model("shvit_s1")
    ref.load_state_dict(torch.load(path, weights_only=True))
    x = signal_images(2, 224, seed=2)
    _assert_same_as_timm(model, _logits(ref, x), x)


def test_official_entry_counts():
    sd = leanvit.create_model("efficientvit_m4").state_dict()
    assert len(leanvit.convert_state_dict(sd, "efficientvit_m", "leanvit", "official")) == 699
    sd = leanvit.create_model("shvit_s4").state_dict()
    assert len(leanvit.convert_state_dict(sd, "shvit", "leanvit", "official")) == 635


def test_official_2d_conv_weights_are_reshaped():
    model = signal_weights_(leanvit.create_model("efficientvit_m0"))
    official = leanvit.convert_state_dict(model.state_dict(), "efficientvit_m", "leanvit", "official")
    flattened = 0
    for k, v in list(official.items()):
        if k.endswith("c.weight") and v.shape[2:] == (1, 1):
            official[k] = v[:, :, 0, 0]
            flattened += 1
    assert flattened > 10
    fresh = leanvit.create_model("efficientvit_m0")
    leanvit.load_checkpoint(fresh, {"model": official})
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(_logits(fresh, x), _logits(model, x))


def test_attention_biases_resized_for_other_resolution():
    src = signal_weights_(leanvit.create_model("efficientvit_m0"))
    dst = leanvit.create_model("efficientvit_m0", img_size=160)  # windows 7/5/3 instead of 7/7/4
    leanvit.load_checkpoint(dst, src.state_dict())
    assert tuple(dst.stages[1].blocks[0].mixer.m.attn.attention_biases.shape) == (4, 25)
    assert torch.equal(dst.stages[0].blocks[0].mixer.m.attn.attention_biases,
                       src.stages[0].blocks[0].mixer.m.attn.attention_biases)
    assert torch.isfinite(_logits(dst, torch.randn(1, 3, 160, 160))).all()


def test_drop_head_adapts_num_classes():
    src = signal_weights_(leanvit.create_model("shvit_s1"))
    dst = leanvit.create_model("shvit_s1", num_classes=10)
    before = dst.head.linear.weight.clone()
    with pytest.raises(CheckpointError, match="drop_head=True"):
        leanvit.load_checkpoint(dst, src.state_dict())
    assert torch.equal(dst.head.linear.weight, before)
    report = leanvit.load_checkpoint(dst, src.state_dict(), drop_head=True)
    assert report["dropped_head"] and torch.equal(dst.head.linear.weight, before)
    assert torch.equal(dst.patch_embed.conv1.conv.weight, src.patch_embed.conv1.conv.weight)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, state):
    return all(torch.equal(model.state_dict()[k], state[k]) for k in state)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="not found"):
        leanvit.load_checkpoint(leanvit.create_model("shvit_s1"), "/nonexistent/w.pth")


@pytest.mark.parametrize("kind", ["truncated_torch", "truncated_safetensors", "random", "empty"])
def test_corrupt_files(tmp_path, kind):
    model = leanvit.create_model("efficientvit_m0")
    state = _state(model)
    path = tmp_path / "bad.bin"
    if kind == "truncated_torch":
        torch.save(model.state_dict(), path)
        path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    elif kind == "truncated_safetensors":
        good = leanvit.save_checkpoint(model, tmp_path / "good.safetensors")
        path.write_bytes(good.read_bytes()[:5000])
    elif kind == "random":
        path.write_bytes(os.urandom(4096))
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError):
        leanvit.load_checkpoint(model, path)
    assert _unchanged(model, state)


def test_pickled_code_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="refuses"):
        leanvit.load_checkpoint(leanvit.create_model("shvit_s1"), path)
    assert not marker.exists()


@pytest.mark.slow
def test_other_architecture_is_rejected():
    model = leanvit.create_model("shvit_s1")
    state = _state(model)
    with pytest.raises(CheckpointError, match="does not look like any leanvit model"):
        leanvit.load_checkpoint(model, timm.create_model("resnet18").state_dict())
    assert _unchanged(model, state)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["leanvit", "official"])
def test_other_variant_is_named(layout):
    src = leanvit.create_model("shvit_s2")
    sd = src.state_dict()
    if layout == "official":
        sd = {"model": leanvit.convert_state_dict(sd, "shvit", "leanvit", "official")}
    model = leanvit.create_model("shvit_s1")
    state = _state(model)
    with pytest.raises(CheckpointError, match=r"looks like shvit_s2.*stages\.|looks like shvit_s2.*mismatch"):
        leanvit.load_checkpoint(model, sd)
    assert _unchanged(model, state)


@pytest.mark.slow
def test_other_family_is_named():
    sd = leanvit.create_model("efficientvit_m0").state_dict()
    with pytest.raises(CheckpointError, match="looks like efficientvit_m0"):
        leanvit.load_checkpoint(leanvit.create_model("shvit_s1"), sd)


@pytest.mark.slow
def test_non_strict_reports_missing():
    sd = {k: v for k, v in leanvit.create_model("shvit_s1").state_dict().items() if not k.startswith("head")}
    model = leanvit.create_model("shvit_s1")
    with pytest.raises(CheckpointError, match="missing keys: head"):
        leanvit.load_checkpoint(model, sd)
    report = leanvit.load_checkpoint(model, sd, strict=False)
    assert any(k.startswith("head.") for k in report["missing"])


def test_create_model_with_checkpoint_and_module_prefix(tmp_path):
    src = signal_weights_(leanvit.create_model("efficientvit_m1"))
    wrapped = {"model": {"module." + k: v for k, v in src.state_dict().items()}, "epoch": 3}
    path = tmp_path / "ddp.pth"
    torch.save(wrapped, path)
    model = leanvit.create_model("efficientvit_m1", checkpoint=path)
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(_logits(model, x), _logits(src, x))


def _sepvit_lite(**kwargs):
    return SepViT(**dataclasses.asdict(leanvit.get_config("sepvit_lite").arch), **kwargs)


@pytest.mark.parametrize("build", [
    lambda: SHViT(num_classes=10),
    lambda: EfficientViTM(num_classes=10, img_size=160),
    lambda: _sepvit_lite(num_classes=10, img_size=96),
], ids=["shvit", "efficientvit_m", "sepvit"])
def test_directly_built_models_save_and_load_back(build, tmp_path):
    """#24 defect 6: a model built from its class (not by name) carries what saving needs (its family is a
    class attribute); the file loads back into the same construction, bit-exactly."""
    src = signal_weights_(build())
    path = leanvit.save_checkpoint(src, tmp_path / "direct.safetensors")
    dst = build()
    assert leanvit.load_checkpoint(dst, path)["layout"] == "leanvit"
    x = signal_images(2, 96)
    assert torch.equal(_logits(dst, x), _logits(src, x))
    if type(src).checkpoint_layouts:  # a foreign layout round trip needs the family too
        official = leanvit.save_checkpoint(src, tmp_path / "direct.pth", layout=type(src).checkpoint_layouts[0].name)
        again = build()
        leanvit.load_checkpoint(again, official)
        assert torch.equal(_logits(again, x), _logits(src, x))


def test_create_model_takes_class_count_and_distillation_from_the_checkpoint(tmp_path):
    """The one factory builds a name shaped like its checkpoint (what deploying a fine-tuned file needs)."""
    src = signal_weights_(SHViT(num_classes=10, distillation=True))  # shvit_s1's architecture
    path = leanvit.save_checkpoint(src, tmp_path / "ft.safetensors")
    model = leanvit.create_model("shvit_s1", checkpoint=path)
    assert (model.num_classes, model.distillation) == (10, True)
    x = signal_images(2, 96)
    assert torch.equal(_logits(model, x), _logits(src, x))
    with pytest.raises(CheckpointError, match="10 classes but the model has 7"):
        leanvit.create_model("shvit_s1", checkpoint=path, num_classes=7)


def test_family_is_a_class_attribute_and_the_configs_agree():
    for cls in (SHViT, EfficientViTM, SepViT):
        names = leanvit.list_models(family=cls.family)
        assert names and all(leanvit.get_config(n).family == cls.family for n in names)
