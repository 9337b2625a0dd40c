"""Which checkpoint a run continues from: automatic resume, config checks, fallback to older checkpoints.

``resume`` in the config is a checkpoint path (continue it; the caller chose its config), ``"auto"``
(what ``leanvit train`` uses: continue the run in ``output`` if it holds one and its config matches,
else start fresh) or None (start fresh; an output that holds a run is refused). When the chosen
``last.ckpt`` cannot be read (truncated, empty, foreign), the newest readable checkpoint of the run
folder (``checkpoints/*.ckpt``) is used instead, with a warning naming both files; when none can be
read the run stops with an error before anything is written. In a distributed run rank 0 decides
and every process reads the same file.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import InvalidValueError, MissingFileError
from .config import TrainConfig, apply_overrides, config_from_dict, config_to_dict, load_recipe
from .distributed import DistInfo, all_reduce_sum, broadcast_object
from .state import read_checkpoint

__all__ = ["AUTO", "RESUMABLE_KEYS", "ResumePoint", "run_checkpoints", "open_resume_checkpoint",
           "config_differences", "select_resume", "resolve_run_config"]

AUTO = "auto"
# Keys an automatic resume may change (they do not alter what has been trained so far); any other
# difference is refused. ``--resume CKPT`` accepts every change, as the caller asked for them explicitly.
RESUMABLE_KEYS = ("train.epochs", "train.max_steps", "train.eval_every", "train.log_interval", "train.threads",
                  "train.dist_timeout_s", "data.workers", "checkpoint.", "log.")
_NOT_COMPARED = ("output", "resume", "recipe")  # where and how the config was given, not what it trains

log = logging.getLogger("leanvit.train")


@dataclass
class ResumePoint:
    """The checkpoint a run continues from."""

    path: Path
    state: dict[str, Any]


def run_checkpoints(run: Path) -> list[Path]:
    """A run folder's checkpoints, the one to try first first: last.ckpt, then checkpoints/*.ckpt newest first."""
    older = sorted((run / "checkpoints").glob("*.ckpt"), key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)
    return [p for p in [run / "last.ckpt", *older] if p.is_file()]


def open_resume_checkpoint(path: str | Path) -> ResumePoint:
    """Read a training checkpoint; an unreadable ``last.ckpt`` (or run folder) falls back to the run's newest
    readable checkpoint with a warning naming both files. Raises ValueError when none is readable."""
    path = Path(path)
    run = path if path.is_dir() else path.parent
    if not path.is_dir() and path.name != "last.ckpt":
        return ResumePoint(path, read_checkpoint(path))  # an explicitly chosen file: no substitute
    first = run / "last.ckpt"
    candidates = run_checkpoints(run)
    if not candidates:
        raise MissingFileError(f"checkpoint {first} not found (and no checkpoints/*.ckpt in {run})")
    problems = []
    for candidate in candidates:
        try:
            state = read_checkpoint(candidate)
        except (ValueError, OSError) as e:
            problems.append(f"{candidate}: {e}")
            continue
        if candidate != first:
            log.warning("%s cannot be read (%s); resuming from %s instead, the newest readable checkpoint of the run",
                        first, problems[0].split(": ", 1)[-1] if problems else "missing", candidate)
        return ResumePoint(candidate, state)
    raise InvalidValueError(f"cannot resume {run}: none of its {len(candidates)} checkpoint(s) is readable, nothing was "
                            "changed. " + "; ".join(problems) + ". Restore a good copy, or start a new run in another "
                            "--output")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(cfg: TrainConfig, saved: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (run's value, this config's value)}`` for every key that differs (defaults fill old configs)."""
    ours = _flatten(config_to_dict(cfg))
    theirs = _flatten(config_to_dict(config_from_dict(dict(saved, resume=None))))
    return {k: (theirs.get(k), v) for k, v in ours.items()
            if k not in _NOT_COMPARED and _normal(theirs.get(k)) != _normal(v)}


def _normal(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value  # YAML/pickle round trips turn tuples into lists


def _check_auto_config(cfg: TrainConfig, point: ResumePoint) -> None:
    changed = config_differences(cfg, point.state["config"])
    refused = {k: v for k, v in changed.items() if not k.startswith(RESUMABLE_KEYS)}
    if refused:
        listing = ", ".join(f"{k} (run: {a!r}, now: {b!r})" for k, (a, b) in sorted(refused.items()))
        sets = " ".join(f"--set {k}={b}" for k, (_, b) in sorted(refused.items()))
        raise InvalidValueError(
            f"{cfg.output} holds a run whose config differs from this command's in {listing}. Rerun the run's own "
            f"command to continue it, continue it with these changes explicitly: --resume {point.path} {sets}, or "
            "start a new run in another --output"
        )
    for key, (before, now) in sorted(changed.items()):
        log.info("continuing %s with %s changed: %r -> %r", cfg.output, key, before, now)


def _decide(cfg: TrainConfig) -> ResumePoint | None:
    """Rank 0's choice of checkpoint (None: a fresh run); raises for refusals."""
    out = Path(cfg.output)
    if cfg.resume and cfg.resume != AUTO:
        return open_resume_checkpoint(cfg.resume)
    if not run_checkpoints(out):
        return None
    if cfg.resume is None:
        raise FileExistsError(
            f"{out} already holds a run (last.ckpt); continue it with --resume {out / 'last.ckpt'} (leanvit train "
            "continues it by itself without --no-resume), or choose another --output"
        )
    point = open_resume_checkpoint(out)
    _check_auto_config(cfg, point)
    return point


