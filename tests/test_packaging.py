"""The built wheel works on its own: recipes ship as package data and `leanvit train` runs from anywhere."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 240) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


def _build_wheel(tmp_path: Path) -> Path:
    # Build from a copy: an in-tree setuptools build would leave build/ and *.egg-info in the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "leanvit", src / "leanvit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(dist), str(src)], cwd=tmp_path)
    (wheel,) = dist.glob("leanvit-*.whl")
    return wheel


def _venv_on_top_of_this_one(root: Path) -> Path:
    """A fresh venv that sees this interpreter's installed packages (torch, timm, ...) but not its leanvit.

    The test venv is itself a venv, so ``--system-site-packages`` would reach the base Python, not it. A
    ``.pth`` line appends this venv's site-packages to the new one's ``sys.path`` instead: the wheel installed
    in the new venv comes first, and the editable install's finder (a ``.pth`` of this venv) is not run.
    """
    venv.EnvBuilder(with_pip=False).create(root)
    python = root / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root)
    here = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(purelib.strip()) / "_leanvit_test_parent.pth").write_text("\n".join(here) + "\n")
    return python


@pytest.mark.slow
def test_wheel_ships_recipes_and_trains_outside_the_checkout(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    python = _venv_on_top_of_this_one(tmp_path / "venv")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
          str(wheel)], cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LEANVIT_RECIPES")}
    env["OMP_NUM_THREADS"] = "1"
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n for n in zf.namelist() if n.startswith("leanvit/train/recipes/")}
    bundled = {f"leanvit/train/recipes/{p.name}" for p in (REPO / "leanvit" / "train" / "recipes").glob("*.yaml")}
    assert bundled and shipped == bundled
    # Where `import leanvit` resolves in the new venv, found without importing it (no torch start-up).
    origin = _run([str(python), "-c", "import importlib.util as u; print(u.find_spec('leanvit').origin)"],
                  cwd=elsewhere, env=env).strip()
    assert Path(origin).is_relative_to(tmp_path / "venv"), origin  # the wheel, not the checkout

    # One epoch capped at a few updates keeps this a packaging test (learning is test_train_learning's job).
    _run([str(tmp_path / "venv" / "bin" / "leanvit"), "train", "--recipe", "quick", "--data", "digits",
          "--epochs", "1", "--max-steps", "3", "--batch-size", "32", "--output", "run",
          "--set", "log.progress=false", "--set", "log.tensorboard=false"], cwd=elsewhere, env=env)
    run = elsewhere / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == "efficientvit_m0" and summary["global_step"] == 3  # the quick recipe's model
    assert (run / "last.ckpt").is_file() and (run / "best.ckpt").is_file()
    row = (run / "metrics.csv").read_text().splitlines()[1].split(",")
    train_loss, val_loss = float(row[3]), float(row[6])
    assert 0 < train_loss < 5 and 0 < val_loss < 5  # finite losses from a real forward/backward/eval
