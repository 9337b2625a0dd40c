"""Inference fusion: exact, BatchNorm-free, traceable and exportable."""
from __future__ import annotations

import pytest
import torch

import leanvit
from leanvit.models.signal import signal_images, signal_weights_
from conftest import CONV_FAMILY_MODELS, assert_logits_close, fast_first


@pytest.mark.parametrize("name", fast_first(CONV_FAMILY_MODELS, ["shvit_s1", "efficientvit_m0"]))
def test_fused_matches_unfused_and_exports(name):
    model = signal_weights_(leanvit.create_model(name)).eval()
    size = leanvit.get_config(name).img_size
    x = signal_images(4, size, seed=1)
    fused = leanvit.fuse(model)
    assert model.training is False and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    with torch.no_grad():
        ref = model(x)
        # measured: 1.6e-5 (shvit_s1) to 6.8e-5 (efficientvit_m5) of the spread, float32 rounding
        assert_logits_close(ref, fused(x), rel=3e-4)
        traced = torch.jit.trace(fused, x)
        assert_logits_close(ref, traced(x), rel=3e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shvit_s1", "efficientvit_m1"])
def test_fused_torch_export(name):
    # torch.export costs ~10 s a model on 2 cores: one per family (the code paths are shared within a family).
    model = signal_weights_(leanvit.create_model(name)).eval()
    fused = leanvit.fuse(model)
    x = signal_images(2, 224, seed=2)
    exported = torch.export.export(fused, (x,))
    with torch.no_grad():
        assert_logits_close(model(x), exported.module()(x), rel=3e-4)


def test_shvit_depthwise_residuals_fold_into_kernels():
    model = signal_weights_(leanvit.create_model("shvit_s1")).eval()
    fused = leanvit.fuse(model)
    # the block's residual depthwise conv became a single conv (no Residual wrapper, no add)
    assert isinstance(fused.stages[0].blocks[0].conv, torch.nn.Conv2d)
    x = torch.randn(4, 128, 14, 14)
    with torch.no_grad():
        assert_logits_close(model.stages[0].blocks[0].conv(x), fused.stages[0].blocks[0].conv(x), rel=1e-4)


def test_fuse_leaves_the_original_alone():
    model = leanvit.create_model("efficientvit_m0").train()
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    leanvit.fuse(model)
    assert model.training and sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == n_bn


# --- per-runtime deploy forms ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def m0():
    return signal_weights_(leanvit.create_model("efficientvit_m0")).eval()


# native (2x2 windows in stage 1, sliced); non-square, padded windows; 6x6 windows (the permute fallback)
@pytest.mark.parametrize("shape", fast_first([(2, 3, 224, 224), (2, 3, 160, 225), (2, 3, 672, 672)], [(2, 3, 160, 225)]))
def test_openvino_target_splits_qkv_and_matches(m0, shape):
    from leanvit.layers import WindowedAttention
    from leanvit.models.efficientvit_m import CascadedGroupAttention
    from leanvit.models.efficientvit_m_deploy import (
        MobileWindowAttention, SlicedWindowAttention, SplitQKVCascadedAttention,
    )

    fused = leanvit.fuse(m0, target="openvino")
    attns = [m for m in fused.modules() if isinstance(m, SplitQKVCascadedAttention)]
    windows = [m for m in fused.modules() if isinstance(m, WindowedAttention)]
    assert len(windows) == 6 and all(type(w) is SlicedWindowAttention for w in windows)
    assert not any(isinstance(w, MobileWindowAttention) for w in windows)  # OpenVINO keeps its timed chunk
    assert fused.fuse_target == "openvino"
    assert len(attns) == sum(isinstance(m, CascadedGroupAttention) for m in m0.modules()) == 6
    assert not any(isinstance(m, CascadedGroupAttention) for m in fused.modules())
    for a in attns:  # no qkv conv left to split on a map: the heads project token-major (Linear), q, k, v sliced
        qkv = 2 * a.key_dim + a.val_dim
        assert not any(isinstance(c, torch.nn.Conv2d) and c.out_channels == qkv for c in a.modules())
    x = signal_images(shape[0], shape[2:], seed=3)
    with torch.no_grad():
        ref = m0(x)
        assert_logits_close(ref, fused(x), rel=3e-4)
        assert_logits_close(ref, torch.jit.trace(fused, x)(x), rel=3e-4)


@pytest.mark.parametrize("target", ["torch", "onnx"])
def test_torch_and_onnx_targets_keep_one_qkv_conv(m0, target):
    from leanvit.models.efficientvit_m import CascadedGroupAttention
    from leanvit.models.efficientvit_m_deploy import SlicedWindowAttention

    fused = leanvit.fuse(m0, target=target)
    assert sum(isinstance(m, CascadedGroupAttention) for m in fused.modules()) == 6
    assert not any(isinstance(m, SlicedWindowAttention) for m in fused.modules())
    assert fused.fuse_target == target


def test_bad_fuse_target(m0):
    from leanvit.deploy.routes import target_for

    with pytest.raises(ValueError, match="'torch', 'openvino', 'onnx'"):
        leanvit.fuse(m0, target="tensorrt")
    assert [target_for(r) for r in ("openvino", "onnxruntime", "onnx", "jit", "torchscript", "executorch", "coreml",
                                    "pytorch")] == ["openvino", "onnx", "onnx", "torch", "torch", "executorch", "coreml",
                                                    "torch"]
