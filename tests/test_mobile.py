"""Mobile deploy forms and formats: the exact rewrites, ExecuTorch (.pte run here), Core ML (conversion).

The rewrites (``leanvit.layers.mobile``, ``fuse(target="executorch" | "coreml")``) are checked against the
torch form on :func:`~leanvit.models.signal_weights_` models, at sizes that exercise padded and sliced
attention windows. ExecuTorch artifacts are run with ExecuTorch's own runtime and must be fully delegated.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import leanvit
from leanvit.cli import main
from leanvit.deploy.export import export_model
from leanvit.deploy.int8_storage import int8_weight_storage
from leanvit.deploy.mobile import lower_to_executorch
from leanvit.deploy.runtime import load_artifact
from leanvit.layers import ChannelLayerNorm, SpatialGroupNorm, explicit_attention, mobile_norm
from leanvit.models import create_model, signal_images, signal_weights_
from leanvit.models.sepvit import SepViTBlock


def test_norm_rewrites_equal_torch_norms() -> None:
    torch.manual_seed(0)
    gn = nn.GroupNorm(1, 12)
    ln = nn.LayerNorm(12, eps=1e-6)
    for norm in (gn, ln):
        nn.init.normal_(norm.weight)
        nn.init.normal_(norm.bias)
    x = torch.randn(3, 12, 5, 7) * 4 + 2  # a non-zero mean: the two-pass variance must centre first
    assert isinstance(mobile_norm(gn), SpatialGroupNorm) and isinstance(mobile_norm(ln), ChannelLayerNorm)
    torch.testing.assert_close(mobile_norm(gn)(x), gn(x), atol=1e-5, rtol=1e-5)
    tokens = x.permute(0, 2, 3, 1)
    torch.testing.assert_close(mobile_norm(ln)(tokens), ln(tokens), atol=1e-5, rtol=1e-5)
    assert mobile_norm(nn.GroupNorm(2, 12)) is None and mobile_norm(nn.BatchNorm2d(3)) is None
    with pytest.raises(ValueError, match="one group"):
        SpatialGroupNorm.from_group_norm(nn.GroupNorm(3, 12))


def test_explicit_attention_equals_sdpa() -> None:
    q, k, v = torch.randn(4, 9, 8), torch.randn(4, 11, 8), torch.randn(4, 11, 5)
    bias = torch.randn(9, 11)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.3)
    torch.testing.assert_close(explicit_attention(q, k.transpose(1, 2), v, bias, scale=0.3), expected)


@pytest.mark.parametrize("name,side", [("shvit_s1", 64), ("efficientvit_m0", 64), ("efficientvit_m0", 224),
                                       ("efficientvit_m0", 72), ("sepvit_lite", 224)])
def test_mobile_form_is_exact(name: str, side: int) -> None:
    # 224 px: EfficientViT-M's 14x14 stage is cut into sliced windows; 72 px: padded windows; SepViT at its
    # native size has per-window tokens and the pointwise attention.
    model = signal_weights_(create_model(name, img_size=side).eval(), seed=3, img_size=side)
    reference, mobile = leanvit.fuse(model), leanvit.fuse(model, target="executorch")
    kinds = {type(m).__name__ for m in mobile.modules()}
    assert not kinds & {"GroupNorm", "LayerNorm", "SingleHeadAttention", "CascadedGroupAttention"}, kinds
    x = signal_images(2, side, seed=1)
    with torch.no_grad():
        ref, out = reference(x), mobile(x)
    assert ref.std(0).mean() > 0.05  # logits that depend on the input
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=1e-4)


def _token_block(mode: str) -> nn.Module:
    """One SepViT block with pointwise attention over 2x2 windows of 7 and non-zero tokens, in a container
    (``fuse`` replaces children)."""
    torch.manual_seed(0)
    block = SepViTBlock(32, 2, 7, pointwise=True, token_grid=(2, 2), window_token=mode)
    if block.window_token is not None:
        nn.init.normal_(block.window_token)
    return nn.Sequential(block).eval()


@pytest.mark.parametrize("mode,side,batch", [("per_window", 14, 1), ("per_window", 14, 2), ("shared", 10, 2),
                                             ("zero", 14, 1)])
def test_sepvit_mobile_tokens_need_no_expand(mode: str, side: int, batch: int) -> None:
    # XNNPACK lowers no expand_copy: sepvit_lite's per-window tokens (a no-op expand at batch 1) kept 6 ops outside
    # the delegate. The mobile block concatenates tokens of the windows' shape as they are and broadcasts the
    # others (batch 2, shared / zero tokens; 10 px: padded windows) with an add.
    model = _token_block(mode)
    x = torch.randn(batch, side, side, 32)
    mobile = leanvit.fuse(model, target="executorch")

    def expands(module: nn.Module) -> list[str]:
        with torch.no_grad():
            graph = torch.export.export(module, (x,)).graph
        return [str(node.target) for node in graph.nodes if "expand" in str(node.target)]

    assert expands(model) and not expands(mobile), expands(mobile)
    with torch.no_grad():
        torch.testing.assert_close(mobile(x), model(x), atol=2e-5, rtol=1e-5)


@pytest.mark.slow
def test_executorch_export_is_delegated_and_matches(tmp_path) -> None:
    # One model (lowering costs ~25 s): EfficientViT-M0, whose torch form left 157 ops of 5 kinds outside the
    # delegate (SHViT's and SepViT's mobile forms are checked for exactness above). At 224 px its 14x14 first stage
    # is four 7x7 windows, whose merge used chunk(4): exported as split_with_sizes_copy, it stayed outside XNNPACK
    # (1 op of 567 for efficientvit_m0 and m4); the mobile form puts them back from static batch slices.
    pytest.importorskip("executorch", reason="pip install 'leanvit[mobile]'")
    model = signal_weights_(create_model("efficientvit_m0", img_size=224).eval(), seed=3, img_size=224)
    out = tmp_path / "m0.pte"
    result = export_model(model, "executorch", out, img_size=224)
    assert result.verified and result.max_abs_diff <= 1e-4, result.summary()
    assert "every operator delegated to XNNPACK" in result.exporter, result.exporter
    runtime = load_artifact(out)
    x = signal_images(1, 224, seed=5)
    with torch.no_grad():
        expected = leanvit.fuse(model)(x)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(runtime(x), expected, atol=1e-4, rtol=1e-4)
    # the float program is what the int8 storage check must refuse (tests/test_int8_storage.py reads int8 ones)
    storage = int8_weight_storage(out)
    assert storage.layers > 0 and storage.share == 0, storage.summary()
    # SepViT's window tokens broadcast over batch and windows (shared tokens, batch 2) lower too: one block, ~5 s
    tokens = lower_to_executorch(leanvit.fuse(_token_block("shared"), target="executorch"), torch.randn(2, 10, 10, 32))
    assert tokens.describe() == "every operator delegated to XNNPACK", tokens.describe()


@pytest.mark.slow
def test_coreml_conversion_and_cli(tmp_path, capsys) -> None:
    pytest.importorskip("coremltools", reason="pip install 'leanvit[mobile]'")
    out = tmp_path / "m0.mlpackage"
    assert main(["export", "efficientvit_m0", "--format", "coreml", "--output", str(out), "--img-size", "64"]) == 0
    line = capsys.readouterr().out
    assert "mlprogram iOS16 fp16" in line and "all ops in the Neural Engine set" in line, line
    assert (out / "Manifest.json").is_file()
    with pytest.raises(ValueError, match="macOS"):
        load_artifact(out)
    assert main(["export", "efficientvit_m0", "--format", "coreml", "--output", str(tmp_path / "x.mlpackage"),
                 "--precision", "bf16"]) == 1
    assert "coreml exports in fp16 or fp32" in capsys.readouterr().err
