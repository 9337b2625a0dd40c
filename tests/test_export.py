"""leanvit export: ONNX / OpenVINO / TorchScript artifacts reproduce PyTorch; failures are loud.

Models get :func:`~leanvit.models.signal_weights_` (every layer random, BatchNorms calibrated) so that every
branch is active, the logits depend on the input and the fused/exported graphs cannot match by accident.
"""
from __future__ import annotations

import copy
import subprocess
import sys

import openvino as ov
import pytest
import torch

import leanvit
import leanvit.deploy.capabilities as caps
import leanvit.deploy.export as export_mod
import leanvit.deploy.verify as verify_mod
from leanvit.cli import build_parser, main
from leanvit.deploy.capabilities import MissingBackendError, UnsupportedPrecisionError
from leanvit.deploy.export import ExportVerificationError, export_model
from leanvit.deploy.options import ExportOptions, export_options_from_args
from leanvit.deploy.runtime import load_artifact
from leanvit.deploy.verify import BF16_MIN_CORRELATION, BF16_SPREAD_RTOL, FP32_ATOL
from leanvit.models import create_model, logit_agreement, signal_images, signal_weights_
from leanvit.zoo import fuse_model

from conftest import fast_first

LEANVIT, TIMM = "efficientvit_m0", "mobilenetv3_small_050"
SIDE = 64
SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "torchscript": ".pt"}


def _model(name: str) -> torch.nn.Module:
    return signal_weights_(create_model(name, img_size=SIDE).eval(), seed=3, img_size=SIDE)


@pytest.mark.parametrize("fmt", ["onnx", "openvino", "torchscript"])
@pytest.mark.parametrize("name", fast_first([LEANVIT, TIMM], [LEANVIT]))
def test_export_matches_pytorch(tmp_path, fmt: str, name: str) -> None:
    model = _model(name)
    out = tmp_path / f"m{SUFFIX[fmt]}"
    result = export_model(model, fmt, out, img_size=SIDE, dynamic_batch=True)
    assert result.verified and result.max_abs_diff <= 1e-4 and result.checked_batches == [1, 2]
    assert result.rel_err < 1e-3 and result.top1_agreement == 1.0
    assert out.exists() and not list(tmp_path.glob("*.failed"))
    if fmt == "openvino":
        assert out.with_suffix(".bin").exists()
    # Independent check: reopen the file and compare with the fused model at another batch size.
    x = signal_images(3, SIDE, seed=5)
    with torch.no_grad():
        ref = fuse_model(model)(x)
    agreement = logit_agreement(ref, load_artifact(out)(x))
    assert agreement["spread"] > 0.1  # logits that depend on the input: the comparison means something
    assert agreement["max_abs_error"] <= 1e-4


