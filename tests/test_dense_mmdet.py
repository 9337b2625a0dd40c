"""Official mmdet 2.x COCO checkpoints -> leanvit's torchvision detectors (`EfficientViTFPN` of ysj9909/SHViT
downstream/efficientvit_fpn.py; mmdet 2.x parameter names).

No checkpoint is downloaded: mmdet-layout state dicts are built from the documented key names and shapes,
and the loaded torchvision model is compared with an independent plain-torch re-implementation of the
official neck (EfficientViTFPN) and heads (RetinaHead, RPNHead, Shared2FCBBoxHead, FCNMaskHead).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import leanvit
from leanvit import CheckpointError
from leanvit.dense import create_backbone, create_detector
from leanvit.dense.mmdet import load_mmdet_checkpoint, torchvision_to_mmdet

CHANNELS = {"shvit_s4": (224, 336, 448), "efficientvit_m4": (128, 256, 384)}


def _conv(sd: dict, name: str, out_c: int, in_c: int, k: int, gen: torch.Generator, transposed: bool = False) -> None:
    shape = (in_c, out_c, k, k) if transposed else (out_c, in_c, k, k)
    sd[f"{name}.weight"] = torch.randn(shape, generator=gen) * (1.0 / (in_c * k * k)) ** 0.5
    sd[f"{name}.bias"] = torch.randn(out_c, generator=gen) * 0.1


def mmdet_state_dict(arch: str, backbone: str, num_classes: int = 80, seed: int = 0) -> dict[str, torch.Tensor]:
    """An mmdet-layout detector state dict with mmdet 2.x's names and shapes (docs/detection.md)."""
    gen = torch.Generator().manual_seed(seed)
    official = leanvit.convert_state_dict(leanvit.create_model(backbone, num_classes=0, img_size=448).state_dict(),
                                          leanvit.get_config(backbone).family, src="leanvit", dst="official")
    sd = {"backbone." + k: v + 0.01 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
          for k, v in official.items()}
    chans = CHANNELS[backbone]
    for i, c in enumerate(chans):
        _conv(sd, f"neck.lateral_convs.{i}.conv", 256, c, 1, gen)
        _conv(sd, f"neck.fpn_convs.{i}.conv", 256, 256, 3, gen)
    n_trans = 1 if arch == "retinanet" else 2
    for j in range(n_trans):
        _conv(sd, f"neck.extra_trans_convs.{j}.conv", 256, 256, 2, gen, transposed=True)
        _conv(sd, f"neck.extra_fpn_convs.{j}.conv", 256, 256, 3, gen)
    if arch == "retinanet":
        _conv(sd, "neck.fpn_convs.3.conv", 256, chans[-1], 3, gen)  # 'on_input': the raw last backbone map
        for i in range(4):
            _conv(sd, f"bbox_head.cls_convs.{i}.conv", 256, 256, 3, gen)
            _conv(sd, f"bbox_head.reg_convs.{i}.conv", 256, 256, 3, gen)
        _conv(sd, "bbox_head.retina_cls", 9 * num_classes, 256, 3, gen)
        _conv(sd, "bbox_head.retina_reg", 36, 256, 3, gen)
        return sd
    _conv(sd, "rpn_head.rpn_conv", 256, 256, 3, gen)
    _conv(sd, "rpn_head.rpn_cls", 3, 256, 1, gen)
    _conv(sd, "rpn_head.rpn_reg", 12, 256, 1, gen)
    for name, (o, i) in {"shared_fcs.0": (1024, 256 * 49), "shared_fcs.1": (1024, 1024),
                         "fc_cls": (num_classes + 1, 1024), "fc_reg": (4 * num_classes, 1024)}.items():
        sd[f"roi_head.bbox_head.{name}.weight"] = torch.randn(o, i, generator=gen) * i ** -0.5
        sd[f"roi_head.bbox_head.{name}.bias"] = torch.randn(o, generator=gen) * 0.1
    if arch == "mask_rcnn":
        for i in range(4):
            _conv(sd, f"roi_head.mask_head.convs.{i}.conv", 256, 256, 3, gen)
        _conv(sd, "roi_head.mask_head.upsample", 256, 256, 2, gen, transposed=True)
        _conv(sd, "roi_head.mask_head.conv_logits", num_classes, 256, 1, gen)
    return sd


def _c(sd: dict, name: str, x: torch.Tensor, **kw) -> torch.Tensor:
    return F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], **kw)


