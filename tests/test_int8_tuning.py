"""Mixed-precision int8 (the keep-float search, per-runtime ``keep_float``) and the PyTorch int8 route
(PT2E + X86 inductor quantizer, its safetensors artifact).

The search's logic is checked on synthetic models whose sensitive unit is known; its plumbing on the real
ONNX Runtime int8 of the digits model (conftest ``digits_run``). The PyTorch graph runs eagerly here
(inductor's compile takes ~1 min per model: benchmarks/int8_speed.py times the compiled one).
"""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from safetensors.torch import save_file

from leanvit.deploy.images import load_image_folder, model_eval_transform
from leanvit.deploy.int8 import quantize_model
from leanvit.deploy.pt2e import load_pytorch_int8
from leanvit.deploy.quantize import quantize_for
from leanvit.deploy.tuning import quantizable_units, search_keep_float, tune_runtime
from leanvit.models import create_model, signal_images, signal_weights_
from leanvit.zoo import fuse_model

from conftest import assert_logits_close

SIDE = 32  # conftest.DIGITS_SIDE


def _synthetic(sensitive: str, strength: float):
    """fp32: logits = one-hot labels; int8 trial: unit ``sensitive`` (unless kept in float) flips half the
    predictions, the others add small noise."""
    labels = torch.arange(40) % 4
    images = torch.nn.functional.one_hot(labels, 4).float()[:, :, None, None].expand(-1, -1, 2, 2).contiguous()

    def fp32(x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))

    def trial(keep: tuple[str, ...]):
        def model(x: torch.Tensor) -> torch.Tensor:
            out = fp32(x).clone()
            gen = torch.Generator().manual_seed(0)
            for unit in ("a", "b", "c"):
                if unit not in keep:
                    out += 0.01 * torch.randn(out.shape, generator=gen)
            if sensitive not in keep:
                out[::2] = out[::2].roll(1, dims=1) * strength
            return out
        return model

    return trial, fp32, images, labels


def test_search_keeps_the_sensitive_unit_in_float() -> None:
    trial, fp32, images, labels = _synthetic("b", 2.0)
    result = search_keep_float(trial, fp32, images, labels, ["a", "b", "c"], max_drop=0.5, batch_size=16)
    assert result.fp32_top1 == 100 and result.int8_top1 == 50
    assert result.keep_float == ("b",) and result.met and result.drop == 0
    assert result.ranking[0][0] == "b" and result.ranking[0][1] > 0.9
    assert result.trials == 1 + 3 + 1  # all-int8, one per unit, then one kept unit
    assert "1 unit(s) in float" in result.summary() and json.dumps(result.to_dict())
    within = search_keep_float(trial, fp32, images, labels, ["a", "b", "c"], max_drop=60)
    assert within.keep_float == () and within.met and within.trials == 1
    impossible = search_keep_float(trial, fp32, images, labels, ["a", "c"], max_drop=0.5)
    assert not impossible.met and "NOT met" in impossible.summary()
    with pytest.raises(ValueError, match="labelled images"):
        search_keep_float(trial, fp32, images[:0], labels[:0], ["a"], max_drop=0.5)


def test_quantizable_units_partition_the_layers() -> None:
    for name in ("shvit_s1", "efficientvit_m0", "sepvit_lite"):
        fused = fuse_model(create_model(name, img_size=SIDE).eval(), target="onnx")
        units = quantizable_units(fused)
        assert units[0] == "patch_embed" and units[-1] == "head", name
        assert any(u.endswith(".mixer") or u.endswith(".attn") for u in units), name
        assert not any(a != b and b.startswith(a + ".") for a in units for b in units), f"{name}: nested units"


@pytest.mark.openvino_host_isa
@pytest.mark.slow
def test_keep_float_leaves_those_modules_unquantised(tmp_path) -> None:
    model = signal_weights_(create_model("shvit_s1", img_size=SIDE).eval(), seed=3, img_size=SIDE)
    calib, example = signal_images(8, SIDE, seed=1), torch.zeros(2, 3, SIDE, SIDE)
    kept = "stages.1.blocks.0.mixer"
    art = quantize_for("onnxruntime", fuse_model(model, target="onnx"), example, calib, tmp_path / "m.onnx",
                       keep_float=[kept])
    graph = onnx.load(art.path).graph
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    quantized = {n.name: made_by.get(n.input[0]) == "DequantizeLinear" for n in graph.node if n.op_type == "Conv"}
    inside = [q for name, q in quantized.items() if "/stages.1/blocks/blocks.0/mixer/" in name]
    assert inside and not any(inside) and sum(quantized.values()) == len(quantized) - len(inside)
    assert art.keep_float == (kept,)

    import openvino as ov

    art = quantize_for("openvino", fuse_model(model, target="openvino"), example, calib, tmp_path / "m.xml",
                       keep_float=[kept])
    convs = [op for op in ov.Core().read_model(art.path).get_ops() if op.get_type_name() == "Convolution"]
    fed_by_fq = {op.get_friendly_name(): op.input_value(0).get_node().get_type_name() == "FakeQuantize" for op in convs}
    inside = [q for name, q in fed_by_fq.items() if f"{kept}." in name]
    assert inside and not any(inside) and any(fed_by_fq.values())


