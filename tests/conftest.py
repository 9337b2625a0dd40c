"""Shared test helpers: the vendored paper numbers, logit checks relative to the logits' spread, the two tiers.

Tiers: ``@pytest.mark.slow`` (registered in pyproject.toml) marks every test that trains, exports to a mobile
runtime, spawns processes, builds a wheel or compiles, and every case that takes over ~1.5 s on a 2-core
CPU; ``make test-fast`` runs the rest (``-m "not slow"``), ``make test`` everything. :func:`fast_first` keeps
one or two cases of a long parametrisation in the fast tier and marks the others slow.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest

# LEANVIT_TEST_CPU=avx2 runs the suite as an AVX2-only CPU (Zen 3 class: no AVX-512, bf16, VNNI or AMX) would,
# on a bigger one: torch's own kernels are capped to AVX2 (set before torch loads, inherited by subprocesses:
# oneDNN's ISA limit, which also turns its bf16 probe off, and ATen's dispatch level), and leanvit's int8
# instruction probe reports none. OpenVINO and ONNX Runtime keep the host's kernels (they have no such cap), and
# tests read OpenVINO's capabilities from OpenVINO. `make test-avx2` sets it.
EMULATED_CPU = os.environ.get("LEANVIT_TEST_CPU", "")
if EMULATED_CPU not in ("", "avx2"):
    raise pytest.UsageError(f"LEANVIT_TEST_CPU={EMULATED_CPU!r}: the only emulated CPU class is 'avx2' (or unset)")
if EMULATED_CPU == "avx2":
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")

import torch  # noqa: E402 - after the ISA caps above

import leanvit.deploy.capabilities as caps
from leanvit.models.signal import logit_agreement
from leanvit.train import Trainer, load_config
from leanvit.train.data import DigitsSource

from helpers.once import built_once

DATA_DIR = Path(__file__).resolve().parent / "data"
CONV_FAMILY_MODELS = [f"shvit_s{i}" for i in range(1, 5)] + [f"efficientvit_m{i}" for i in range(6)]


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # One thread: two-thread torch stalls badly when the other core is busy (measured 1.5 s vs 13 ms a call).
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _emulated_cpu() -> Iterator[None]:
    """Under LEANVIT_TEST_CPU=avx2, leanvit's probes answer as on an AVX2-only CPU (see the top of this file)."""
    if EMULATED_CPU != "avx2":
        yield
        return
    assert not caps.cpu_has_bf16(), "ONEDNN_MAX_CPU_ISA=AVX2 should have turned oneDNN's bf16 off"
    host_openvino = caps._openvino_capabilities()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(caps, "cpu_has_int8_dot", lambda: False)
        # what OpenVINO reports on an AVX2 CPU: everything but BF16
        patch.setattr(caps, "_openvino_capabilities", lambda: host_openvino - {"BF16"})
        yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow tests first (stable: file order otherwise), so that with two xdist workers the long ones start early
    and the short ones fill the end; under the AVX2 emulation, skip the tests marked ``openvino_host_isa``."""
    items.sort(key=lambda item: "slow" not in item.keywords)
    if EMULATED_CPU != "avx2":
        return
    skip = pytest.mark.skip(reason="OpenVINO takes its bf16 default from CPUID but its kernels from the "
                                   "ONEDNN_MAX_CPU_ISA cap: it cannot run under LEANVIT_TEST_CPU=avx2 on this host")
    for item in items:
        if "openvino_host_isa" in item.keywords:
            item.add_marker(skip)


def paper_tables() -> dict:
    """Per-variant targets, transcribed from the papers' tables (tests/data/paper_tables.json)."""
    return json.loads((DATA_DIR / "paper_tables.json").read_text())["variants"]


def assert_logits_close(reference: torch.Tensor, output: torch.Tensor, rel: float, top1: float = 1.0) -> dict:
    """``output``'s max error is at most ``rel`` x the spread of ``reference`` across the batch, and at least
    ``top1`` of the rows pick the same class. (batch, ...) tensors; everything after the batch is flattened."""
    stats = logit_agreement(reference.flatten(1), output.flatten(1))
    assert stats["spread"] > 1e-3, f"reference barely depends on its input: {stats}"
    assert stats["relative_error"] <= rel and stats["top1_agreement"] >= top1, stats
    return stats


def fast_first(values: Sequence[Any], fast: Sequence[Any]) -> list[Any]:
    """``values`` for ``pytest.mark.parametrize``: those in ``fast`` stay in the fast tier, the rest are
    marked slow (each still runs in ``make test``)."""
    missing = [v for v in fast if v not in values]
    if missing:
        raise ValueError(f"fast_first: {missing} are not among the parametrised values")
    return [v if v in fast else pytest.param(v, marks=pytest.mark.slow) for v in values]


DIGITS_SIDE = 32


def _train_digits(root: Path) -> None:
    cfg = load_config("quick", {"model.name": "efficientvit_m0", "model.img_size": DIGITS_SIDE, "data.path": "digits",
                                "train.epochs": 4, "output": str(root / "run"), "log.progress": False,
                                "log.tensorboard": False})
    Trainer(cfg).fit()
    train, val = DigitsSource("train"), DigitsSource("val")
    (root / "calib").mkdir()
    for i in range(96):
        train.load(i)[0].save(root / "calib" / f"{i:03d}.png")
    for folder, source, indices in (("tune", train, range(96, 296)), ("val", val, range(len(val)))):
        for i in indices:
            img, label = source.load(i)
            (root / folder / str(label)).mkdir(parents=True, exist_ok=True)
            img.save(root / folder / str(label) / f"{i:03d}.png")


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> dict[str, Path]:
    """efficientvit_m0 trained on scikit-learn's real digits (32 px, 4 epochs), with image folders:
    ``calib`` (96 training images, flat), ``tune`` (200 other training images, class folders) and ``val``
    (the 360 held-out digits, class folders). Trained once per run (shared by xdist workers): read it, never
    write into it."""
    root = built_once(tmp_path_factory, "digits", _train_digits)
    return {"ckpt": root / "run" / "best.ckpt", "calib": root / "calib", "tune": root / "tune", "val": root / "val",
            "root": root}
