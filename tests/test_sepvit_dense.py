"""SepViT's dense backbone is the official dense network (liwei109/SepViT detection/ and segmentation/ sepvit.py).

The oracle (tests/helpers/official_sepvit_dense.py) is written from the official dense code, not from leanvit's
classes. Random weights in its (official) key layout, saved as an mmdet checkpoint (``backbone.*``, the
classifier's unused ``norm`` / ``head`` included), are loaded by leanvit's dense loader; every stage output must
equal the oracle's to fp32 rounding, at sizes where maps fit one window (192, 224) and a detection size
(512x768, padded windows).
"""
from __future__ import annotations

import pytest
import torch

from leanvit.dense import create_backbone
from leanvit.models import signal_images, signal_weights_

from conftest import assert_logits_close, fast_first
from helpers.official_sepvit_dense import OFFICIAL_DENSE_VARIANTS, OfficialDenseSepViT

# Every variant at two classification sizes; the detection size (512x768: padded windows, a 2-D window grid) on
# SepViT-T, whose blocks, padding and window grid are S's and B's code with other widths and depths (B at 512x768
# cost 18 s of the suite).
CASES = [(name, size) for name in OFFICIAL_DENSE_VARIANTS for size in ((192, 192), (224, 224))] + [
    ("sepvit_t", (512, 768))]


def _pair(name: str, seed: int = 0) -> tuple[OfficialDenseSepViT, torch.nn.Module]:
    official = signal_weights_(OfficialDenseSepViT(name), seed=seed, img_size=64).eval()
    checkpoint = {"state_dict": {f"backbone.{k}": v for k, v in official.state_dict().items()}}
    return official, create_backbone(name, checkpoint=checkpoint["state_dict"]).eval()


@pytest.mark.parametrize("case", fast_first(CASES, [("sepvit_t", (192, 192)), ("sepvit_t", (224, 224))]),
                         ids=[f"{n}-{h}x{w}" for n, (h, w) in CASES])
def test_dense_backbone_equals_the_official_dense_forward(case: tuple[str, tuple[int, int]]) -> None:
    name, size = case
    official, backbone = _pair(name)
    images = signal_images(2, size, seed=size[0])
    with torch.no_grad():
        want, got = official(images), list(backbone(images).values())
    assert [g.shape for g in got] == [w.shape for w in want]
    for stage, (w, g) in enumerate(zip(want, got)):
        error = (w - g).abs().max().item()
        assert error <= 1e-4 * w.abs().max().item(), (stage, error)  # relative to the map's magnitude
        # and against the part that depends on the input (2 images): 1.3e-4 at most with AVX2 kernels
        # (make test-avx2, 512x768), 6-8 before the dense form was fixed
        assert_logits_close(w, g, rel=1e-3)


def test_the_two_official_differences_each_matter() -> None:
    """Both corrections change the output: the per-level norm on the main path (stages 2-4) and the token /
    pointwise step of one-window blocks (at 224 px stage 4's 7x7 map is one window). Undoing either one makes
    the backbone differ from the official network by far more than rounding."""
    official, backbone = _pair("sepvit_t", seed=1)
    images = signal_images(2, 224, seed=7)
    with torch.no_grad():
        want = official(images)
        model = backbone.model
        model.dense_form = False  # norms back off the main path (still applied to the outputs)
        off_path = list(backbone(images).values())
        model.dense_form = True
        for block in model.modules():
            if hasattr(block, "one_window_pointwise"):
                block.one_window_pointwise = False
        plain_one_window = list(backbone(images).values())
    for broken in (off_path, plain_one_window):
        with pytest.raises(AssertionError):
            assert_logits_close(want[3], broken[3], rel=1e-2)