def _digits(digits_run, target: str, calibration: int, folder: str, images: int):
    """The digits model fused for ``target``, calibration images and labelled images from ``folder``."""
    model = create_model("efficientvit_m0", img_size=SIDE, checkpoint=digits_run["ckpt"]).eval()
    fused = fuse_model(model, target=target)
    transform = model_eval_transform(fused, SIDE)
    calib, _, _ = load_image_folder(digits_run["calib"], transform, labelled=False, limit=calibration)
    x, labels, _ = load_image_folder(digits_run[folder], transform, labelled=True, limit=images)
    return fused, calib, x, labels


@pytest.mark.slow
def test_pytorch_int8_artifact_is_rebuilt_not_unpickled(digits_run, tmp_path) -> None:
    fused, calib, images, labels = _digits(digits_run, "torch", 64, "val", 120)
    art = quantize_for("pytorch", fused, torch.zeros(16, 3, SIDE, SIDE), calib, tmp_path / "m0.safetensors")
    graph, meta = load_pytorch_int8(art.path)
    assert (meta["model"], meta["num_classes"], meta["img_size"]) == ("efficientvit_m0", 10, SIDE)
    ops = {str(n.target) for n in graph.graph.nodes if n.op == "call_function"}
    assert any("quantize_per_tensor" in op for op in ops), "no int8 in the graph"
    with torch.no_grad():
        int8, fp32 = graph(images), fused(images)
        reopened, in_memory = art.open(None, batch_size=8, compiled=False)(images[:8]), graph(images[:8])
    # The reopened artifact is the same graph: the same batch, run eagerly through both. Bit-equal on the AVX-512
    # machine (AMD EPYC Zen 4); with oneDNN capped to AVX2 (make test-avx2) the two copies' kernels round apart
    # by fp32 noise that flips a few activations' int8 rounding: 0.070 max abs, 6.7 % of the spread, top-1 equal.
    # A wrong restore (the per-channel observers' eps skipped) moved logits by 0.95 (pt2e.py): bounded at 15 %.
    assert_logits_close(in_memory, reopened, rel=0.15)
    agreement = float((int8.argmax(-1) == fp32.argmax(-1)).float().mean())
    assert agreement >= 0.9 and float((int8.argmax(-1) == labels).float().mean()) > 0.75, agreement
    save_file({"w": torch.zeros(1)}, str(tmp_path / "plain.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not a leanvit PyTorch int8 artifact"):
        load_pytorch_int8(tmp_path / "plain.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(Path(art.path).read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_pytorch_int8(tmp_path / "cut.safetensors")
    timm_fused = fuse_model(create_model("timm:efficientvit_m0", img_size=SIDE).eval())
    with pytest.raises(ValueError, match="rebuilt from leanvit"):
        quantize_for("pytorch", timm_fused, torch.zeros(2, 3, SIDE, SIDE), calib, tmp_path / "t.safetensors")
    with pytest.raises(ValueError, match="cannot fill one batch"):
        quantize_for("executorch", fuse_model(fused, target="executorch"), torch.zeros(16, 3, SIDE, SIDE), calib[:4],
                     tmp_path / "e.pte")


@pytest.mark.slow
def test_keep_float_search_on_real_int8(digits_run, tmp_path) -> None:
    fused, calib, images, labels = _digits(digits_run, "onnx", 32, "tune", 80)
    units = ["stages.2.blocks.0.mixer", "head"]
    # A bound no int8 model can meet (it would have to beat fp32 by 100 points). -1.0 was used before, and a
    # retrained digits model whose int8 copy happened to score 2.5 points above fp32 met it.
    result = tune_runtime("onnxruntime", fused, calib, images, labels, max_drop=-100.0, units=units)
    assert not result.met and result.images == 80 and result.fp32_top1 > 80
    assert [u for u, _ in result.ranking] == sorted((u for u, _ in result.ranking), key=dict(result.ranking).get,
                                                    reverse=True)
    assert len(result.keep_float) <= 1 and result.trials == 1 + len(units) + len(result.keep_float)

    run = quantize_model("efficientvit_m0", digits_run["calib"], tmp_path, runtimes=("onnxruntime",),
                         checkpoint=digits_run["ckpt"], val=digits_run["val"], img_size=SIDE, calibration_images=32,
                         val_images=40, max_drop=100.0, tune=digits_run["tune"], tune_images=50)
    (res,) = run.results
    assert res.search is not None and res.search.met and res.search.trials == 1 and res.artifact.keep_float == ()
    record = json.loads((tmp_path / "int8.json").read_text())
    assert record["max_drop"] == 100.0 and record["results"][0]["search"]["images"] == 50
    with pytest.raises(ValueError, match="same folder"):
        quantize_model("efficientvit_m0", digits_run["calib"], tmp_path, runtimes=("onnxruntime",),
                       checkpoint=digits_run["ckpt"], val=digits_run["val"], img_size=SIDE,
                       max_drop=0.5, tune=digits_run["val"])
    with pytest.raises(ValueError, match="needs both"):
        quantize_model("efficientvit_m0", digits_run["calib"], tmp_path, max_drop=0.5)
