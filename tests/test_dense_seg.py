"""Semantic segmentation models, metrics, export and data: every backbone x head, the confusion-matrix metrics
against a hand computation, the export-safe pyramid pooling, inference modes, and every bad input.

Small and fast: non-square inputs of 64-96 pixels, one forward/backward per model.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image

import leanvit

from leanvit.dense import SegConfusion, create_segmentor, segment
from leanvit.dense.ade20k import open_ade20k, open_folder, write_shapes_segmentation
from leanvit.deploy.export import ExportVerificationError, export_segmentor
from leanvit.dense.seg_heads import adaptive_avg_pool2d_exportable
from leanvit.dense.segmentation_task import SegmentationTask
from leanvit.models import list_models
from leanvit.train import load_config
from leanvit.train.config import ConfigError
from leanvit.train.data import BadImageError

from conftest import fast_first

H, W = 64, 96  # non-square, and not a multiple of every window / patch size


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ------------------------------------------------------------------------------------------ models
@pytest.mark.parametrize("arch", ["semantic_fpn", "upernet"])
@pytest.mark.parametrize("name", fast_first(list_models(), [n for n in list_models() if n not in ("sepvit_s", "sepvit_b")]))
def test_every_backbone_through_both_heads(arch: str, name: str) -> None:
    model = create_segmentor(arch, name, num_classes=5, channels=32, **(
        {"neck_channels": 32} if arch == "semantic_fpn" else {"aux_channels": 16}))
    x = torch.randn(2, 3, H, W)
    labels = torch.randint(0, 5, (2, H, W))
    labels[:, :4] = 255  # ignored pixels take part in nothing
    model.train()
    losses = model(x, labels)
    assert set(losses) == ({"loss_decode", "loss_aux"} if arch == "upernet" else {"loss_decode"})
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    head_grads = [p.grad for p in model.decode_head.parameters() if p.requires_grad]
    assert head_grads and all(g is not None for g in head_grads)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 5, H, W) and torch.isfinite(logits).all()


def test_upernet_auxiliary_head_reads_stride_16() -> None:
    for name, level in (("efficientvit_m0", 0), ("shvit_s1", 0), ("sepvit_lite", 2)):
        model = create_segmentor("upernet", name, num_classes=3, channels=32, aux_channels=16)
        assert model.backbone.strides[model.aux_index] == 16 and model.aux_index == level
    no_aux = create_segmentor("upernet", "efficientvit_m0", num_classes=3, channels=32, aux=False)
    assert no_aux.aux_head is None
    assert set(no_aux.train()(torch.randn(2, 3, H, W), torch.zeros(2, H, W, dtype=torch.long))) == {"loss_decode"}


def test_loss_averaging_over_all_pixels_or_valid_ones() -> None:
    model = create_segmentor("semantic_fpn", "efficientvit_m0", num_classes=3, channels=16, neck_channels=16)
    logits = torch.randn(1, 3, 8, 8)
    labels = torch.randint(0, 3, (1, 8, 8))
    labels[0, :4] = 255  # half the pixels ignored
    valid = torch.nn.functional.cross_entropy(logits, labels, ignore_index=255)
    assert model.cross_entropy(logits, labels) == pytest.approx(valid.item() / 2, rel=1e-6)  # mmseg 0.10
    model.loss_average = "valid"
    assert model.cross_entropy(logits, labels) == pytest.approx(valid.item(), rel=1e-6)


def test_bad_segmentor_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown segmentor 'deeplab'; choose one of semantic_fpn, upernet"):
        create_segmentor("deeplab", "shvit_s1")
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        create_segmentor("upernet", "shvit_s1", num_classes=0)
    with pytest.raises(ValueError, match="loss_average must be 'all'"):
        create_segmentor("upernet", "shvit_s1", loss_average="pixels")


# ------------------------------------------------------------------------------------------ metrics
def test_confusion_matrix_metrics_equal_a_hand_computation() -> None:
    # 3 classes, 12 labelled pixels + 4 ignored ones, over two "images" accumulated into one matrix.
    label_a = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred_a = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1]])
    label_b = torch.tensor([[0, 0, 0, 1], [255, 255, 2, 2]])
    pred_b = torch.tensor([[0, 0, 2, 1], [0, 0, 2, 2]])
    conf = SegConfusion(3, ignore_index=255)
    conf.update(pred_a, label_a)
    conf.update(torch.nn.functional.one_hot(pred_b, 3).permute(2, 0, 1)[None].float(), label_b[None])  # logits
    # By hand, rows = label, columns = prediction, the 4 ignored pixels nowhere:
    # a: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0); b: (0,0) (0,0) (0,2) (1,1) (2,2) (2,2)
    assert conf.matrix.tolist() == [[3, 1, 1], [0, 3, 0], [1, 0, 3]]
    scores = conf.compute(["sky", "road", "car"])
    iou = [3 / (5 + 4 - 3), 3 / (3 + 4 - 3), 3 / (4 + 4 - 3)]  # TP / (labelled + predicted - TP)
    acc = [3 / 5, 3 / 3, 3 / 4]
    assert scores["IoU"] == pytest.approx(dict(zip(["sky", "road", "car"], iou)))
    assert scores["mIoU"] == pytest.approx(sum(iou) / 3)
    assert scores["mAcc"] == pytest.approx(sum(acc) / 3)
    assert scores["aAcc"] == pytest.approx(9 / 12) and scores["pixels"] == 12
    # The mean of per-image mIoUs (0.5 and 0.778) is another number: the metric is dataset-level.
    per_image = [SegConfusion(3), SegConfusion(3)]
    per_image[0].update(pred_a, label_a)
    per_image[1].update(pred_b, label_b)
    assert [c.compute()["mIoU"] for c in per_image] == pytest.approx([0.5, 7 / 9])


def test_absent_classes_are_left_out_of_the_means_and_bad_inputs_named() -> None:
    conf = SegConfusion(4)
    conf.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1]))
    scores = conf.compute()
    assert math.isnan(scores["IoU"]["3"]) and scores["mIoU"] == 1.0  # classes 2 and 3 never occur
    with pytest.raises(ValueError, match=r"label value\(s\) \[7\] outside 0..3"):
        conf.update(torch.tensor([0]), torch.tensor([7]))
    with pytest.raises(ValueError, match="differ in size; resize the logits"):
        conf.update(torch.zeros(2, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="predicted class outside 0..3"):
        conf.update(torch.tensor([9]), torch.tensor([0]))


# ------------------------------------------------------------------------------------------ inference
def _tiny(arch: str = "semantic_fpn", name: str = "efficientvit_m0") -> torch.nn.Module:
    kw = {"neck_channels": 16} if arch == "semantic_fpn" else {"aux_channels": 16}
    return create_segmentor(arch, name, num_classes=4, channels=16, **kw).eval()


def test_segment_whole_slide_flip_and_scales() -> None:
    model, x = _tiny(), torch.randn(1, 3, H, W)
    whole = segment(model, x)
    assert whole.shape == (1, 4, H, W)
    assert torch.allclose(whole.sum(1), torch.ones(1, H, W), atol=1e-5)  # class probabilities
    # One window covering the whole image is whole-image inference.
    assert torch.allclose(segment(model, x, mode="slide", crop=max(H, W), stride=32), whole, atol=1e-6)
    slid = segment(model, x, mode="slide", crop=48, stride=32)  # 2 x 3 overlapping windows
    assert slid.shape == whole.shape and torch.allclose(slid.sum(1), torch.ones(1, H, W), atol=1e-5)
    # Flip averaging of a mirrored image is the mirror of flip averaging.
    flipped = segment(model, x.flip(-1), flip=True)
    assert torch.allclose(flipped, segment(model, x, flip=True).flip(-1), atol=1e-5)
    assert segment(model, x, (32, 40), scales=(0.5, 1.0)).shape == (1, 4, 32, 40)
    for bad, message in (({"mode": "tiles"}, "'whole' or 'slide'"), ({"mode": "slide", "stride": 0}, "stride"),
                         ({"scales": (0.0,)}, "positive ratios")):
        with pytest.raises(ValueError, match=message):
            segment(model, x, **bad)


def test_exportable_pyramid_pooling_equals_adaptive_pooling() -> None:
    for h, w in ((13, 17), (6, 6), (24, 9)):
        x = torch.randn(2, 3, h, w)
        for bins in (1, 2, 3, 6):
            ref = torch.nn.functional.adaptive_avg_pool2d(x, bins)
            assert torch.allclose(adaptive_avg_pool2d_exportable(x, bins), ref, atol=1e-6)


# ------------------------------------------------------------------------------------------ export
@pytest.mark.slow
@pytest.mark.parametrize("arch,name", [("upernet", "efficientvit_m0"), ("semantic_fpn", "shvit_s1")])
def test_onnx_export_with_dynamic_size_is_verified_at_two_sizes(tmp_path: Path, arch: str, name: str) -> None:
    out = tmp_path / "seg.onnx"
    model = _tiny(arch, name)
    result = export_segmentor(model, out, "onnx", trace_size=(64, 64), verify_sizes=((64, 96), (96, 48)))
    assert out.is_file() and result.verified, result.summary()
    assert result.checked_batches == [1, 2] and result.checked_sizes == [(64, 96), (96, 48)]
    assert result.max_abs_diff <= 1e-4 and result.top1_agreement == 1.0  # per-pixel classes
    assert not list(tmp_path.glob(".seg.onnx.*")), "temporary files left behind"
    # the artifact itself: input "images" with a free batch, height and width; run at a third size
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [d if isinstance(d, str) else None for d in session.get_inputs()[0].shape] == ["batch", None, "height",
                                                                                        "width"]
    x = torch.randn(3, 3, 80, 112)
    with torch.no_grad():
        expected = leanvit.fuse(model, target="onnx")(x)
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    assert got.shape == expected.shape and (got - expected).abs().max() <= 1e-4


@pytest.mark.slow
def test_openvino_export_with_dynamic_size(tmp_path: Path) -> None:
    out = tmp_path / "seg.xml"
    result = export_segmentor(_tiny("upernet"), out, "openvino", trace_size=(64, 64), verify_sizes=((64, 96), (96, 64)))
    assert out.is_file() and out.with_suffix(".bin").is_file() and result.verified, result.summary()
    assert result.checked_sizes == [(64, 96), (96, 64)] and "from ONNX" in result.exporter
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.bin", "seg.xml"]


@pytest.mark.slow
def test_sepvit_export_at_a_fixed_size_and_a_clear_error_for_dynamic(tmp_path: Path) -> None:
    model = _tiny("semantic_fpn", "sepvit_lite")
    # 64x96 pads every stage's windows (16x24 tokens, windows of 7): the traced padding must hold.
    fixed = export_segmentor(model, tmp_path / "fixed.onnx", "onnx", trace_size=(64, 96), dynamic_size=False)
    assert fixed.verified and fixed.checked_batches == [1, 2], fixed.summary()  # the batch stays free
    assert fixed.checked_sizes == [(64, 96), (64, 96)]
    with pytest.raises(ExportVerificationError, match="export with dynamic_size=False") as info:
        # Traced at 112x112 the first stages' maps are whole windows (no padding traced); 96x160 needs padding.
        export_segmentor(model, tmp_path / "dyn.onnx", "onnx", trace_size=(112, 112),
                         verify_sizes=((96, 160), (64, 96)))
    assert info.value.result.verified is False
    # one failure policy with the classifiers' exports: the artifact is kept for inspection as PATH.failed
    assert not (tmp_path / "dyn.onnx").exists() and (tmp_path / "dyn.onnx.failed").is_file()


def test_export_refuses_bad_arguments(tmp_path: Path) -> None:
    model = _tiny()
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_segmentor(model, tmp_path / "m.tflite", "tflite")
    with pytest.raises(ValueError, match=r"onnx output must end in \.onnx"):
        export_segmentor(model, tmp_path / "m.xml", "onnx")
    with pytest.raises(ValueError, match="verify_sizes is empty"):
        export_segmentor(model, tmp_path / "m.onnx", "onnx", verify_sizes=())


# ------------------------------------------------------------------------------------------ data
def _write_pair(root: Path, split: str, stem: str, size: tuple[int, int], label: np.ndarray | None) -> None:
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((*size, 3), np.uint8)).save(root / "images" / split / f"{stem}.png")
    if label is not None:
        Image.fromarray(label.astype(np.uint8)).save(root / "annotations" / split / f"{stem}.png")


def test_shapes_segmentation_goes_through_the_folder_reader(tmp_path: Path) -> None:
    root = write_shapes_segmentation(tmp_path, train_images=3, val_images=2, size=64)
    train, val = open_folder(root, "train"), open_folder(root, "val")
    assert (len(train), len(val)) == (3, 2) and train.classes == val.classes and train.classes[0] == "background"
    image, label = train[0]
    assert image.size == (64, 64) and label.shape == (64, 64) and label.dtype == torch.int64
    assert 1 < len(label.unique()) <= len(train.classes)  # background and some shapes
    again = write_shapes_segmentation(tmp_path / "again", train_images=3, val_images=2, size=64)
    assert torch.equal(open_folder(again, "train")[0][1], label)  # deterministic


def test_ade20k_reduces_the_zero_label(tmp_path: Path) -> None:
    base = tmp_path / "ADEChallengeData2016"
    label = np.array([[0, 1], [150, 2]])
    _write_pair(base, "training", "a", (2, 2), label)
    source = open_ade20k(tmp_path, "training")
    assert len(source.classes) == 150 and source.reduce_zero_label
    assert source[0][1].tolist() == [[255, 0], [149, 1]]  # 0 = "other" -> ignore, k -> k - 1


def test_bad_pairs_are_skipped_and_counted_or_refused_when_strict(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root).mkdir()
    (root / "classes.txt").write_text("background\nthing\n")
    _write_pair(root, "train", "good", (4, 4), np.zeros((4, 4)))
    _write_pair(root, "train", "no_label", (4, 4), None)
    _write_pair(root, "train", "wrong_size", (4, 4), np.zeros((4, 6)))
    _write_pair(root, "train", "out_of_range", (4, 4), np.full((4, 4), 7))
    source = open_folder(root, "train")
    assert len(source) == 3 and source.skipped == {"missing label": [str(root / "images/train/no_label.png")]}
    with pytest.raises(BadImageError, match="label is 6x4 but the image wrong_size.png is 4x4"):
        source[[p[0].stem for p in source.pairs].index("wrong_size")]
    with pytest.raises(BadImageError, match=r"label value\(s\) \[7\] outside the 2 classes"):
        source[[p[0].stem for p in source.pairs].index("out_of_range")]
    with pytest.raises(ValueError, match="1 image.* have no label PNG .*drop strict to skip them"):
        open_folder(root, "train", strict=True)


def test_unusable_folders_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_folder(tmp_path / "missing", "train")
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "annotations" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no class list: write the class names"):
        open_folder(tmp_path, "train")
    (tmp_path / "classes.txt").write_text("a\nb\n")
    with pytest.raises(FileNotFoundError, match="no images"):
        open_folder(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="no 'val' split"):
        open_folder(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="is not an ADE20K folder"):
        open_ade20k(tmp_path / "images")


@pytest.mark.parametrize("sets,message", [
    ({"task.arch": "deeplab"}, "needs task.arch: semantic_fpn or upernet"),
    ({"task.options": {"crop": 512}}, r"unknown task.options \['crop'\]"),
    ({"task.options": {"eval": {"window": 3}}}, r"unknown task.options.eval keys \['window'\]"),
])
def test_bad_segmentation_configs_are_refused(sets: dict, message: str) -> None:
    cfg = load_config("semantic_fpn_shvit_s4_80k", sets)
    with pytest.raises(ConfigError, match=message):
        SegmentationTask(cfg)


def test_official_recipes_resolve() -> None:
    fpn = load_config("semantic_fpn_sepvit_t_80k")
    assert (fpn.task.arch, fpn.optim.opt, fpn.sched.sched, fpn.train.max_steps) == ("semantic_fpn", "adamw", "poly", 80000)
    assert fpn.optim.weight_decay == 1e-4 and fpn.sched.decay_rate == 0.9
    uper = load_config("upernet_sepvit_t_160k")
    assert (uper.task.arch, uper.train.max_steps, uper.optim.weight_decay) == ("upernet", 160000, 0.01)
    assert uper.sched.warmup_steps == 1500
