"""`leanvit demo`'s own logic: the fastest exact route per model, each family's measured order against the papers',
the report and the two-panel plot; what its set-up and clock rely on (OpenVINO conversion: OpenVINO's own graph
without the trace check, no telemetry threads); benchmarks/deploy_speed.py's opt-in roofline. (The command end to
end: tests/test_bench.py::test_cli_demo.)"""
from __future__ import annotations

import collections
import json

import pytest
import torch

from leanvit.bench.demo import PAPERS_ROUTE, family_rankings, fastest_exact
from leanvit.bench.report import plot_speed_accuracy_panels
from leanvit.deploy.verify import FP32_ATOL
from leanvit.deploy.writers import compile_openvino, to_openvino
from helpers.scripts import benchmark_script


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


# --- what the demo's set-up and clock rely on: OpenVINO conversion (leanvit.deploy.writers.to_openvino) ---------------

class _Attention(torch.nn.Module):
    """A one-head attention that OpenVINO's own conversion folds to fewer shape ops than a pre-traced module's."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = torch.nn.Conv2d(8, 24, 1), torch.nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(x).split([8, 8, 8], dim=1)
        attn = (q.flatten(2).transpose(1, 2) * 0.35) @ k.flatten(2)
        return self.proj((v.flatten(2) @ attn.softmax(dim=-1).transpose(1, 2)).view(B, C, H, W))


def _op_types(ov_model) -> collections.Counter:
    return collections.Counter(op.get_type_name() for op in ov_model.get_ops())


def test_openvino_conversion_is_openvinos_own_graph() -> None:
    """to_openvino skips torch.jit.trace's check (half the demo's conversion time) but converts the graph OpenVINO's
    own ``convert_model(module)`` makes: a module traced beforehand converts to another one (here one more ShapeOf;
    on EfficientViT-M no ScaledDotProductAttention fusion)."""
    ov = pytest.importorskip("openvino")
    model, x = _Attention().eval(), torch.randn(2, 8, 7, 7)
    with torch.no_grad():
        own = ov.convert_model(model, example_input=x, input=[ov.PartialShape(list(x.shape))])
        pretraced = ov.convert_model(torch.jit.trace(model, x, check_trace=False), example_input=x,
                                     input=[ov.PartialShape(list(x.shape))])
        ours = to_openvino(model, x)
        expected = model(x)
    assert _op_types(ours) == _op_types(own) != _op_types(pretraced)
    out = compile_openvino(ours, {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request().infer({0: x.numpy()})[0]
    assert torch.allclose(torch.from_numpy(out.copy()), expected, atol=1e-5)


def test_openvino_conversion_sends_no_telemetry(monkeypatch) -> None:
    """OpenVINO's usage telemetry queues events on sender threads whose CPU time the demo's process clock would charge
    to the timed calls (0.8 s of system time per conversion on the 2-core EPYC); to_openvino pauses it and gives the
    user's consent back."""
    pytest.importorskip("openvino_telemetry")
    from openvino.tools.ovc.telemetry_utils import init_ovc_telemetry

    telemetry = init_ovc_telemetry()
    sent: list = []
    monkeypatch.setattr(telemetry, "consent", True)
    monkeypatch.setattr(telemetry.sender, "send", lambda backend, message: sent.append(message))
    telemetry.send_event("ovc", "probe", "consent on")  # the probe reaches the sender: the test can see a send
    assert len(sent) == 1
    to_openvino(torch.nn.Conv2d(3, 4, 3).eval(), torch.randn(1, 3, 8, 8))
    assert len(sent) == 1 and telemetry.consent is True


# --- benchmarks/deploy_speed.py: the roofline section is opt-in (--roofline) ---------------------------------------

@pytest.fixture()
def deploy_speed():
    with benchmark_script("deploy_speed") as module:
        yield module


