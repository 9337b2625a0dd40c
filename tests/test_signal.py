"""Test weights that carry signal (leanvit.models.signal) and the spread-relative logit comparison."""
from __future__ import annotations

import pytest
import timm
import torch

import leanvit
from leanvit.models.signal import logit_agreement, signal_images, signal_weights_

SIDE = 96


def _spread_over_magnitude(model: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        y = model.eval()(x)
    return (y.std(0).mean() / y.abs().mean()).item()


@pytest.mark.parametrize("name", ["shvit_s1", "efficientvit_m0"])
def test_logits_depend_on_the_input(name: str) -> None:
    x = torch.randn(8, 3, SIDE, SIDE)  # plain white noise, as most tests feed
    model = signal_weights_(leanvit.create_model(name), img_size=SIDE)
    assert _spread_over_magnitude(model, x) > 0.3
    assert _spread_over_magnitude(model, signal_images(8, SIDE, seed=1)) > 0.3
    # every BatchNorm was calibrated: its running statistics are not the identity any more
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert all(not torch.allclose(m.running_var, torch.ones_like(m.running_var)) for m in bns)


def test_seeded_restores_mode_and_momentum_and_fits_timm_and_fused_models() -> None:
    torch.manual_seed(1)
    a = signal_weights_(leanvit.create_model("efficientvit_m0"), seed=3, img_size=64, batches=2, batch_size=4)
    torch.manual_seed(2)
    b = leanvit.create_model("efficientvit_m0").train()
    signal_weights_(b, seed=3, img_size=64, batches=2, batch_size=4)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # the seed alone decides the weights
    assert b.training and all(m.training for m in b.modules())
    assert all(m.momentum == 0.1 for m in b.modules() if isinstance(m, torch.nn.BatchNorm2d))
    c = signal_weights_(leanvit.create_model("efficientvit_m0").eval(), seed=4, img_size=64, batches=2, batch_size=4)
    assert not torch.equal(c.head.linear.weight, a.head.linear.weight)
    assert not c.training  # a model built in eval mode stays in it

    timm_model = signal_weights_(timm.create_model("mobilenetv3_small_050"), img_size=64)
    assert _spread_over_magnitude(timm_model, signal_images(4, 64)) > 0.3
    fused = signal_weights_(leanvit.fuse(a), img_size=64)  # no BatchNorm left: weights redrawn only
    with torch.no_grad():
        assert torch.isfinite(fused(signal_images(2, 64))).all()


def test_logit_agreement() -> None:
    ref = torch.tensor([[0.0, 2.0, 0.0], [2.0, 0.0, 4.0]])
    out = ref + torch.tensor([[0.0, 0.1, 0.0], [3.0, 0.0, 0.0]])  # the second row's top class changes
    stats = logit_agreement(ref, out.numpy())
    spread = ref.double().std(0).mean().item()  # std over the 2 inputs, averaged over the 3 classes
    assert stats["max_abs_error"] == pytest.approx(3.0) and stats["spread"] == pytest.approx(spread)
    assert stats["relative_error"] == pytest.approx(3.0 / spread) and stats["top1_agreement"] == 0.5
    assert logit_agreement(ref, ref)["relative_error"] == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        logit_agreement(ref[:1], out[:1])
    with pytest.raises(ValueError, match="one shape"):
        logit_agreement(ref, out[:, :2])