def reference_neck(sd: dict, feats: list[torch.Tensor], arch: str) -> list[torch.Tensor]:
    """EfficientViTFPN forward, written from ysj9909/SHViT downstream/efficientvit_fpn.py (mmdet semantics)."""
    lat = [_c(sd, f"neck.lateral_convs.{i}.conv", f) for i, f in enumerate(feats)]
    for i in (2, 1):
        lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:], mode="nearest")
    trans, t = [], lat[0]
    for j in range(1 if arch == "retinanet" else 2):
        t = F.conv_transpose2d(t, sd[f"neck.extra_trans_convs.{j}.conv.weight"], sd[f"neck.extra_trans_convs.{j}.conv.bias"],
                               stride=2)
        trans = [t] + trans
    outs = [_c(sd, f"neck.extra_fpn_convs.{j}.conv", m, padding=1) for j, m in enumerate(trans)]
    outs += [_c(sd, f"neck.fpn_convs.{i}.conv", m, padding=1) for i, m in enumerate(lat)]
    if arch == "retinanet":
        outs.append(_c(sd, "neck.fpn_convs.3.conv", feats[-1], stride=2, padding=1))
    return outs


def test_retinanet_mapping_equals_official_forward() -> None:
    sd = mmdet_state_dict("retinanet", "shvit_s4")
    model = create_detector("retinanet", "shvit_s4").eval()
    load_mmdet_checkpoint(model, {"meta": {"mmdet_version": "2.25.0"}, "state_dict": sd})
    x = torch.rand(1, 3, 96, 160)
    with torch.no_grad():
        feats = model.backbone.body(x)
        ref_body = leanvit.create_model("shvit_s4", num_classes=0, img_size=448,
                                        checkpoint={k[9:]: v for k, v in sd.items() if k.startswith("backbone.")}).eval()
        for got, want in zip(feats.values(), ref_body.forward_intermediates(x, intermediates_only=True)):
            torch.testing.assert_close(got, want)
        pyramid = list(model.backbone.neck(feats).values())
        ref = reference_neck(sd, list(feats.values()), "retinanet")
        for got, want in zip(pyramid, ref, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        head = model.head(pyramid)
        cls, reg = [], []
        for level in ref:
            c, r = level, level
            for i in range(4):
                c = F.relu(_c(sd, f"bbox_head.cls_convs.{i}.conv", c, padding=1))
                r = F.relu(_c(sd, f"bbox_head.reg_convs.{i}.conv", r, padding=1))
            # mmdet flattens (N, A*K, H, W) -> (N, H*W*A, K): channel = anchor * K + class.
            cls.append(_c(sd, "bbox_head.retina_cls", c, padding=1).permute(0, 2, 3, 1).reshape(1, -1, 80))
            reg.append(_c(sd, "bbox_head.retina_reg", r, padding=1).permute(0, 2, 3, 1).reshape(1, -1, 4))
        torch.testing.assert_close(head["cls_logits"], torch.cat(cls, 1), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(head["bbox_regression"], torch.cat(reg, 1), rtol=1e-4, atol=1e-4)


def test_mask_rcnn_mapping_equals_official_forward() -> None:
    sd = mmdet_state_dict("mask_rcnn", "efficientvit_m4")
    model = create_detector("mask_rcnn", "efficientvit_m4").eval()
    load_mmdet_checkpoint(model, sd)
    x = torch.rand(1, 3, 128, 96)
    with torch.no_grad():
        feats = list(model.backbone.body(x).values())
        pyramid = list(model.backbone.neck(feats).values())
        ref = reference_neck(sd, feats, "mask_rcnn")
        assert [p.shape[-1] * 4 for p in pyramid[:1]] == [96]
        for got, want in zip(pyramid, ref, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        objectness, deltas = model.rpn.head(pyramid)
        for level, obj, dl in zip(ref, objectness, deltas):
            t = F.relu(_c(sd, "rpn_head.rpn_conv", level, padding=1))
            torch.testing.assert_close(obj, _c(sd, "rpn_head.rpn_cls", t), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(dl, _c(sd, "rpn_head.rpn_reg", t), rtol=1e-4, atol=1e-4)

        rois = torch.randn(5, 256, 7, 7)
        h = F.relu(F.linear(rois.flatten(1), sd["roi_head.bbox_head.shared_fcs.0.weight"], sd["roi_head.bbox_head.shared_fcs.0.bias"]))
        h = F.relu(F.linear(h, sd["roi_head.bbox_head.shared_fcs.1.weight"], sd["roi_head.bbox_head.shared_fcs.1.bias"]))
        mm_cls = F.linear(h, sd["roi_head.bbox_head.fc_cls.weight"], sd["roi_head.bbox_head.fc_cls.bias"])
        mm_reg = F.linear(h, sd["roi_head.bbox_head.fc_reg.weight"], sd["roi_head.bbox_head.fc_reg.bias"])
        tv_cls, tv_reg = model.roi_heads.box_predictor(model.roi_heads.box_head(rois))
        # mmdet: classes 0..79, background 80 (last); torchvision: background 0, classes 1..80.
        torch.testing.assert_close(tv_cls.softmax(-1)[:, 1:], mm_cls.softmax(-1)[:, :80], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(tv_cls.softmax(-1)[:, 0], mm_cls.softmax(-1)[:, 80], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(tv_reg[:, 4:], mm_reg, rtol=1e-4, atol=1e-4)

        mask_rois = torch.randn(3, 256, 14, 14)
        m = mask_rois
        for i in range(4):
            m = F.relu(_c(sd, f"roi_head.mask_head.convs.{i}.conv", m, padding=1))
        m = F.relu(F.conv_transpose2d(m, sd["roi_head.mask_head.upsample.weight"], sd["roi_head.mask_head.upsample.bias"],
                                      stride=2))
        mm_mask = _c(sd, "roi_head.mask_head.conv_logits", m)
        tv_mask = model.roi_heads.mask_predictor(model.roi_heads.mask_head(mask_rois))
        torch.testing.assert_close(tv_mask[:, 1:], mm_mask, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_round_trip_and_backbone_only_loads(tmp_path) -> None:
    sd = mmdet_state_dict("mask_rcnn", "shvit_s4", num_classes=3, seed=1)
    model = create_detector("mask_rcnn", "shvit_s4", num_classes=3)
    path = tmp_path / "maskrcnn_shvit_s4_1x_coco.pth"
    torch.save({"meta": {"epoch": 12, "CLASSES": ("a", "b", "c")}, "state_dict": sd, "optimizer": {"state": {}}}, path)
    assert load_mmdet_checkpoint(model, path) == {"arch": "mask_rcnn", "loaded": len(sd)}
    back = torchvision_to_mmdet(model)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    # Background rows that mmdet lacks are zero.
    assert model.roi_heads.box_predictor.bbox_pred.weight[:4].abs().sum() == 0

    body = create_backbone("shvit_s4", checkpoint=path)  # e.g. to start a segmentor from COCO weights
    want = model.backbone.body.model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in body.model.state_dict().items())
    faster = create_detector("faster_rcnn", "shvit_s4")
    neck_before = faster.backbone.neck.lateral_convs[0].weight.clone()
    load_mmdet_checkpoint(faster, sd, backbone_only=True)
    got = faster.backbone.body.model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert torch.equal(faster.backbone.neck.lateral_convs[0].weight, neck_before)


def _unchanged(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("case, message", [
    ("wrong_arch", "holds a mask_rcnn but the model is a retinanet"),
    ("wrong_classes", "shape mismatches"),
    ("missing_key", "not in the checkpoint: head.regression_head.bbox_reg.bias"),
    ("extra_key", "no place for: bbox_head.extra.weight"),
    ("classification", "not an mmdet detector checkpoint"),
    ("wrong_backbone", "does not convert|shape mismatches"),
    ("corrupt_file", "not a readable checkpoint"),
])
def test_bad_checkpoints_are_rejected_and_nothing_loaded(case: str, message: str, tmp_path) -> None:
    model = create_detector("retinanet", "shvit_s4", num_classes=80)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sd = mmdet_state_dict("retinanet", "shvit_s4") if case not in ("wrong_arch", "wrong_backbone") else None
    if case == "wrong_arch":
        source = mmdet_state_dict("mask_rcnn", "shvit_s4")
    elif case == "wrong_classes":
        source = mmdet_state_dict("retinanet", "shvit_s4", num_classes=20)
    elif case == "missing_key":
        source = {k: v for k, v in sd.items() if k != "bbox_head.retina_reg.bias"}
    elif case == "extra_key":
        source = {**sd, "bbox_head.extra.weight": torch.zeros(1)}
    elif case == "classification":
        source = leanvit.create_model("shvit_s4").state_dict()
    elif case == "wrong_backbone":
        source = {k.replace("backbone.", "backbone.", 1): v for k, v in mmdet_state_dict("retinanet", "efficientvit_m4").items()}
    else:
        source = tmp_path / "retinanet_shvit_s4_1x_coco.pth"
        source.write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(CheckpointError, match=message):
        load_mmdet_checkpoint(model, source)
    assert _unchanged(model, before)
