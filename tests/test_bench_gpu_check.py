"""benchmarks/gpu_check.py, the parts that run without a GPU: arguments, the plan and its budget, the summary files,
the refusal without CUDA, and the ONNX export step on the CPU. The GPU measurements themselves run on a GPU machine."""
from __future__ import annotations

import json

import pytest
import torch
from helpers.scripts import benchmark_script


@pytest.fixture(scope="module")
def gpu_check():
    with benchmark_script("gpu_check") as module:
        yield module


def test_arguments(gpu_check) -> None:
    args = gpu_check.parse_args([])
    assert args.models == list(gpu_check.DEFAULT_MODELS) and args.steps == list(gpu_check.STEPS)
    assert args.batch_size == 256 and args.budget_s == 480
    args = gpu_check.parse_args(["shvit_s1", "--steps", "train, export", "--rounds", "5"])
    assert args.models == ["shvit_s1"] and args.steps == ["train", "export"] and args.rounds == 5
    for bad in (["--steps", "throughput,latency"], ["--steps", ","], ["--batch-size", "0"], ["--seconds", "0"]):
        with pytest.raises(SystemExit):
            gpu_check.parse_args(bad)


def test_plan_fits_the_budget_and_follows_the_gpus(gpu_check) -> None:
    args = gpu_check.parse_args([])
    one, two = gpu_check.plan(args, 1), gpu_check.plan(args, 2)
    assert [s.name for s in one] == list(gpu_check.STEPS)
    # the default check is planned for under 8 minutes on one GPU and on two
    assert sum(s.estimate_s for s in one) <= 480 and sum(s.estimate_s for s in two) <= 480
    ddp_one, ddp_two = one[3], two[3]
    assert ddp_one.estimate_s == 0 and "needs >= 2 GPUs" in ddp_one.what
    assert ddp_two.estimate_s > 0 and "DDP on 2 GPUs" in ddp_two.what
    # four paths (leanvit and timm of two models), each compiled: the compile step costs most
    assert max(one, key=lambda s: s.estimate_s).name == "compile" and "4 paths" in one[1].what
    more = gpu_check.plan(gpu_check.parse_args(["--rounds", "10", "--seconds", "5"]), 1)
    assert sum(s.estimate_s for s in more) > 480  # a plan that does not fit shows it


def test_steps_past_the_budget_are_skipped(gpu_check, monkeypatch) -> None:
    args = gpu_check.parse_args(["--steps", "train,export", "--budget-s", "65"])
    ran: list[str] = []
    monkeypatch.setattr(gpu_check, "step_speed", lambda a, backend, mode="throughput": ran.append(mode) or {"rows": []})
    monkeypatch.setattr(gpu_check, "step_export", lambda a: ran.append("export") or {})
    now = iter([0.0, 0.0, 0.0, 30.0, 30.0]).__next__  # start; train: check, begin, end; export: check
    steps = gpu_check.run_steps(args, 1, clock=now)
    # train (planned 60 s) fits 65 s; export (planned 40 s, from 30 s) would end at 70 s: skipped, and says why
    assert ran == ["train"] and steps["train"]["seconds"] == 30.0
    assert "planned 40 s would pass the 65 s budget" in steps["export"]["skipped"]


def test_a_failing_step_is_recorded_and_the_others_run(gpu_check, monkeypatch) -> None:
    args = gpu_check.parse_args(["--steps", "throughput,export"])

    def broken(a, backend, mode="throughput"):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(gpu_check, "step_speed", broken)
    monkeypatch.setattr(gpu_check, "step_export", lambda a: {"precisions": {}})
    steps = gpu_check.run_steps(args, 1)
    assert steps["throughput"]["error"] == "RuntimeError: CUDA out of memory" and "precisions" in steps["export"]


def test_summary_files(gpu_check, tmp_path) -> None:
    records = [dict(model="shvit_s1", source="leanvit", throughput=3000.0, peak_memory_mb=900.0),
               dict(model="timm:shvit_s1", source="timm", throughput=2000.0, peak_memory_mb=1000.0),
               dict(model="efficientvit_m4", source="leanvit", throughput=None, error="RuntimeError: boom"),
               dict(model="timm:efficientvit_m4", source="timm", throughput=1500.0)]
    rows = gpu_check._ratios(records, ["shvit_s1", "efficientvit_m4"])
    assert rows[0]["ratio"] == pytest.approx(1.5) and rows[0]["memory_ratio"] == pytest.approx(0.9)
    assert "ratio" not in rows[1] and rows[1]["errors"] == ["RuntimeError: boom"]
    result = dict(environment=dict(device="cuda: NVIDIA H100", versions=dict(torch="2.x")), gpus=1, batch_size=256,
                  rounds=3, seconds=2.0, total_s=400.0,
                  steps=dict(throughput=dict(rows=rows, seconds=50.0), train=dict(rows=rows[:1], seconds=60.0),
                             compile=dict(error="RuntimeError: inductor failed", seconds=5.0),
                             ddp=dict(skipped="DDP needs >= 2 GPUs"),
                             export=dict(model="efficientvit_m0", providers=["CPUExecutionProvider"], precisions=dict(
                                 fp16=dict(pytorch=dict(relative_error=0.01), onnxruntime=dict(
                                     relative_error=0.02, max_abs_error=0.003, top1_agreement=1.0)),
                                 bf16=dict(pytorch=dict(relative_error=0.05), error="NotImplemented: Conv(bf16)")))))
    json_path, md_path = gpu_check.write_summary(result, tmp_path / "out")
    assert json.loads(json_path.read_text()) == result
    md = md_path.read_text()
    assert "# GPU check: cuda: NVIDIA H100" in md
    assert "| shvit_s1 | 3000 | 2000 | 1.50x |" in md  # throughput table
    assert "| shvit_s1 | 3000 | 2000 | 1.50x | 900 / 1000 | 0.90x |" in md  # training: speed and memory
    assert "| efficientvit_m4 | - | 1500 | - |" in md and "- efficientvit_m4: RuntimeError: boom" in md
    assert "**failed**: RuntimeError: inductor failed" in md and "**skipped**: DDP needs >= 2 GPUs" in md
    assert "| fp16 | 1.00e-02 | 2.00e-02 | 3.00e-03 | 1.00 |  |" in md
    assert "| bf16 | 5.00e-02 | - | - | - | NotImplemented: Conv(bf16) |" in md


def test_refuses_without_cuda_and_plans_anyway(gpu_check, monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--plan"]) == 0
    assert "compile" in capsys.readouterr().out
    assert gpu_check.main([]) == 2
    captured = capsys.readouterr()
    assert "needs a CUDA GPU; none is visible here" in captured.err and "total" in captured.out


@pytest.mark.slow
def test_export_step_on_cpu(gpu_check) -> None:
    """The export step's own logic on the CPU (fp16 / bf16 PyTorch kernels exist there): each precision exported,
    run by ONNX Runtime or refused with the reason, and its error against fp32 measured; fp16's is small."""
    result = gpu_check.step_export(gpu_check.parse_args([]), device="cpu")
    assert set(result["precisions"]) == set(gpu_check.EXPORT_PRECISIONS)
    for name, row in result["precisions"].items():
        assert 0 < row["pytorch"]["relative_error"] < 1.0, (name, row)  # reduced precision: some error, not chaos
        assert "onnxruntime" in row or row["error"], row
    fp16 = result["precisions"]["fp16"]
    if "onnxruntime" in fp16:
        assert fp16["onnxruntime"]["relative_error"] < 1.0 and fp16["onnxruntime"]["top1_agreement"] >= 0.5
