"""leanvit's own errors share one base class; the command line prints those in one line and nothing else."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import leanvit
import leanvit.bench.runner as runner
from leanvit.analysis.taxonomy import UnknownOpError
from leanvit.models.checkpoint import CheckpointError
from leanvit.cli import main
from leanvit.deploy.capabilities import MissingBackendError, UnsupportedPrecisionError
from leanvit.deploy.export import ExportVerificationError
from leanvit.deploy.verify import ArtifactRunError
from leanvit.errors import LeanViTError, UnknownNameError
from leanvit.train.config import ConfigError
from leanvit.train.distributed import CollectiveError
from leanvit.train.engine import NonFiniteLossError
from leanvit.train.state import CheckpointWriteError
from leanvit.models.weights import WeightsError

PACKAGE = Path(leanvit.__file__).parent


def test_cli_prints_leanvit_errors_and_raises_everything_else(monkeypatch, capsys) -> None:
    def shape_bug(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")

    monkeypatch.setattr(runner, "benchmark", shape_bug)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):  # a bug keeps its traceback
        main(["bench", "efficientvit_m0"])

    def refused(*args, **kwargs):
        raise UnsupportedPrecisionError("fp16 needs a CUDA GPU; on CPU use bf16 or fp32")

    monkeypatch.setattr(runner, "benchmark", refused)
    capsys.readouterr()
    assert main(["bench", "efficientvit_m0"]) == 1
    assert capsys.readouterr().err == "leanvit bench: error: fp16 needs a CUDA GPU; on CPU use bf16 or fp32\n"


@pytest.mark.parametrize("cls", [CheckpointError, WeightsError, UnsupportedPrecisionError, MissingBackendError,
                                 ExportVerificationError, ConfigError, NonFiniteLossError, CheckpointWriteError,
                                 CollectiveError, ArtifactRunError, UnknownOpError])
def test_named_errors_are_leanvit_errors(cls: type) -> None:
    assert issubclass(cls, LeanViTError)


def test_unknown_model_is_a_sentence(capsys) -> None:
    with pytest.raises(UnknownNameError) as info:
        leanvit.create_model("shvit_s9")
    assert str(info.value).startswith("unknown model 'shvit_s9'.")  # no KeyError quotes around it
    assert isinstance(info.value, KeyError)  # still what callers caught before


def test_no_builtin_value_key_or_file_error_is_raised_directly() -> None:
    """Every ValueError / KeyError / FileNotFoundError leanvit raises is one of its own (so the CLI prints it)."""
    plain = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name) \
                    and node.exc.func.id in ("ValueError", "KeyError", "FileNotFoundError"):
                plain.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not plain, plain


def test_segmentation_checkpoint_export_refuses_flags_it_cannot_apply(tmp_path, capsys) -> None:
    # A segmentation checkpoint's export used to drop these flags without a word; the route table refuses them.
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"not read: the flags are refused first")
    out = tmp_path / "seg.onnx"
    argv = ["export", str(ckpt), "--format", "onnx", "--output", str(out)]
    assert main([*argv, "--precision", "int8", "--threads", "2", "--no-verify"]) == 1
    err = capsys.readouterr().err
    assert "--precision, --no-verify, --threads do(es) not apply to a segmentation checkpoint" in err, err
    assert not out.exists()