def select_resume(cfg: TrainConfig, info: DistInfo) -> tuple[TrainConfig, ResumePoint | None]:
    """The config to train (``resume`` set to the chosen file) and the checkpoint to continue, or None.

    Rank 0 decides and tells the others, so that every process resumes from the same file or raises the
    same error (instead of some waiting forever for the ones that failed)."""
    point: ResumePoint | None = None
    decision: tuple[str, Any] = ("fresh", None)
    if info.is_main:
        try:
            point = _decide(cfg)
            decision = ("resume", str(point.path)) if point is not None else ("fresh", None)
        except (ValueError, OSError) as e:
            decision = ("error", (type(e), str(e)))
    kind, payload = broadcast_object(decision, info)
    if kind == "error":
        error_type, message = payload
        raise error_type(message)
    if kind == "fresh":
        return replace(cfg, resume=None), None
    problem = None
    if point is None:  # the other ranks read the file rank 0 chose
        try:
            point = ResumePoint(Path(payload), read_checkpoint(payload))
        except (ValueError, OSError) as e:
            problem = e
    if all_reduce_sum([1.0 if problem else 0.0], info)[0]:
        raise InvalidValueError(f"{'rank ' + str(info.rank) if problem else 'another process'} cannot read {payload}"
                                f"{f' ({problem})' if problem else ''}; the output folder must be on a file system that "
                                "every node sees")
    return replace(cfg, resume=str(point.path)), point


def resolve_run_config(recipe: str | None, *, resume: str | None, settings: dict[str, Any], overrides: list[str],
                       default_recipe: str, auto_resume: bool = True) -> TrainConfig:
    """The config of a run a command starts: ``recipe`` (``a+b`` composes), else the own config of the run
    ``resume`` continues, else ``default_recipe``; then ``settings`` (config key -> value), then ``overrides``
    (``key=value`` strings). Without ``resume`` the run continues the one in its output when it can
    (``resume: auto``), or with ``auto_resume=False`` never does."""
    if recipe:
        data = load_recipe(recipe)
    elif resume:
        data = open_resume_checkpoint(resume).state["config"]  # continue with the run's own settings
        data.pop("resume", None)
    else:
        data = load_recipe(default_recipe)
    settings = {**settings, "resume": resume or (AUTO if auto_resume else None)}
    cfg = config_from_dict(apply_overrides(apply_overrides(data, settings), overrides))
    cfg.recipe = [p for p in (recipe or "").split("+") if p] or cfg.recipe or [default_recipe]
    return cfg
