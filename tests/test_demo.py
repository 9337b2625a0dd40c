"""`leanvit demo`'s own logic: the fastest exact route per model, each family's measured order against the papers',
the report and the two-panel plot. (The command end to end: tests/test_bench.py::test_cli_demo.)"""
from __future__ import annotations

import pytest

from leanvit.bench.demo import PAPERS_ROUTE, family_rankings, fastest_exact
from leanvit.bench.report import plot_speed_accuracy_panels
from leanvit.deploy.verify import FP32_ATOL


def _rec(model: str, backend: str, throughput: float, family: str = "EfficientViT-M (leanvit)", **kw) -> dict:
    return dict(dict(model=model, backend=backend, precision="fp32", throughput=throughput, family=family,
                     source="leanvit", max_abs_diff=1e-5, error=None, top1=70.0, batch_size=16, threads=1,
                     channels_last=False, jit_optimize=False), **kw)


def test_fastest_exact_route_per_model() -> None:
    records = [_rec("efficientvit_m0", "jit", 1000.0), _rec("efficientvit_m0", "openvino", 1500.0),
               _rec("efficientvit_m1", "jit", 800.0),
               _rec("efficientvit_m1", "openvino", 2000.0, max_abs_diff=10 * FP32_ATOL),  # fast but not exact
               _rec("efficientvit_m2", "openvino", None, error="RuntimeError: failed")]
    picked = fastest_exact(records)
    assert [(r["model"], r["backend"]) for r in picked] == [("efficientvit_m0", "openvino"), ("efficientvit_m1", "jit")]


@pytest.mark.parametrize("m1_speed,agrees", [(900.0, True), (1100.0, False)])
def test_family_rankings_against_the_papers_order(m1_speed: float, agrees: bool) -> None:
    """The papers' order is fewest MACs fastest (m0 79, m1 167, m2 201 MMACs); a measured swap is reported."""
    records = [_rec("efficientvit_m2", PAPERS_ROUTE, 700.0), _rec("efficientvit_m0", PAPERS_ROUTE, 1000.0),
               _rec("efficientvit_m1", PAPERS_ROUTE, m1_speed, unsteady=True),
               _rec("shvit_s1", PAPERS_ROUTE, 500.0, family="SHViT (leanvit)"),  # alone in its family: no ranking
               _rec("levit_128s", PAPERS_ROUTE, 5000.0, family="LeViT", source="timm")]  # baselines are not ranked
    row, = family_rankings(records)
    assert row["family"] == "EfficientViT-M (leanvit)"
    assert row["papers"] == ["efficientvit_m0", "efficientvit_m1", "efficientvit_m2"]
    assert row["agrees"] is agrees and row["unsteady"] == ["efficientvit_m1"]
    assert row["measured"][0] == ("efficientvit_m0" if agrees else "efficientvit_m1")


def test_two_panel_plot_with_round_ranges(tmp_path) -> None:
    import matplotlib.image

    papers = [_rec("efficientvit_m0", "jit", 1000.0, round_medians_ms=[15.0, 16.0, 17.0], unsteady=True),
              _rec("efficientvit_m1", "jit", 800.0)]
    fastest = [_rec("efficientvit_m0", "openvino", 1500.0), _rec("efficientvit_m1", "jit", 800.0)]
    path = plot_speed_accuracy_panels({"papers": papers, "fastest": fastest}, tmp_path / "speed.png", "demo",
                                      label_routes=True)
    img = matplotlib.image.imread(path)
    assert img.shape[1] > 1.8 * img.shape[0]  # two panels side by side


def test_rankings_use_the_fastest_round() -> None:
    """Load only adds time: a model whose rounds were disturbed ranks by its least disturbed round, not its median."""
    records = [_rec("efficientvit_m0", PAPERS_ROUTE, 1000.0, best_round_throughput=1100.0),
               _rec("efficientvit_m1", PAPERS_ROUTE, 950.0, best_round_throughput=1050.0),
               # the median says m2 beats m1; its fastest round (900) does not
               _rec("efficientvit_m2", PAPERS_ROUTE, 990.0, best_round_throughput=900.0)]
    row, = family_rankings(records)
    assert row["measured"] == ["efficientvit_m0", "efficientvit_m1", "efficientvit_m2"] and row["agrees"]
    assert family_rankings([dict(r, best_round_throughput=None) for r in records])[0]["agrees"] is False
