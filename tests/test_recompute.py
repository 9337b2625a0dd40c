"""Memory-efficient training (leanvit.layers.recompute) and the CPU channels-last forward."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.utils._python_dispatch

import leanvit
from leanvit.layers import recompute
from leanvit.models.signal import signal_images, signal_weights_
from conftest import assert_logits_close


def _step(model: torch.nn.Module, x: torch.Tensor, amp: bool = False) -> tuple[torch.Tensor, dict, dict]:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = model(x)
    out.float().pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    return out.detach(), grads, buffers


def _pair(name: str, channels_last: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    model = signal_weights_(leanvit.create_model(name, num_classes=7), img_size=64).train()
    model.prefers_channels_last = channels_last
    plain = copy.deepcopy(model)
    plain.set_recompute_norm_activations(False)
    return model, plain


@pytest.mark.parametrize("name", ["shvit_s1", "efficientvit_m0"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_recompute_gives_identical_gradients_and_statistics(name: str, channels_last: bool) -> None:
    model, plain = _pair(name, channels_last)
    x = torch.randn(3, 3, 64, 80)
    out_a, grads_a, bufs_a = _step(model, x)
    out_b, grads_b, bufs_b = _step(plain, x)
    assert torch.equal(out_a, out_b)
    assert grads_a.keys() == grads_b.keys()
    for key in grads_a:
        assert torch.equal(grads_a[key], grads_b[key]), key
    for key in bufs_a:
        assert torch.equal(bufs_a[key], bufs_b[key]), key


class _NormBackwardLayouts(torch.utils._python_dispatch.TorchDispatchMode):
    """Records (gradient layout, input layout) of every batch-norm backward whose maps have distinct layouts."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - dispatch protocol
        if func is torch.ops.aten.native_batch_norm_backward.default:
            grad, x = args[0], args[1]
            if x.dim() == 4 and recompute._layout_of(x) is not None:
                self.seen.append((str(recompute._layout_of(grad)), str(recompute._layout_of(x)), tuple(x.shape)))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("recompute_on", [True, False])
