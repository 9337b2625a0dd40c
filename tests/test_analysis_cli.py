"""`leanvit analyze <tool>` end to end on small models (random weights: well-formed outputs, not paper values)."""
from __future__ import annotations

import json
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
