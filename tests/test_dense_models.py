"""Dense backbones, the papers' neck and the three torchvision detectors (docs/detection.md)."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import roi_align

import leanvit
from leanvit.dense import DenseFPN, create_backbone, create_detector, fpn_preset, label_offset
from leanvit.dense.detectors import AlignedMultiScaleRoIAlign, FixedStrideAnchorGenerator

from conftest import fast_first

H, W = 96, 128  # non-square, not a multiple of 64
# Small sampling counts keep the R-CNN heads cheap on CPU; the official values are tested separately.
SMALL_RCNN = dict(rpn_pre_nms_top_n_train=100, rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_train=50,
                  rpn_post_nms_top_n_test=20, rpn_batch_size_per_image=32, box_batch_size_per_image=32,
                  box_detections_per_img=10)


def _targets(arch: str, n: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(n):
        boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [40.0 + i, 20.0, 120.0, 90.0]])
        t = {"boxes": boxes, "labels": torch.tensor([0, 2]) + label_offset(arch)}
        if arch == "mask_rcnn":
            masks = torch.zeros(2, H, W, dtype=torch.uint8)
            for m, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
                m[y1:y2, x1:x2] = 1
            t["masks"] = masks
        out.append(t)
    return out


def _train_eval(model: torch.nn.Module, arch: str, batch: int) -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    images = [torch.rand(3, H, W) for _ in range(batch)]
    model.train()
    losses = model(images, _targets(arch, batch))
    assert losses and all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    body_grads = [p.grad for p in model.backbone.body.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in body_grads), "no gradient reached the backbone"
    neck_grads = [p.grad for p in model.backbone.neck.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in neck_grads)
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == batch
    for d in detections:
        assert d["boxes"].shape[1:] == (4,) and len(d["boxes"]) == len(d["scores"]) == len(d["labels"])
        if len(d["boxes"]):
            assert d["boxes"][:, 0::2].max() <= W and d["boxes"][:, 1::2].max() <= H
    return detections


@pytest.mark.parametrize("name", fast_first(leanvit.list_models(), [n for n in leanvit.list_models() if n not in ("sepvit_s", "sepvit_b")]))
def test_every_backbone_through_retinanet(name: str) -> None:
    model = create_detector("retinanet", name, num_classes=3, norm_eval=False, fpn_channels=32,
                            min_size=H, max_size=W)
    body = model.backbone.body
    with torch.no_grad():
        feats = body(torch.rand(1, 3, H, W))
        pyramid = model.backbone.neck(feats)
    assert list(feats) == [str(i) for i in range(len(body.strides))]
    assert [f.shape[1] for f in feats.values()] == body.out_channels
    assert all(f.is_contiguous() for f in feats.values())
    assert model.backbone.strides == [8, 16, 32, 64, 128]
    sizes = [tuple(p.shape[-2:]) for p in pyramid.values()]
    assert sizes[1:4] == [tuple(f.shape[-2:]) for f in feats.values()][-3:] or body.strides[0] == 4
    for (h, w), stride in zip(sizes, model.backbone.strides):
        assert h == pytest.approx(H / stride, abs=1) and w == pytest.approx(W / stride, abs=1)
    family = leanvit.get_config(name).family
    if family == "sepvit":  # the official dense SepViT: zero window tokens, level norms, official drop path
        drop = [b.drop_path.drop_prob for st in body.model.stages for b in st.blocks if hasattr(b.drop_path, "drop_prob")]
        assert body.model.window_token == "zero" and body.model.feature_norms is not None
        assert max(drop) == pytest.approx({"sepvit_t": 0.2, "sepvit_s": 0.3, "sepvit_b": 0.5}.get(name, 0.1))
    if family == "efficientvit_m":  # 7x7 windows in every stage, as the official dense EfficientViT
        assert {blk.mixer.m.attn.window for st in body.model.stages for blk in st.blocks} == {7}
    _train_eval(model, "retinanet", batch=1)


@pytest.mark.parametrize("name", ["shvit_s1", "sepvit_lite"])
@pytest.mark.parametrize("arch", ["mask_rcnn", "faster_rcnn"])
def test_rcnn_detectors(arch: str, name: str) -> None:
    model = create_detector(arch, name, num_classes=3, norm_eval=False, fpn_channels=32, min_size=H, max_size=W,
                            **SMALL_RCNN)
    assert model.backbone.strides == [4, 8, 16, 32, 64]
    detections = _train_eval(model, arch, batch=2)
    if arch == "mask_rcnn":
        for d in detections:
            assert d["masks"].shape == (len(d["boxes"]), 1, H, W)


def test_official_settings_and_overrides() -> None:
    retina = create_detector("retinanet", "shvit_s1")
    assert retina.detections_per_img == 100 and retina.transform.size_divisible == 32
    assert (retina.transform.min_size, retina.transform.max_size) == ((800,), 1333)
    assert retina.anchor_generator.strides == (8, 16, 32, 64, 128)
    assert retina.anchor_generator.sizes[0] == pytest.approx((32.0, 32 * 2 ** (1 / 3), 32 * 2 ** (2 / 3)))
    assert retina.head.classification_head.num_classes == 80 and label_offset("retinanet") == 0

    mask = create_detector("mask_rcnn", "efficientvit_m0", rpn_post_nms_top_n_test=500)
    rpn = mask.rpn
    assert rpn._post_nms_top_n == {"training": 1000, "testing": 500}
    assert rpn._pre_nms_top_n == {"training": 2000, "testing": 1000}
    assert rpn.anchor_generator.strides == (4, 8, 16, 32, 64) and rpn.anchor_generator.sizes[0] == (32.0,)
    for pool in (mask.roi_heads.box_roi_pool, mask.roi_heads.mask_roi_pool):
        assert isinstance(pool, AlignedMultiScaleRoIAlign) and pool.aligned and pool.sampling_ratio == 0
    assert mask.roi_heads.box_predictor.cls_score.out_features == 81 and label_offset("mask_rcnn") == 1
    assert mask.roi_heads.detections_per_img == 100

    with pytest.raises(ValueError, match="unknown detector"):
        create_detector("yolo", "shvit_s1")
    with pytest.raises(ValueError, match="unknown option"):
        create_detector("retinanet", create_backbone("shvit_s1"), no_such_option=1)


def test_norm_eval_and_frozen_stages() -> None:
    torch.manual_seed(0)
    frozen = create_backbone("shvit_s1", frozen_stages=1).train()
    bns = [m for m in frozen.model.modules() if isinstance(m, _BatchNorm)]
    assert bns and not any(m.training for m in bns)
    stats = [m.running_mean.clone() for m in bns]
    out = frozen(torch.rand(2, 3, 64, 96))
    sum(o.square().mean() for o in out.values()).backward()
    assert all(torch.equal(s, m.running_mean) for s, m in zip(stats, bns)), "norm_eval must freeze BN statistics"
    for p in list(frozen.model.patch_embed.parameters()) + list(frozen.model.stages[0].parameters()):
        assert not p.requires_grad and p.grad is None
    later_bn = next(m for m in frozen.model.stages[1].modules() if isinstance(m, _BatchNorm))
    assert later_bn.weight.grad is not None, "BN affine terms keep training under norm_eval"

    free = create_backbone("shvit_s1", norm_eval=False).train()
    bn = next(m for m in free.model.modules() if isinstance(m, _BatchNorm))
    before = bn.running_mean.clone()
    free(torch.rand(2, 3, 64, 96))
    assert bn.training and not torch.equal(before, bn.running_mean)
    with pytest.raises(ValueError, match="frozen_stages"):
        create_backbone("shvit_s1", frozen_stages=7)
    with pytest.raises(ValueError, match="out_indices"):
        create_backbone("shvit_s1", out_indices=[5])
    two = create_backbone("sepvit_lite", out_indices=[2, 3])
    assert two.strides == [16, 32] and list(two(torch.rand(1, 3, 64, 64))) == ["0", "1"]


def test_neck_shapes_match_official_at_800x1216() -> None:
    # SHViT-S4 at 800x1216 (strides 16/32/64, each stride-2 step rounds up): backbone 50x76, 25x38, 13x19.
    feats = [torch.rand(1, c, h, w) for c, (h, w) in zip((224, 336, 448), ((50, 76), (25, 38), (13, 19)))]
    rcnn = fpn_preset("mask_rcnn", (224, 336, 448), (16, 32, 64), out_channels=8)
    sizes = [tuple(o.shape[-2:]) for o in rcnn(feats).values()]
    assert sizes == [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)] and rcnn.strides == [4, 8, 16, 32, 64]
    retina = fpn_preset("retinanet", (224, 336, 448), (16, 32, 64), out_channels=8)
    assert retina.fpn_convs[3].in_channels == 448 and retina.fpn_convs[3].out_channels == 8 and retina.fpn_convs[3].stride == (2, 2)
    sizes = [tuple(o.shape[-2:]) for o in retina(feats).values()]
    assert sizes == [(100, 152), (50, 76), (25, 38), (13, 19), (7, 10)] and retina.strides == [8, 16, 32, 64, 128]
    # SepViT: mmdet FPN from stride 8 with P6 on C5 and P7 on P6 (RetinaNet), max-pooled P6 (R-CNN).
    sep = [torch.rand(1, c, 200 // 2 ** i, 304 // 2 ** i) for i, c in enumerate((96, 192, 384, 768))]  # 800x1216
    sretina = fpn_preset("retinanet", (96, 192, 384, 768), (4, 8, 16, 32), out_channels=8)
    assert sretina.start_level == 1 and sretina.strides == [8, 16, 32, 64, 128]
    assert [tuple(o.shape[-2:]) for o in sretina(sep).values()][-1] == (7, 10)
    srcnn = fpn_preset("mask_rcnn", (96, 192, 384, 768), (4, 8, 16, 32), out_channels=8)
    out = list(srcnn(sep).values())
    assert torch.equal(out[4], out[3][..., ::2, ::2])
    seg = fpn_preset("semantic_fpn", (224, 336, 448), (16, 32, 64), out_channels=8)
    assert seg.strides == [4, 8, 16, 32] and len(seg(feats)) == 4
    with pytest.raises(ValueError, match="num_outs"):
        DenseFPN((8, 8), 8, num_outs=2, num_extra_trans_convs=2)


def test_anchor_generator_matches_mmdet_formula() -> None:
    strides = (64, 128)
    sizes = ((256.0, 256 * 2 ** (1 / 3)), (512.0, 512 * 2 ** (1 / 3)))
    gen = FixedStrideAnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 2, strides)
    feats = [torch.zeros(1, 1, 13, 19), torch.zeros(1, 1, 7, 10)]  # ceil-rounded maps of an 800x1216 input
    anchors = gen(ImageList(torch.zeros(1, 3, 800, 1216), [(800, 1216)]), feats)[0]
    expected = []
    for stride, scales, (fh, fw) in zip(strides, sizes, ((13, 19), (7, 10))):
        base = []
        for ratio in (0.5, 1.0, 2.0):  # mmdet: ratio outer, scale inner; h/w = ratio; centre offset 0
            for scale in scales:
                w, h = scale / math.sqrt(ratio), scale * math.sqrt(ratio)
                base.append([-w / 2, -h / 2, w / 2, h / 2])
        base = torch.tensor(base)
        ys, xs = torch.meshgrid(torch.arange(fh) * stride, torch.arange(fw) * stride, indexing="ij")
        shifts = torch.stack([xs, ys, xs, ys], -1).reshape(-1, 1, 4).float()
        expected.append((shifts + base).reshape(-1, 4))
    torch.testing.assert_close(anchors, torch.cat(expected))
    assert anchors[:, 1].max() + anchors[:, 3].max() > 0 and (anchors[: 13 * 19 * 6, 1] + anchors[: 13 * 19 * 6, 3]).max() / 2 == 12 * 64


def test_aligned_roi_pool_matches_mmdet_level_rule() -> None:
    torch.manual_seed(0)
    feats = {str(i): torch.rand(1, 4, 64 // 2 ** i, 96 // 2 ** i) for i in range(4)}
    boxes = torch.tensor([[3.0, 5.0, 20.0, 30.0], [10.0, 10.0, 140.0, 200.0], [0.5, 0.5, 250.0, 380.0],
                          [30.0, 40.0, 100.0, 90.0]])
    pool = AlignedMultiScaleRoIAlign(["0", "1", "2", "3"], 7)
    out = pool(feats, [boxes], [(256, 384)])
    scale = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
    levels = torch.floor(torch.log2(scale / 56 + 1e-6)).clamp(0, 3).long()  # mmdet finest_scale=56
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes], 1)
    for i, level in enumerate(levels.tolist()):
        ref = roi_align(feats[str(level)], rois[i:i + 1], 7, spatial_scale=1 / 4 / 2 ** level, sampling_ratio=0,
                        aligned=True)
        torch.testing.assert_close(out[i:i + 1], ref)


@pytest.mark.slow
def test_backbone_loads_imagenet_weights() -> None:
    classifier = leanvit.create_model("sepvit_lite")  # a 224 classifier: no level norms, fewer pointwise blocks
    body = create_backbone("sepvit_lite", checkpoint=classifier.state_dict()).model
    shared = {k: v for k, v in classifier.state_dict().items() if k in body.state_dict()}
    fresh = [k for k in body.state_dict() if k not in shared]
    assert fresh and all(k.startswith("feature_norms.") or ".attn.pw_qk." in k or ".attn.token_norm." in k for k in fresh)
    assert all(torch.equal(v, body.state_dict()[k]) for k, v in shared.items())
    assert not any(k.startswith(("norm.", "head.")) for k in body.state_dict())  # SepViT's unused final norm
    with pytest.raises(leanvit.CheckpointError, match="shvit_s2"):
        create_backbone("shvit_s1", checkpoint=leanvit.create_model("shvit_s2").state_dict())


def test_backbone_latency_rows() -> None:
    from leanvit.dense.speed import backbone_latency, speed_tables

    threads = torch.get_num_threads()
    rows = backbone_latency(["shvit_s1"], img_size=64, batch=2, baseline=None, threads=1, rounds=1,
                            duration_s=0.01, warmup_s=0.01)
    assert torch.get_num_threads() == threads, "the thread count is restored"
    assert [r["model"] for r in rows] == ["shvit_s1", "timm:shvit_s1"]
    assert rows[0]["ms_per_image"] > 0 and rows[0]["vs_timm"] > 0 and rows[0]["batch"] == 2
    assert "| shvit_s1 |" in speed_tables(rows)
