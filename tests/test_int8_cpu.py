"""int8 per CPU class (leanvit.deploy.int8_policy): the quantisation exact for the target's int8 instructions,
recorded in the artifact and warned about where it runs on another class; the speed policy of
``--precision int8``; the image size taken from the checkpoint. Both sides of the int8 probe are forced
(``capabilities.cpu_has_int8_dot``), whatever this machine has.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from safetensors import safe_open

import leanvit.deploy.capabilities as caps
from leanvit.deploy.capabilities import UnsupportedPrecisionError, check_precision
from leanvit.deploy.int8 import quantize_model
from leanvit.deploy.int8_policy import (INT8_RECIPES, INT8_SPEED, cpu_class_of, int8_recipe, int8_speed_check,
                                        resolve_target_cpu)
from leanvit.deploy.int8_storage import artifact_target_cpu, other_cpu_problem
from leanvit.deploy.export import export_model
from leanvit.deploy.pt2e import load_pytorch_int8
from leanvit.deploy.quantize import quantize_for
from leanvit.deploy.routes import INT8_RUNTIMES
from leanvit.deploy.runtime import load_artifact
from leanvit.models import create_model, signal_images, signal_weights_
from leanvit.models.shvit import SHViT
from leanvit.models.checkpoint import checkpoint_img_size, save_checkpoint, trained_img_size
from leanvit.zoo import fuse_model

from helpers.training import make_image_folder

SIDE = 32



@pytest.fixture(params=[True, False], ids=["vnni", "no-vnni"])
def probe(request, monkeypatch) -> bool:
    """This machine's int8 probe forced to each answer."""
    monkeypatch.setattr(caps, "cpu_has_int8_dot", lambda: request.param)
    return request.param


def test_recipes_cover_every_runtime_and_class() -> None:
    assert {(r, c) for r in INT8_RUNTIMES for c in ("vnni", "no-vnni")} == set(INT8_RECIPES)
    # the two runtimes whose x86 kernels sum u8 x s8 pairs in int16 without VNNI change their weights there:
    # 7-bit for PyTorch (oneDNN), uint8 for ONNX Runtime (U8U8 kernels)
    assert [r for r in INT8_RUNTIMES if int8_recipe(r, "no-vnni").reduce_range] == ["pytorch"]
    assert [r for r in INT8_RUNTIMES if int8_recipe(r, "no-vnni").unsigned_weights] == ["onnxruntime"]
    assert not any(int8_recipe(r, "vnni").reduce_range or int8_recipe(r, "vnni").unsigned_weights
                   for r in INT8_RUNTIMES)
    assert resolve_target_cpu(None, True) == resolve_target_cpu("auto", True) == cpu_class_of(True) == "vnni"
    assert resolve_target_cpu("auto", False) == "no-vnni" and resolve_target_cpu("vnni", False) == "vnni"
    with pytest.raises(ValueError, match="no-vnni"):
        resolve_target_cpu("avx2", True)


def test_int8_speed_policy_is_measured(probe) -> None:
    # VNNI: every int8 backend runs natively; without it: only where int8 was measured faster than fp32
    openvino = next(s for s in INT8_SPEED if s.runtime == "openvino")
    assert openvino.faster and "efficientvit_m0 @ 1 0.89x" in openvino.slower_cases()
    if probe:
        for backend in ("openvino", "onnxruntime", "executorch", "compile"):
            assert check_precision("int8", backend) == ("int8", "")
        return
    precision, note = check_precision("int8", "openvino")
    assert precision == "int8" and "0.89x" in note and "Zen 3" in note  # faster overall, the slower case named
    for backend in ("onnxruntime", "executorch", "compile"):
        with pytest.raises(UnsupportedPrecisionError, match="not been measured.*VNNI.*openvino backend"):
            check_precision("int8", backend)
    assert check_precision("int8", "onnxruntime", allow_fallback=True)[0] == "fp32"
    assert int8_speed_check("openvino", "no-vnni")[0] == ""


def test_measured_slower_route_is_refused_with_its_ratio(monkeypatch) -> None:
    import leanvit.deploy.int8_policy as policy

    slow = policy.Int8Speed("onnxruntime", "no-vnni", {"m @ 1": 0.5, "m @ 16": 0.8}, "a test CPU", "test")
    monkeypatch.setattr(policy, "INT8_SPEED", policy.INT8_SPEED + (slow,))
    problem, _ = int8_speed_check("onnxruntime", "no-vnni")
    assert "slower than fp32" in problem and "m @ 1 0.50x" in problem and "m @ 16 0.80x" in problem


