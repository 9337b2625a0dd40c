"""leanvit export: ONNX / OpenVINO / TorchScript artifacts reproduce PyTorch; failures are loud.

Models get perturbed BatchNorms (random statistics, gamma away from the zero init) so that every
branch is active and the fused/exported graphs cannot match by accident.
"""
from __future__ import annotations

import sys

import pytest
import torch

import leanvit.deploy.export as export_mod
from leanvit.zoo import build_model, fuse_model, perturb_batchnorm_, resolve_model
from leanvit.cli import main
from leanvit.deploy.export import ExportVerificationError, export_model, logit_errors
from leanvit.deploy.runtime import MissingBackendError, UnsupportedPrecisionError, _cpu_bf16, load_artifact

LEANVIT, TIMM = "efficientvit_m0", "mobilenetv3_small_050"
SIDE = 64
SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "torchscript": ".pt"}
NEEDS = {"onnx": "onnxruntime", "openvino": "openvino", "torchscript": "torch"}


def _model(name: str) -> torch.nn.Module:
    return perturb_batchnorm_(build_model(resolve_model(name), SIDE), seed=3)


@pytest.mark.parametrize("fmt", ["onnx", "openvino", "torchscript"])
@pytest.mark.parametrize("name", [LEANVIT, TIMM])
def test_export_matches_pytorch(tmp_path, fmt: str, name: str) -> None:
    pytest.importorskip(NEEDS[fmt])
    model = _model(name)
    out = tmp_path / f"m{SUFFIX[fmt]}"
    result = export_model(model, fmt, out, img_size=SIDE, dynamic_batch=True)
    assert result.verified and result.max_abs_diff <= 1e-4 and result.checked_batches == [1, 2]
    assert out.exists() and not list(tmp_path.glob("*.failed"))
    if fmt == "openvino":
        assert out.with_suffix(".bin").exists()
    # Independent check: reopen the file and compare with the fused model at another batch size.
    x = torch.randn(3, 3, SIDE, SIDE)
    with torch.no_grad():
        ref = fuse_model(model)(x)
    assert ref.abs().max() > 1e-2  # non-trivial logits: the comparison means something
    abs_diff, _ = logit_errors(ref, load_artifact(out)(x))
    assert abs_diff <= 1e-4


