"""`leanvit analyze <tool>` end to end on small models (random weights: well-formed outputs, not paper values)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from leanvit.analysis import taylor
from leanvit.analysis.data import labelled_batches
from leanvit.cli import main
from leanvit.models import count_params

DIGITS = ["--data", "digits", "--num-classes", "10", "--img-size", "64", "--images", "8", "--batch", "8"]


def _outputs(out: Path, stem: str, png: str | None = None) -> dict:
    for suffix in (".md", ".csv", ".json"):
        assert (out / f"{stem}{suffix}").stat().st_size > 0, f"{stem}{suffix} missing"
    assert (out / f"{png or stem}.png").read_bytes()[:4] == b"\x89PNG"
    payload = json.loads((out / f"{stem}.json").read_text())
    assert payload["environment"]["versions"]["torch"] and payload["arguments"] and payload["rows"]
    return payload


def test_block_complexity(tmp_path: Path) -> None:
    assert main(["analyze", "block-complexity", "sepvit_lite", "--out", str(tmp_path)]) == 0
    rows = _outputs(tmp_path, "sepvit_blocks", png="sepvit_vs_two_blocks")["rows"]
    assert len(rows) == 11 and all(r["diff"] == 0 for r in rows)
    pairs = _outputs(tmp_path, "sepvit_vs_two_blocks")["rows"]
    assert [p["stage"] for p in pairs] == [1, 2, 3, 4]


@pytest.mark.slow
def test_op_breakdown(tmp_path: Path) -> None:
    args = ["analyze", "op-breakdown", "efficientvit_m0", "--img-size", "64", "--iters", "1", "--warmup", "1"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    cats = _outputs(tmp_path, "efficientvit_m0_eager_categories", png="op_breakdown_eager")["rows"]
    assert sum(c["share"] for c in cats) == pytest.approx(100.0)
    summary = json.loads((tmp_path / "op_breakdown_summary_eager.json").read_text())
    assert summary["machine_balance"]["balance"] > 0
    assert 0 < summary["rows"][0]["memory_bound_share"] < 100


@pytest.mark.slow
def test_op_breakdown_openvino_profiles_the_precision_it_names(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """OpenVINO's per-layer counters of the exact route: fp32 kernels only, whatever OpenVINO's own default would
    be here (bf16 on CPUs with native bf16); the record says so. bf16 is for --backend openvino only."""
    args = ["analyze", "op-breakdown", "efficientvit_m0", "--backend", "openvino", "--img-size", "64", "--iters", "1"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "efficientvit_m0_openvino_layers.json").read_text())
    kernels = {r["exec_type"] for r in payload["rows"] if r["ms"] > 0}
    assert any("conv" in k or "gemm" in k for k in kernels)
    assert not [k for k in kernels if "bf16" in k], kernels
    assert payload["arguments"]["precision"] == "fp32"
    bf16_eager = ["analyze", "op-breakdown", "efficientvit_m0", "--precision", "bf16", "--out", str(tmp_path / "b")]
    assert main(bf16_eager) != 0
    assert "applies to --backend openvino only" in capsys.readouterr().err and not (tmp_path / "b").exists()


@pytest.mark.slow
@pytest.mark.parametrize("definition", ["shvit", "efficientvit"])
def test_head_similarity(tmp_path: Path, definition: str) -> None:
    args = ["analyze", "head-similarity", "efficientvit_m0", "--definition", definition, *DIGITS]
    assert main([*args, "--out", str(tmp_path)]) == 0
    stem = {"shvit": "head_similarity_attention_map_mean_pairs",
            "efficientvit": "head_similarity_head_output_max_max"}[definition]
    rows = _outputs(tmp_path, stem)["rows"]
    assert len(rows) == 6 and all(-1 <= r["similarity"] <= 1 + 1e-9 and r["samples"] for r in rows)


@pytest.mark.slow
def test_head_ablation(tmp_path: Path) -> None:
    assert main(["analyze", "head-ablation", "efficientvit_m0", *DIGITS, "--out", str(tmp_path)]) == 0
    rows = _outputs(tmp_path, "efficientvit_m0_head_ablation")["rows"]
    assert len(rows) == 6 and all(len(r["remove1"]) == r["heads"] == len(r["leave1"]) for r in rows)


@pytest.mark.slow
def test_taylor_with_pruning_and_finetune(tmp_path: Path) -> None:
    args = ["analyze", "taylor", "sepvit_lite", "--keep", "0.5", "--prune", "--finetune-epochs", "2", "--lr", "1e-3",
            *DIGITS, "--out", str(tmp_path)]
    assert main(args) == 0
    payload = _outputs(tmp_path, "sepvit_lite_taylor_kept")
    assert {r["component"] for r in payload["rows"]} == {"Q", "K", "V", "FFN"}
    removed = payload["removed_channels"]
    assert removed["ffn"] > 0 and removed["q"] == removed["k"] > 0 and removed["v"] == 0  # SepViT V: not exact
    assert payload["params_after"] < payload["params_before"] and payload["macs_after"] < payload["macs_before"]
    assert (tmp_path / "sepvit_lite_taylor_importance.npz").stat().st_size > 0
    for key in ("top1_val_before", "top1_val_pruned", "top1_val_finetuned"):
        assert 0 <= payload[key] <= 100
    assert len(payload["finetune_losses"]) == 2
    assert f"{payload['top1_val_finetuned']:.2f} % after 2 fine-tune epochs" in \
        (tmp_path / "sepvit_lite_taylor_kept.md").read_text()
    # What cannot be faked: the saved models are the pruned / fine-tuned ones (their parameter count and the
    # reported accuracies match an independent evaluation on the same held-out images), and fine-tuning moved
    # the weights.
    pruned = taylor.load_pruned(tmp_path / "sepvit_lite_taylor_pruned.safetensors")
    tuned = taylor.load_pruned(tmp_path / "sepvit_lite_taylor_finetuned.safetensors")
    assert count_params(pruned) == count_params(tuned) == payload["params_after"]
    assert any(not torch.equal(a, b) for a, b in zip(pruned.state_dict().values(), tuned.state_dict().values()))
    held_out = list(labelled_batches("digits", pruned, 64, split="val", batch_size=8, max_images=8, seed=0))
    with torch.no_grad():
        for model, key in ((pruned, "top1_val_pruned"), (tuned, "top1_val_finetuned")):
            correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in held_out)
            assert 100.0 * correct / sum(len(y) for _, y in held_out) == pytest.approx(payload[key])


def test_taylor_finetune_needs_prune(capsys: pytest.CaptureFixture) -> None:
    assert main(["analyze", "taylor", "sepvit_lite", "--keep", "0.5", "--finetune-epochs", "1", *DIGITS,
                 "--out", "unused"]) == 1
    assert "--prune" in capsys.readouterr().err


@pytest.mark.slow
def test_design_space(tmp_path: Path) -> None:
    args = ["analyze", "design-space", "evit-tab6", "--batch", "1", "--duration", "0.02", "--rounds", "1",
            "--img-size", "64"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    rows = _outputs(tmp_path, "evit-tab6")["rows"]
    assert rows[0]["speed_ratio"] == 1.0 and all(r["throughput"] > 0 for r in rows)
    assert rows[3]["macs_ratio"] > 1.3  # FFN ratio 4 vs 2


def test_bad_input_names_the_fix(capsys: pytest.CaptureFixture) -> None:
    assert main(["analyze", "head-similarity", "shvit_s1", *DIGITS, "--out", "unused"]) == 1
    assert "single head" in capsys.readouterr().err


def test_load_pruned_refuses_other_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    other = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match="is not a pruned model written by leanvit analyze taylor --prune"):
        taylor.load_pruned(other)


# --- flags generated from leanvit.analysis.options: each reaches its run_* function as the tool's argument
@pytest.mark.parametrize("argv, tool, positional, keywords", [
    (["head-similarity", "m", "--data", "d"], "run_head_similarity", ["m"],
     dict(definition="shvit", target=None, reduce=None, batch_size=32, images=128)),
    (["head-similarity", "m", "n", "--data", "d", "--target", "head_output", "--batch", "4", "--drop-cls"],
     "run_head_similarity", ["m", "n"], dict(definition=None, target="head_output", batch_size=4, drop_cls=True)),
    (["head-ablation", "m", "--data", "d", "--no-cascade-mask", "--seed", "3"], "run_head_ablation", "m",
     dict(cascade_mask=False, seed=3, num_classes=None)),
    (["taylor", "m", "--data", "d", "--keep", "0.25", "--parts", "q,k", "--qk", "separate", "--prune"], "run_taylor",
     "m", dict(keep=0.25, parts=["q", "k"], qk="separate", prune=True, normalize="mean", images=128, lr=1e-4)),
    (["design-space", "evit-fig7", "--no-speed", "--duration", "0.5", "--batch", "2"], "run_design_space",
     ["evit-fig7"], dict(measure_speed=False, duration_s=0.5, batch_size=2, threads=1, rounds=3)),
    (["block-complexity", "--time", "1.5"], "run_block_complexity", ["sepvit_lite", "sepvit_t", "sepvit_s", "sepvit_b"],
     dict(time_s=1.5, batch_size=16, img_size=None)),
    (["op-breakdown", "m", "--backend", "jit", "--batch", "2", "--checkpoint", "c.pt"], "run_op_breakdown", ["m"],
     dict(backend="jit", batch_size=2, checkpoint="c.pt", iters=5, warmup=3, threads=1)),
])
def test_flags_reach_the_tool(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, argv: list[str],
                              tool: str, positional: object, keywords: dict) -> None:
    import leanvit.analysis

    calls = []
    monkeypatch.setattr(leanvit.analysis, tool, lambda *a, **k: calls.append((a, k)) or [Path("written.md")])
    assert main(["analyze", *argv, "--out", "o"]) == 0
    (args, kwargs), = calls
    assert args == (positional, "o") and {k: kwargs[k] for k in keywords} == keywords
    assert capsys.readouterr().out == "written.md\n"


def test_options_match_the_library() -> None:
    """The names the options offer are the ones the tools take; renamed flags keep their metavar."""
    import inspect

    from leanvit import analysis
    from leanvit.analysis import design_space, options
    from leanvit.cli import build_parser

    assert options.STUDY_NAMES == tuple(design_space.STUDIES)
    for tool, opts in options.TOOL_OPTIONS.items():
        run = getattr(analysis, "run_" + tool.replace("-", "_"))
        positional, keywords = options.run_arguments(opts(**{f.name: "x" for f in _positional(opts)}))
        inspect.signature(run).bind(*positional, **keywords)  # every field is an argument of the tool
    analyze = _subparser(build_parser("analyze"), "analyze")
    assert "[--batch BATCH]" in _subparser(analyze, "taylor").format_usage()  # not BATCH_SIZE


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]


def _positional(opts: type) -> list:
    import dataclasses

    return [f for f in dataclasses.fields(opts) if not (f.metadata.get("flag") or "-").startswith("-")]


def test_analyze_flags_load_without_torch() -> None:
    code = "import sys; from leanvit.cli import build_parser; build_parser('analyze'); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