@pytest.mark.slow
def test_dynamo_onnx_single_file_dynamic_batch(tmp_path) -> None:
    out = tmp_path / "d.onnx"
    result = export_model(_model(LEANVIT), "onnx", out, img_size=SIDE, dynamo=True, dynamic_batch=True)
    assert "dynamo=True" in result.exporter and result.input_shape[0] == 2  # batch >= 2 trace
    assert result.verified and result.checked_batches == [2, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["d.onnx"]  # weights inside: no .onnx.data
    with pytest.raises(ValueError, match="batch >= 2"):
        export_model(_model(LEANVIT), "onnx", tmp_path / "e.onnx", img_size=SIDE, dynamo=True, dynamic_batch=True,
                     batch_size=1)


@pytest.mark.slow
def test_bf16_export_reports_relative_error(tmp_path) -> None:
    # TorchScript bf16 runs on any CPU (torch emulates bf16 where it is not native): always checked.
    result = export_model(_model(LEANVIT), "torchscript", tmp_path / "b.pt", img_size=SIDE, precision="bf16")
    assert result.verified and result.precision == "bf16"
    # bf16 really ran (error far above fp32 round-off, ~1e-5 of the spread) and stayed within the bound.
    assert 1e-3 < result.rel_err <= BF16_SPREAD_RTOL and result.correlation >= BF16_MIN_CORRELATION
    # OpenVINO bf16 follows OpenVINO's own capability list: exported where it is native, refused elsewhere.
    out = tmp_path / "b.xml"
    if "BF16" in caps._openvino_capabilities():
        result = export_model(_model(LEANVIT), "openvino", out, img_size=SIDE, precision="bf16")
        assert result.verified and result.precision == "bf16" and 1e-3 < result.rel_err <= BF16_SPREAD_RTOL
    else:
        with pytest.raises(UnsupportedPrecisionError, match="OpenVINO reports no BF16 support"):
            export_model(_model(LEANVIT), "openvino", out, img_size=SIDE, precision="bf16")
        assert not out.exists()


class _InputBlind(torch.nn.Module):
    """A broken graph whose logits ignore the input: every row is the batch's mean logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).mean(0, keepdim=True).expand(x.shape[0], -1)


@pytest.mark.slow
def test_bf16_verification_fails_a_graph_that_ignores_its_input(tmp_path, monkeypatch) -> None:
    # Traced at batch 4 so that the batch mean is over 4 different images. Its error / spread (3.5-5.5 measured)
    # can pass the spread bound; its input correlation is 0.
    write = export_mod.write_artifact
    monkeypatch.setattr(export_mod, "write_artifact",
                        lambda fmt, model, *a, **k: write(fmt, _InputBlind(model), *a, **k))
    out = tmp_path / "blind.pt"
    with pytest.raises(ExportVerificationError, match="input correlation 0.000") as info:
        export_model(_model(LEANVIT), "torchscript", out, img_size=SIDE, precision="bf16", batch_size=4)
    assert info.value.result.correlation == pytest.approx(0.0, abs=1e-6)
    assert not out.exists() and (tmp_path / "blind.pt.failed").exists()


def test_bf16_bound_separates_working_and_broken_logits() -> None:
    """The bf16 check on logits alone: bf16-rounded weights pass; batch-mean, zero-image and permuted-row
    logits fail, whatever their error relative to the spread."""
    model = leanvit.fuse(signal_weights_(leanvit.create_model("shvit_s1"), seed=2, img_size=SIDE)).eval()
    images = signal_images(4, SIDE, seed=12)
    with torch.no_grad():
        ref = model(images)
        bf16 = copy.deepcopy(model).to(torch.bfloat16)(images.to(torch.bfloat16)).float()
        blind = {"batch mean": ref.mean(0, keepdim=True).expand_as(ref),
                 "zero image": model(torch.zeros_like(images[:1])).expand_as(ref),
                 "permuted rows": ref[[1, 2, 3, 0]]}

    def check(out: torch.Tensor) -> verify_mod.LogitCheck:
        a = logit_agreement(ref, out)
        return verify_mod.LogitCheck(len(ref), a["max_abs_error"], a["relative_error"], a["top1_agreement"],
                                     a["input_correlation"])

    assert verify_mod.within_tolerance("bf16", check(bf16)), check(bf16)
    for name, out in blind.items():
        assert not verify_mod.within_tolerance("bf16", check(out)), (name, check(out))
        assert check(out).correlation <= 0.0, name


def test_cli_export_ok(tmp_path, capsys) -> None:
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


@pytest.mark.slow
def test_corrupted_export_fails_and_is_marked(tmp_path, monkeypatch, capsys) -> None:
    write = export_mod.write_artifact
    monkeypatch.setattr(export_mod, "write_artifact",
                        lambda fmt, model, *a, **k: write(fmt, _Shifted(model), *a, **k))
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
    monkeypatch.setattr(verify_mod, "FP32_ATOL", -1.0)  # nothing can pass
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


@pytest.mark.slow
def test_openvino_export_uses_split_qkv_form(tmp_path) -> None:
    # leanvit's OpenVINO IR has no per-head q/k/v split (leanvit.fuse(target="openvino")) and still verifies.
    side = SIDE + 8  # not a multiple of the windows: padded attention windows
    # Calibrated at the size it runs at: with 64-px BatchNorm statistics its 72-px logits reach ~1e7 (measured),
    # which no absolute bound can judge.
    model = signal_weights_(create_model(LEANVIT, img_size=side).eval(), seed=3, img_size=side)
    out = tmp_path / "m.xml"
    result = export_model(model, "openvino", out, img_size=side)
    assert result.verified and result.max_abs_diff <= FP32_ATOL  # 1.2e-4 measured (verify.py)
    ops = [op.get_type_name() for op in ov.Core().read_model(str(out)).get_ordered_ops()]
    heads = [a.num_heads for a in model.modules() if type(a).__name__ == "CascadedGroupAttention"]
    # The one-conv form needs a split per head (24 for efficientvit_m0) besides the per-layer input chunks.
    assert sum("Split" in t for t in ops) < sum(heads)


def test_export_options_object_and_keywords_agree(tmp_path) -> None:
    # The options object (what the CLI builds from its flags) and keyword overrides are one interface.
    options = ExportOptions(img_size=SIDE, verify=False)
    by_object = export_model(_model(TIMM), "torchscript", tmp_path / "a.pt", options)
    by_keywords = export_model(_model(TIMM), "torchscript", tmp_path / "b.pt", img_size=SIDE, verify=False)
    assert by_object.input_shape == by_keywords.input_shape == (1, 3, SIDE, SIDE)
    assert by_object.verified is None and by_keywords.verified is None
    with pytest.raises(TypeError):
        export_model(TIMM, "torchscript", tmp_path / "c.pt", options, image_size=SIDE)


@pytest.mark.slow
def test_export_flags_come_from_the_options_without_torch() -> None:
    # `leanvit export --help` builds its parser from ExportOptions alone: no torch import (instant help).
    code = ("import sys; from leanvit.cli import build_parser; build_parser('export').parse_args("
            "['export', 'm', '--format', 'onnx', '--output', 'm.onnx', '--no-verify', '--seed', '3']); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    args = build_parser("export").parse_args(["export", "m", "--format", "onnx", "--output", "m.onnx",
                                              "--no-verify", "--seed", "3", "--batch-size", "2"])
    assert export_options_from_args(args) == ExportOptions(verify=False, seed=3, batch_size=2)


@pytest.mark.openvino_host_isa
@pytest.mark.slow
def test_openvino_compiles_keep_the_signal_stack() -> None:
    # OpenVINO 2026.4's CPU plugin swaps the thread's alternate signal stack per compiled model; freed out of
    # order it left a freed one installed, and the next Python signal handler (SIGCHLD from a subprocess, with
    # torch's DataLoader handler) killed the process: the CI crash of 2026-12-02. compile_openvino restores it.
    code = """
import ctypes, faulthandler, gc, signal, subprocess, torch
from leanvit.deploy.capabilities import _SignalStack
from leanvit.deploy.writers import compile_openvino, to_openvino
faulthandler.enable()
libc = ctypes.CDLL(None)
def current():
    s = _SignalStack(); libc.sigaltstack(None, ctypes.byref(s)); return s.ss_sp, s.ss_size
before = current()
ov_model = to_openvino(torch.nn.Conv2d(3, 4, 3).eval(), torch.randn(1, 3, 8, 8))
a, b = compile_openvino(ov_model), compile_openvino(ov_model)
del a; gc.collect(); del b; gc.collect()
assert current() == before, (current(), before)
signal.signal(signal.SIGCHLD, lambda *args: None)
subprocess.run(["true"], check=True)
print("alive")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "alive" in proc.stdout, (proc.returncode, proc.stderr[-2000:])