def test_deploy_speed_roofline_is_opt_in(deploy_speed, monkeypatch, capsys, tmp_path) -> None:
    """Without --roofline no peak is measured or shown; with it, the peaks of leanvit.bench.roofline.cpu_peaks (an
    emulated bf16 by its ratio, never as a roof) give each path's fraction and the ceilings (fp32 where bf16 is not
    native)."""
    from leanvit.bench.roofline import RooflinePeaks

    measured: list[float] = []

    def fake_peaks(seconds: float) -> RooflinePeaks:
        measured.append(seconds)
        return RooflinePeaks({"fp32": 50e9, "int8": 200e9}, {"bf16": 0.01})

    def fake_paths(name: str, batch: int, with_compile: bool, with_torch_form: bool):
        paths = [deploy_speed.RunPath(label, lib, "fp32", None, None, batch) for label, lib in
                 [("leanvit jit fp32", "leanvit"), ("leanvit openvino fp32", "leanvit"), ("timm jit fp32", "timm"),
                  ("timm openvino default (fp32)", "timm")]]
        return paths, 100e6  # MACs per image

    def fake_race(paths, rounds: int, seconds: float) -> None:
        for p, ms in zip(paths, (100.0, 50.0, 125.0, 80.0)):  # 160, 320, 128, 200 img/s at batch 16
            p.times.append(ms / 1e3)

    monkeypatch.setattr(deploy_speed, "cpu_peaks", fake_peaks)
    monkeypatch.setattr(deploy_speed, "_paths", fake_paths)
    monkeypatch.setattr(deploy_speed, "race", fake_race)
    deploy_speed.main(["shvit_s1", "--json", str(tmp_path / "plain.json")])
    out = capsys.readouterr().out
    assert measured == [] and "peak" not in out and "ceiling" not in out
    plain = json.loads((tmp_path / "plain.json").read_text())
    assert plain["peaks"] is None and plain["results"][0]["fastest"]["ceiling"] is None

    deploy_speed.main(["shvit_s1", "--roofline", "--json", str(tmp_path / "roof.json")])
    out = capsys.readouterr().out
    assert measured == [1.0]
    assert "int8 200.0 GMAC/s" in out and "bf16 not native here" in out and "ceiling fp32 / fp32" in out
    assert "| 64.0% / 40.0% | 3.91x / 2.50x |" in out  # 320 img/s x 100 MMACs / 50 GMAC/s; 50e9 / (1e8 x 128)
    roof = json.loads((tmp_path / "roof.json").read_text())
    assert roof["peaks"]["native"] == {"fp32": 50e9, "int8": 200e9}
    assert roof["results"][0]["fastest"]["ceiling"] == pytest.approx(2.5)


def test_deploy_speed_exact_table_is_fp32_only(deploy_speed, monkeypatch, capsys, tmp_path) -> None:
    """The exact-route table (issue 25 target 1) races leanvit's fastest fp32 path against timm's model in OpenVINO
    fp32, never a faster bf16 path or timm's bf16 default, with both shares of the fp32 peak and the fp32 ceiling."""
    from leanvit.bench.roofline import RooflinePeaks

    def fake_paths(name: str, batch: int, with_compile: bool, with_torch_form: bool):
        specs = [("leanvit jit fp32", "leanvit", "fp32"), ("leanvit openvino fp32", "leanvit", "fp32"),
                 ("leanvit openvino bf16", "leanvit", "bf16"), ("timm jit fp32", "timm", "fp32"),
                 ("timm openvino default (bf16)", "timm", "bf16"), ("timm openvino fp32", "timm", "fp32")]
        return [deploy_speed.RunPath(label, lib, prec, None, None, batch) for label, lib, prec in specs], 100e6

    def fake_race(paths, rounds: int, seconds: float) -> None:
        for p, ms in zip(paths, (100.0, 50.0, 25.0, 125.0, 40.0, 80.0)):  # 160 320 640 128 400 200 img/s
            p.times.append(ms / 1e3)

    monkeypatch.setattr(deploy_speed, "cpu_peaks", lambda seconds: RooflinePeaks({"fp32": 50e9, "bf16": 100e9}))
    monkeypatch.setattr(deploy_speed, "_paths", fake_paths)
    monkeypatch.setattr(deploy_speed, "race", fake_race)
    deploy_speed.main(["shvit_s1", "--roofline", "--json", str(tmp_path / "exact.json")])
    out = capsys.readouterr().out
    # 320 img/s x 1e8 MACs / 50e9 = 64 %; timm 200 -> 40 %; ceiling 50e9 / (1e8 x 200) = 2.5x
    assert "| shvit_s1 | 100 | 320.0 (openvino fp32) | 200.0 | 1.60x | 64.0% / 40.0% | 2.50x |" in out
    exact = json.loads((tmp_path / "exact.json").read_text())["results"][0]["exact"]
    assert exact["timm"]["path"] == "timm openvino fp32" and exact["ratio"] == pytest.approx(1.6)