@pytest.mark.parametrize("hook", [True, False])
def test_batch_norm_backward_gets_its_input_layout(recompute_on: bool, hook: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """EfficientViT-M's window crops and channel slices build gradients in the other layout than their activations;
    ATen's batch-norm backward on mixed layouts is 5-10x slower, so each norm's gradient is given its input's layout
    first. The control without ``grad_in_own_layout`` shows that this model and torch do produce mixed layouts.
    Values are covered by the equality tests."""
    if not hook:
        monkeypatch.setattr(recompute, "grad_in_own_layout", lambda out: out)
    model = leanvit.create_model("efficientvit_m0", num_classes=7).train()
    model.prefers_channels_last = True
    model.set_recompute_norm_activations(recompute_on)
    out = model(torch.randn(2, 3, 128, 128))
    with _NormBackwardLayouts() as mode:
        out.sum().backward()
    assert len(mode.seen) > 20
    mixed = [s for s in mode.seen if s[0] != s[1]]
    assert (not mixed) if hook else len(mixed) > 5, mixed


@pytest.mark.parametrize("name", ["shvit_s1", "efficientvit_m0"])
@pytest.mark.parametrize("batch_layout", ["nchw", "nhwc"])
def test_recompute_stores_the_stem_conv_that_changes_layout(
    name: str, batch_layout: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An NHWC model: its first conv reads an NCHW batch and writes NHWC, which is not cheap, so its output is
    stored; given an NHWC batch the same conv is cheap and rebuilt. Gradients, statistics and a second backward
    (retain_graph) are bit-identical to the plain model's either way."""
    model, plain = _pair(name, True)
    for m in (model, plain):
        m.set_channels_last(True)
    x = torch.randn(3, 3, 224, 224)  # the stem's first conv output over MIN_REBUILT_CONV_VALUES
    if batch_layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    rebuilt_convs = []
    register = recompute.RecomputeNormActivations.register_conv
    monkeypatch.setattr(recompute.RecomputeNormActivations, "register_conv",
                        lambda self, y, x, conv, cl: rebuilt_convs.append(conv) or register(self, y, x, conv, cl))
    out_a = model(x)
    stem_conv = next(m for m in model.patch_embed.modules() if isinstance(m, torch.nn.Conv2d))
    assert any(c is stem_conv for c in rebuilt_convs) == (batch_layout == "nhwc")
    out_b = plain(x)
    assert torch.equal(out_a, out_b)
    for loss in (out_a.pow(2).sum(), out_b.pow(2).sum()):
        loss.backward(retain_graph=True)
        loss.backward()
    for (n, a), (_, b) in zip(model.named_parameters(), plain.named_parameters()):
        assert torch.equal(a.grad, b.grad), n
    for (n, a), (_, b) in zip(model.named_buffers(), plain.named_buffers()):
        assert torch.equal(a, b), n


def test_recompute_under_bf16_autocast_matches() -> None:
    model, plain = _pair("shvit_s1", False)
    x = torch.randn(2, 3, 96, 96)
    _, grads_a, _ = _step(model, x, amp=True)
    _, grads_b, _ = _step(plain, x, amp=True)
    for key in grads_a:
        assert torch.equal(grads_a[key], grads_b[key]), key


def _saved_bytes(model: torch.nn.Module, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """Bytes of activations autograd keeps after one training forward, and how many saves were recipes."""
    stores: dict[int, int] = {}
    recipes = 0
    original = recompute.RecomputeNormActivations._pack
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def counting_pack(self, t):  # noqa: ANN001, ANN202 - mirrors the hook signature
        nonlocal recipes
        packed = original(self, t)
        if isinstance(packed, torch.Tensor):
            key = packed.untyped_storage().data_ptr()
            if key not in params:
                stores[key] = packed.untyped_storage().nbytes()
        else:
            recipes += 1
        return packed

    monkeypatch.setattr(recompute.RecomputeNormActivations, "_pack", counting_pack)
    # the plain model must go through the same hook to be counted: enable it but register nothing
    model(x)
    monkeypatch.undo()
    return sum(stores.values()), recipes


@pytest.mark.parametrize("name", ["shvit_s1", "efficientvit_m0"])
def test_recompute_keeps_less(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = _pair(name, False)
    x = torch.randn(2, 3, 224, 224)
    kept, recipes = _saved_bytes(model, x, monkeypatch)
    monkeypatch.setattr(recompute.RecomputeNormActivations, "_recipe_for", lambda self, t: None)
    stored, none = _saved_bytes(model, x, monkeypatch)
    assert recipes > 10 and none == 0
    # measured at 224x224, batch 64: 734 -> 510 MB (shvit_s1), 469 -> 350 MB (efficientvit_m0)
    assert kept < 0.8 * stored, (kept, stored)


def test_recompute_with_retain_graph_grad_checkpointing_and_intermediates() -> None:
    model, plain = _pair("efficientvit_m0", True)
    x = torch.randn(2, 3, 64, 64)
    for m in (model, plain):
        loss = m(x).pow(2).sum()
        loss.backward(retain_graph=True)
        loss.backward()  # the rebuilt activations are rebuilt again for a second backward
    for (n, a), (_, b) in zip(model.named_parameters(), plain.named_parameters()):
        assert torch.equal(a.grad, b.grad), n
    model.zero_grad(), plain.zero_grad()
    model.set_grad_checkpointing(True)
    final, inter = model.forward_intermediates(x)
    (final.sum() + sum(t.sum() for t in inter)).backward()
    final_p, inter_p = plain.forward_intermediates(x)
    (final_p.sum() + sum(t.sum() for t in inter_p)).backward()
    for (n, a), (_, b) in zip(model.named_parameters(), plain.named_parameters()):
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-5), n


def test_cpu_forward_is_channels_last_and_equal() -> None:
    model = signal_weights_(leanvit.create_model("shvit_s1"), img_size=(128, 160)).eval()
    x = signal_images(2, (128, 160), seed=1)
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 64, 64)).is_contiguous()  # tiny inputs stay NCHW
        out = model(x)
        inter = model.forward_intermediates(x, intermediates_only=True)
        model.prefers_channels_last = False
        ref = model(x)
        ref_inter = model.forward_intermediates(x, intermediates_only=True)
    assert_logits_close(ref, out, rel=1e-4)  # the same math in another memory order
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in inter)
    assert all(t.is_contiguous() for t in ref_inter)
    assert x.is_contiguous()  # the caller's tensor is untouched


def test_double_backward_is_refused_with_the_fix() -> None:
    model, plain = _pair("shvit_s1", False)
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    with pytest.raises(RuntimeError, match="set_recompute_norm_activations"):
        torch.autograd.grad(model(x).sum(), x, create_graph=True)
    (g,) = torch.autograd.grad(plain(x).sum(), x, create_graph=True)  # the documented fix works
    g.pow(2).sum().backward()