def test_other_cpu_problem() -> None:
    assert other_cpu_problem(None, False) == other_cpu_problem("vnni", True) == other_cpu_problem("no-vnni", False) == ""
    assert "saturate" in other_cpu_problem("vnni", False) and "--target-cpu no-vnni" in other_cpu_problem("vnni", False)
    assert "runs correctly" in other_cpu_problem("no-vnni", True)


@pytest.mark.slow
def test_onnxruntime_int8_follows_the_probe(probe, tmp_path) -> None:
    # SHViT with one block per stage: every kind of layer, and a short graph to quantise twice
    model = signal_weights_(SHViT(depth=(1, 1, 1), img_size=SIDE).eval(), seed=3, img_size=SIDE)
    fused = fuse_model(model, target="onnx")
    artifact = quantize_for("onnxruntime", fused, torch.zeros(2, 3, SIDE, SIDE), signal_images(8, SIDE, seed=1),
                            tmp_path / "m.onnx")
    here = cpu_class_of(probe)
    assert artifact.target_cpu == here and here in artifact.description
    assert artifact_target_cpu(artifact.path) == here  # recorded in the file's metadata_props
    graph = onnx.load(artifact.path).graph
    conv_weights = {n.input[1] for n in graph.node if n.op_type == "Conv"}  # DequantizeLinear outputs
    stored = {t.name: t for t in graph.initializer}
    types = {stored[n.input[0]].data_type for n in graph.node
             if n.op_type == "DequantizeLinear" and n.output[0] in conv_weights}
    # int8 weights (full range: they reach 127) for VNNI; uint8 (U8U8, no int16 saturation) without it
    assert types == {onnx.TensorProto.INT8 if probe else onnx.TensorProto.UINT8}, types
    if probe:
        weights = [numpy_helper.to_array(t) for t in graph.initializer
                   if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
        assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) == 127
    # the artifact opened on the other class of CPU warns, on its own class it does not
    caps_other = not probe
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_artifact(artifact.path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(caps, "cpu_has_int8_dot", lambda: caps_other)
        with pytest.warns(UserWarning, match="quantised for"):
            load_artifact(artifact.path)


@pytest.mark.slow
def test_pytorch_int8_follows_the_probe(probe, tmp_path) -> None:
    # a registered name (the artifact is rebuilt from it); shvit_s1's graph is half efficientvit_m0's
    model = signal_weights_(create_model("shvit_s1", img_size=SIDE).eval(), seed=3, img_size=SIDE)
    fused = fuse_model(model, target="torch")
    calib = signal_images(8, SIDE, seed=1)
    artifact = quantize_for("pytorch", fused, torch.zeros(2, 3, SIDE, SIDE), calib, tmp_path / "m.safetensors")
    with safe_open(artifact.path, framework="pt") as f:
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    assert meta["leanvit_int8_cpu"] == cpu_class_of(probe) and meta["reduce_range"] is (not probe)
    graph, _ = load_pytorch_int8(artifact.path)  # rebuilt with the recorded range
    activation_max = {n.args[4] for n in graph.graph.nodes if "quantize_per_tensor" in str(n.target)}
    assert activation_max == {255}, activation_max  # full-range uint8 activations on both classes
    dequantized = [n for n in graph.graph.nodes if "dequantize_per_channel" in str(n.target)]
    weight_range = {(n.args[4], n.args[5]) for n in dequantized}
    assert weight_range == ({(-128, 127)} if probe else {(-64, 63)}), weight_range  # 8- or 7-bit weights
    largest = max(int(getattr(graph, n.args[0].target).abs().max()) for n in dequantized)
    assert largest <= (128 if probe else 64), largest  # 2 x 255 x 64 fits vpmaddubsw's int16 sums
    assert torch.isfinite(graph(calib[:2])).all()


def _outlier_calibration(side: int = 8) -> torch.Tensor:
    """63 images in [-1, 1] and one 100x brighter last one: a global min-max range would be 100."""
    images = torch.rand(64, 3, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1
    images[-1] *= 100
    return images


@pytest.mark.parametrize("quantizer", ["x86", "xnnpack"])
def test_pt2e_activation_ranges_average_the_calibration_images(quantizer) -> None:
    # one outlier image among 64 moves the averaged range by ~1 % of its extreme, not to it
    from leanvit.deploy.pt2e import calibrated_pt2e, converted_pt2e, x86_quantizer, xnnpack_quantizer

    if quantizer == "xnnpack":
        pytest.importorskip("executorch.backends.xnnpack.quantizer.xnnpack_quantizer")
    make = x86_quantizer if quantizer == "x86" else xnnpack_quantizer
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    graph = converted_pt2e(calibrated_pt2e(model, _outlier_calibration(), make()))
    scale = next(float(n.args[1]) for n in graph.graph.nodes if "quantize_per_tensor" in str(n.target))
    assert scale * 255 < 10, scale  # the input's range: ~2-5 wide, not 200


def test_onnxruntime_activation_ranges_average_the_calibration_images(tmp_path) -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    calib = _outlier_calibration()
    artifact = quantize_for("onnxruntime", model, torch.zeros(1, 3, 8, 8), calib, tmp_path / "m.onnx",
                            target_cpu="vnni")
    graph = onnx.load(artifact.path).graph
    stored = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    first = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == graph.input[0].name)
    assert float(stored[first.input[1]]) * 255 < 10, stored[first.input[1]]  # ~5 wide, not 200


def test_trained_img_size(tmp_path) -> None:
    path = save_checkpoint(create_model("efficientvit_m0", img_size=48, num_classes=10), tmp_path / "m.safetensors")
    assert trained_img_size(path) == 48
    assert trained_img_size({"img_size": 64, "model": {}}) == 64  # a leanvit train checkpoint's field
    torch.save({"model": {}}, tmp_path / "foreign.pth")
    assert trained_img_size(tmp_path / "foreign.pth") is None
    assert checkpoint_img_size(None, path, 224) == 48  # the checkpoint wins over the native size
    assert checkpoint_img_size(None, None, 224) == 224
    assert checkpoint_img_size(None, tmp_path / "foreign.pth", 224) == 224
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert checkpoint_img_size(48, path, 224) == 48  # an explicit size that agrees: silent
    with pytest.warns(UserWarning, match="differs from the 48 px"):
        assert checkpoint_img_size(64, path, 224) == 64  # an explicit size wins, with a warning
    with pytest.raises(FileNotFoundError, match="not found"):
        trained_img_size(tmp_path / "missing.safetensors")


@pytest.mark.slow
def test_quantize_and_export_use_the_checkpoint_size(tmp_path) -> None:
    ckpt = save_checkpoint(signal_weights_(create_model("efficientvit_m0", img_size=48, num_classes=3).eval(),
                                           img_size=48), tmp_path / "m.safetensors")
    images = make_image_folder(tmp_path / "img", {"a": 6, "b": 6, "c": 6}, size=(40, 40), splits=("val",)) / "val"
    run = quantize_model("efficientvit_m0", images, tmp_path / "q", runtimes=("onnxruntime",), checkpoint=ckpt,
                         val=images, calibration_images=16)
    assert run.img_size == 48
    dims = onnx.load(run.results[0].artifact.path).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, 48, 48]
    record = json.loads((tmp_path / "q" / "int8.json").read_text())
    here = cpu_class_of(caps.cpu_has_int8_dot())
    assert record["img_size"] == 48 and record["target_cpu"] == record["machine_cpu"] == here
    other = "no-vnni" if here == "vnni" else "vnni"
    with pytest.warns(UserWarning, match=f"made for {other} CPUs but this machine is {here}"):
        run = quantize_model("efficientvit_m0", images, tmp_path / "q2", runtimes=("onnxruntime",), checkpoint=ckpt,
                             calibration_images=16, target_cpu=other)
    assert run.target_cpu == other and artifact_target_cpu(run.results[0].artifact.path) == other
    assert any("made for" in note for note in run.notes)
    result = export_model("efficientvit_m0", "onnx", tmp_path / "m.onnx", checkpoint=ckpt)
    assert tuple(result.input_shape[-2:]) == (48, 48)
    with pytest.warns(UserWarning, match="differs from the 48 px"):
        result = export_model("efficientvit_m0", "onnx", tmp_path / "m64.onnx", checkpoint=ckpt, img_size=64)
    assert tuple(result.input_shape[-2:]) == (64, 64)