def test_dynamo_onnx_single_file_dynamic_batch(tmp_path) -> None:
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "d.onnx"
    result = export_model(_model(LEANVIT), "onnx", out, img_size=SIDE, dynamo=True, dynamic_batch=True)
    assert "dynamo=True" in result.exporter and result.input_shape[0] == 2  # batch >= 2 trace
    assert result.verified and result.checked_batches == [2, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["d.onnx"]  # weights inside: no .onnx.data
    with pytest.raises(ValueError, match="batch >= 2"):
        export_model(_model(LEANVIT), "onnx", tmp_path / "e.onnx", img_size=SIDE, dynamo=True, dynamic_batch=True,
                     batch_size=1)


@pytest.mark.skipif(not _cpu_bf16(), reason="CPU without native bf16")
@pytest.mark.parametrize("fmt", ["openvino", "torchscript"])
def test_bf16_export_reports_relative_error(tmp_path, fmt: str) -> None:
    pytest.importorskip(NEEDS[fmt])
    out = tmp_path / f"b{SUFFIX[fmt]}"
    result = export_model(_model(LEANVIT), fmt, out, img_size=SIDE, precision="bf16")
    assert result.verified and result.precision == "bf16"
    # bf16 really ran (error well above fp32 round-off) and stayed within the 2e-2 budget.
    assert 1e-5 < result.max_rel_err <= 2e-2


def test_cli_export_ok(tmp_path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    assert main(["export", TIMM, "--format", "onnx", "--output", str(out), "--img-size", str(SIDE)]) == 0
    assert "OK: max abs diff" in capsys.readouterr().out and out.exists()


# --- failures -------------------------------------------------------------------------------------
class _Shifted(torch.nn.Module):
    """A corrupted model: the real one plus 0.5 on every logit."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + 0.5


def test_corrupted_export_fails_and_is_marked(tmp_path, monkeypatch, capsys) -> None:
    pytest.importorskip("onnxruntime")
    write = export_mod._write
    monkeypatch.setattr(export_mod, "_write", lambda fmt, model, *a, **k: write(fmt, _Shifted(model), *a, **k))
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportVerificationError, match=r"max abs diff 0\.5") as info:
        export_model(_model(LEANVIT), "onnx", out, img_size=SIDE)
    assert info.value.result.verified is False
    assert not out.exists() and (tmp_path / "m.onnx.failed").exists()
    # Through the CLI: non-zero exit and the measured difference printed.
    assert main(["export", LEANVIT, "--format", "onnx", "--output", str(out), "--img-size", str(SIDE)]) == 1
    captured = capsys.readouterr()
    assert "FAILED: max abs diff 0.5" in captured.out and "max abs diff 0.5" in captured.err
    assert not out.exists()


def test_tolerance_violation_fails(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(export_mod, "FP32_ATOL", -1.0)  # nothing can pass
    out = tmp_path / "m.pt"
    with pytest.raises(ExportVerificationError, match="needs max abs diff <= -1"):
        export_model(_model(TIMM), "torchscript", out, img_size=SIDE)
    assert not out.exists() and (tmp_path / "m.pt.failed").exists()


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(format="onnx", precision="bf16"), UnsupportedPrecisionError, "no bf16 kernels"),
    (dict(format="torchscript", output="m.pt", precision="fp16"), UnsupportedPrecisionError, "fp32 or bf16"),
    (dict(format="onnx", output="m.xml"), ValueError, "must end in .onnx"),
    (dict(format="openvino", output="m.onnx"), ValueError, "must end in .xml"),
    (dict(format="tflite"), ValueError, "unknown export format"),
    (dict(format="onnx", batch_size=0), ValueError, "batch_size must be >= 1"),
    (dict(format="onnx", img_size=16), ValueError, "img_size must be >= 32"),
])
def test_bad_export_arguments(tmp_path, kwargs: dict, error: type, match: str) -> None:
    kwargs = dict(kwargs)
    out = tmp_path / kwargs.pop("output", "m.onnx")
    with pytest.raises(error, match=match):
        export_model(LEANVIT, kwargs.pop("format"), out, **kwargs)
    assert not list(tmp_path.iterdir())


def test_unknown_model_and_missing_runtime(tmp_path, monkeypatch, capsys) -> None:
    assert main(["export", "shvit_s7", "--format", "onnx", "--output", str(tmp_path / "m.onnx")]) == 1
    assert "Did you mean" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingBackendError, match=r"leanvit\[openvino\]"):
        export_model(_model(LEANVIT), "openvino", tmp_path / "m.xml", img_size=SIDE)
    assert not list(tmp_path.iterdir())


def test_openvino_export_uses_split_qkv_form(tmp_path) -> None:
    # leanvit's OpenVINO IR has no per-head q/k/v split (leanvit.fuse(target="openvino")) and still verifies.
    ov = pytest.importorskip("openvino")
    model = build_model(resolve_model(LEANVIT), SIDE)
    perturb_batchnorm_(model, seed=3)
    out = tmp_path / "m.xml"
    side = SIDE + 8  # not a multiple of the windows: padded attention windows
    result = export_model(model, "openvino", out, img_size=side)
    assert result.verified and result.max_abs_diff <= 1e-4
    ops = [op.get_type_name() for op in ov.Core().read_model(str(out)).get_ordered_ops()]
    heads = [a.num_heads for a in model.modules() if type(a).__name__ == "CascadedGroupAttention"]
    # The one-conv form needs a split per head (24 for efficientvit_m0) besides the per-layer input chunks.
    assert sum("Split" in t for t in ops) < sum(heads)
