"""Training configuration: typed sections, YAML recipes that compose, ``key=value`` overrides.

A recipe is a YAML file whose top-level keys are the sections below (``model``, ``data``, ``aug``, ...)
plus an optional ``base:`` naming the recipe(s) it extends. ``shvit_s1+distill`` composes recipes on
the command line. Every value is coerced to the field's declared type, so ``lr: 1e-3`` (a string to
YAML 1.1) is a float here, and an unknown key is an error that lists the valid ones.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .._io import atomic_write
from .._text import did_you_mean
from ..errors import InvalidValueError

if TYPE_CHECKING:  # importlib.resources.abc is Python >= 3.11; annotations only
    from importlib.resources.abc import Traversable

__all__ = [
    "TrainConfig", "ConfigError", "load_config", "load_recipe", "list_recipes", "recipe_dirs",
    "apply_overrides", "config_from_dict", "config_to_dict", "save_config",
]


class ConfigError(InvalidValueError):
    """A recipe or override that cannot be used; the message names the key and the valid choices."""


@dataclass
class ModelSection:
    """What to build. ``None`` values come from the model's defaults or the data."""

    name: str = "shvit_s1"
    img_size: int | None = None  # None: the variant's native resolution
    num_classes: int | None = None  # None: the number of classes in the data
    drop_path: float = 0.0  # stochastic depth; passed as drop_path_rate only when > 0
    kwargs: dict = field(default_factory=dict)  # extra keyword arguments for create_model
    channels_last: bool = False
    compile: bool = False  # torch.compile the training model
    compile_mode: str | None = None
    grad_checkpointing: bool = False
    # rebuild BN/ReLU and cheap conv outputs in backward instead of storing them (bit-identical
    # gradients, less activation memory; leanvit.layers.recompute). Conv-BN families only.
    recompute_activations: bool = True
    sync_bn: bool = False  # SyncBatchNorm; CUDA only (gloo/CPU cannot run it)


@dataclass
class DataSection:
    """Where images come from and how they are batched."""

    path: str = "digits"  # ImageFolder root (train/ + val/ or validation/), "digits" or "fake"
    train_split: str = "train"
    val_split: str | None = None  # None: "val", else "validation"
    workers: int = 4
    eval_batch_size: int | None = None  # None: the task's eval_batch_factor x the training batch (Task.eval_batch_size)
    crop_pct: float | None = None  # eval resize = img_size / crop_pct; None: the model's (0.875)
    interpolation: str = "bicubic"
    repeated_aug: bool = False  # DeiT/timm repeated augmentation sampler
    ra_repeats: int = 3
    drop_last: bool = True
    allow_empty_classes: bool = False  # a class folder without images is an error unless this is set
    fake_train_size: int = 320
    fake_val_size: int = 64
    fake_classes: int = 10


@dataclass
class AugSection:
    """Train-time augmentation (timm create_transform + Mixup); defaults are the DeiT recipe."""

    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4  # ignored by timm when auto_augment is set
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: list[float] = field(default_factory=lambda: [0.75, 4 / 3])
    hflip: float = 0.5
    vflip: float = 0.0
    reprob: float = 0.25
    remode: str = "pixel"
    recount: int = 1
    mixup: float = 0.8
    cutmix: float = 1.0
    cutmix_minmax: list[float] | None = None
    mixup_prob: float = 1.0
    switch_prob: float = 0.5
    mixup_mode: str = "batch"
    smoothing: float = 0.1


@dataclass
class OptimSection:
    """Optimizer (timm create_optimizer_v2) and gradient clipping."""

    opt: str = "adamw"
    lr: float | None = None  # absolute learning rate; None: lr_base x global batch / lr_base_size
    lr_base: float = 1e-3
    lr_base_size: int = 512
    weight_decay: float = 0.05
    eps: float = 1e-8
    betas: list[float] | None = None
    momentum: float = 0.9
    clip_grad: float | None = None
    clip_mode: str = "norm"  # norm | agc | value
    layer_decay: float | None = None
    # None: no decay on 1-D tensors and model.no_weight_decay() (timm). A list: decay every parameter except
    # those whose name contains one of these substrings (mmdet's paramwise custom_keys, the dense recipes).
    no_decay_names: list[str] | None = None


@dataclass
class SchedSection:
    """Learning-rate schedule (timm create_scheduler_v2)."""

    sched: str = "cosine"
    warmup_epochs: float = 5
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    step_on: str = "epoch"  # epoch (the papers) | update (smoother for short runs)
    warmup_steps: int | None = None  # warm-up length in optimizer updates (replaces warmup_epochs; step_on=update)
    warmup_ratio: float | None = None  # warm-up start as a fraction of the lr (replaces warmup_lr; mmdet style)
    decay_milestones: list[int] = field(default_factory=lambda: [8, 11])  # sched=multistep: epochs to decay at
    decay_rate: float = 0.1  # sched=multistep / step: lr factor at each milestone


@dataclass
class LoopSection:
    """The training loop."""

    epochs: int = 300
    batch_size: int = 256  # per process
    accum_steps: int = 1
    max_steps: int | None = None  # stop after this many optimizer updates (smoke tests)
    seed: int = 0
    amp: str = "none"  # none | bf16 | fp16 | auto (bf16 where supported on GPU, fp32 on CPU)
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # torch intra-op threads per process (None: torch's default)
    deterministic: bool = False
    eval_every: int = 1  # epochs between evaluations (the last epoch is always evaluated)
    dist_bn: str = "reduce"  # reduce | broadcast | none: BN statistics across processes at epoch end
    dist_timeout_s: int = 1800  # a collective waiting this long for a hung peer fails, naming the rank
    log_interval: int = 20


@dataclass
class EmaSection:
    """Model EMA (timm ModelEmaV3)."""

    enable: bool = False
    decay: float = 0.99996
    warmup: bool = False
    evaluate: bool = True  # also evaluate the EMA weights after each epoch


@dataclass
class DistillSection:
    """DeiT distillation through the student's distillation head."""

    type: str = "none"  # none | soft | hard
    teacher: str = "regnety_160"  # a leanvit or timm model name
    teacher_checkpoint: str | None = None  # local weights file (required unless type is none)
    alpha: float = 0.5
    tau: float = 1.0


@dataclass
class FinetuneSection:
    """Start from other weights: a new head / resolution, optionally frozen early stages."""

    checkpoint: str | None = None
    use_ema: bool = False  # take the EMA weights of a leanvit training checkpoint
    freeze_stages: int = 0  # freeze the stem and this many stages (their BN statistics too)
    qat: str = "none"  # none | xnnpack: quantisation-aware fine-tuning for that int8 scheme (train/qat.py)


@dataclass
class CheckpointSection:
    """What is written to the output directory."""

    every_steps: int = 0  # also save last.ckpt every N optimizer updates (0: per epoch only)
    keep_last: int = 2  # epoch checkpoints kept besides last.ckpt and best.ckpt
    best_metric: str | None = None  # None: the task's (top1); classification: top1 | ema_top1; detection: bbox_AP, ...


@dataclass
class LogSection:
    """Progress bar, CSV and TensorBoard."""

    progress: bool = True
    tensorboard: bool = True
    csv: bool = True


@dataclass
class TaskSection:
    """What is trained: the task (leanvit.train.task) and its own settings."""

    name: str = "classification"  # classification | detection | segmentation
    arch: str | None = None  # dense tasks: the detector / segmentor (retinanet, mask_rcnn, faster_rcnn, ...)
    backbone_checkpoint: str | None = None  # dense tasks: ImageNet weights for the backbone (any layout)
    options: dict = field(default_factory=dict)  # task-specific settings, validated by the task


@dataclass
class TrainConfig:
    """The full, resolved configuration of one training run (saved as config.yaml in the output)."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    aug: AugSection = field(default_factory=AugSection)
    optim: OptimSection = field(default_factory=OptimSection)
    sched: SchedSection = field(default_factory=SchedSection)
    train: LoopSection = field(default_factory=LoopSection)
    ema: EmaSection = field(default_factory=EmaSection)
    distill: DistillSection = field(default_factory=DistillSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    task: TaskSection = field(default_factory=TaskSection)
    output: str = "runs/train"
    resume: str | None = None  # a checkpoint to continue, "auto" (the run in output, if any) or None (recovery.py)
    recipe: list[str] = field(default_factory=list)  # the recipes this config was built from (informational)


_CHOICES = {
    "optim.clip_mode": ("norm", "agc", "value"),
    "sched.step_on": ("epoch", "update"),
    "train.amp": ("none", "bf16", "fp16", "auto"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.dist_bn": ("reduce", "broadcast", "none"),
    "distill.type": ("none", "soft", "hard"),
    "finetune.qat": ("none", "xnnpack"),
    "aug.mixup_mode": ("batch", "pair", "elem"),
    "aug.remode": ("pixel", "rand", "const"),
}
_POSITIVE = ("train.epochs", "train.batch_size", "train.accum_steps", "train.dist_timeout_s", "data.ra_repeats", "optim.lr_base_size")


# --------------------------------------------------------------------------------------------- coercion
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or a command line) to the declared type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~", "")):
            return None
        return _coerce(value, args[0], key)
    if origin is list or tp is list:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list like [0.08, 1.0], got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item, key) for v in value]
    if origin is dict or tp is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping like {{a: 1}}, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if tp is int:
            if not number.is_integer():
                raise ConfigError(f"{key}: expected an integer, got {value!r}")
            return int(number)
        return number
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def _unknown_key(key: str, valid: list[str], where: str) -> ConfigError:
    hint = did_you_mean(key, valid)
    return ConfigError(f"unknown {where} {key!r}.{hint} Valid keys: {', '.join(valid)}")


def valid_keys() -> list[str]:
    """Every settable key, dotted (``optim.lr``, ``output``, ...)."""
    keys = []
    for name, tp in _hints(TrainConfig).items():
        if _is_section(tp):
            keys += [f"{name}.{k}" for k in _hints(tp)]
        else:
            keys.append(name)
    return keys


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        # Sections merge key by key; a kwargs mapping is replaced only where keys collide.
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_from_dict(data: dict) -> TrainConfig:
    """Build a validated :class:`TrainConfig` from a nested dict (unknown keys are errors)."""
    hints = _hints(TrainConfig)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name not in hints:
            raise _unknown_key(name, valid_keys(), "config key")
        tp = hints[name]
        if _is_section(tp):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise ConfigError(f"section {name!r} must be a mapping, got {value!r}")
            sec_hints = _hints(tp)
            for k in value:
                if k not in sec_hints:
                    raise _unknown_key(f"{name}.{k}", [f"{name}.{s}" for s in sec_hints], "config key")
            kwargs[name] = tp(**{k: _coerce(v, sec_hints[k], f"{name}.{k}") for k, v in value.items()})
        else:
            kwargs[name] = _coerce(value, tp, name)
    cfg = TrainConfig(**kwargs)
    _validate(cfg)
    return cfg


def config_to_dict(cfg: TrainConfig) -> dict:
    """Plain nested dict (YAML-safe) of ``cfg``."""
    return dataclasses.asdict(cfg)


def _validate(cfg: TrainConfig) -> None:
    flat = config_to_dict(cfg)
    for key, choices in _CHOICES.items():
        sec, k = key.split(".")
        if flat[sec][k] not in choices:
            raise ConfigError(f"{key}={flat[sec][k]!r} is not valid; choose one of {', '.join(choices)}")
    for key in _POSITIVE:
        sec, k = key.split(".")
        if flat[sec][k] <= 0:
            raise ConfigError(f"{key} must be > 0, got {flat[sec][k]}")
    if cfg.distill.type != "none" and not cfg.distill.teacher_checkpoint:
        raise ConfigError(
            f"distill.type={cfg.distill.type} needs a teacher's weights: set distill.teacher_checkpoint=PATH "
            f"(a local file for {cfg.distill.teacher}); leanvit never downloads weights"
        )
    if cfg.finetune.qat != "none":
        clashes = [what for what, on in (("finetune.checkpoint unset", not cfg.finetune.checkpoint),
                                          ("ema.enable", cfg.ema.enable), ("model.compile", cfg.model.compile),
                                          ("model.grad_checkpointing", cfg.model.grad_checkpointing),
                                          ("finetune.freeze_stages", cfg.finetune.freeze_stages > 0),
                                          ("model.sync_bn", cfg.model.sync_bn)) if on]
        if clashes:
            raise ConfigError(f"finetune.qat={cfg.finetune.qat} fine-tunes a trained model's exported graph: it needs "
                              f"finetune.checkpoint and none of ema.enable, model.compile, model.grad_checkpointing, "
                              f"finetune.freeze_stages, model.sync_bn (got: {', '.join(clashes)})")
    if len(cfg.aug.scale) != 2 or len(cfg.aug.ratio) != 2:
        raise ConfigError("aug.scale and aug.ratio take two numbers, e.g. [0.08, 1.0]")


# --------------------------------------------------------------------------------------------- recipes
def recipe_dirs() -> list[Traversable]:
    """Where recipe names are looked up, first match wins: each directory in ``$LEANVIT_RECIPES``
    (``os.pathsep``-separated), then the recipes shipped inside the package (``leanvit/train/recipes``)."""
    dirs: list[Traversable] = [Path(p) for p in os.environ.get("LEANVIT_RECIPES", "").split(os.pathsep) if p]
    # Package data through importlib.resources: the same lookup in a checkout, an editable install and a wheel.
    dirs.append(resources.files(__package__).joinpath("recipes"))
    return dirs


def _recipe_files(directory: Traversable) -> list[Traversable]:
    if not directory.is_dir():
        return []
    return [p for p in directory.iterdir() if p.name.endswith(".yaml") and p.is_file()]


def list_recipes() -> list[str]:
    """Names of the recipes found in :func:`recipe_dirs` (files starting with ``_`` are building blocks)."""
    names = {p.name[: -len(".yaml")] for d in recipe_dirs() for p in _recipe_files(d)}
    return sorted(n for n in names if not n.startswith("_"))


def _find_recipe(name: str, relative_to: Traversable | None) -> Traversable:
    cand = Path(name)
    if cand.suffix in (".yaml", ".yml"):
        near = [relative_to.joinpath(name)] if relative_to is not None and not cand.is_absolute() else []
        for p in near + [cand]:
            if p.is_file():
                return p
        raise ConfigError(f"recipe file {name} not found")
    for d in recipe_dirs():
        p = d.joinpath(f"{name}.yaml")
        if p.is_file():
            return p
    known = list_recipes()
    hint = did_you_mean(name, known, cutoff=0.5)
    raise ConfigError(f"unknown recipe {name!r}.{hint} Known recipes: {', '.join(known)} (or pass a .yaml path)")


def load_recipe(spec: str, _seen: tuple[Traversable, ...] = ()) -> dict:
    """Resolve a recipe spec (``name``, ``path.yaml``, or ``a+b`` composition) to a merged nested dict.

    A ``base:`` that names a ``.yaml`` file is looked up beside the recipe that names it first."""
    merged: dict = {}
    for part in [p for p in spec.split("+") if p]:
        path = _find_recipe(part, _parent(_seen[-1]) if _seen else None)
        if any(_same_file(path, s) for s in _seen):
            chain = " -> ".join(str(s) for s in _seen + (path,))
            raise ConfigError(f"recipe {path} extends itself (chain: {chain})")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"recipe {path} must be a YAML mapping of sections")
        data.pop("resolved", None)  # a saved run's config.yaml can serve as a recipe
        bases = data.pop("base", None) or []
        for b in [bases] if isinstance(bases, str) else bases:
            merged = _merge(merged, load_recipe(b, _seen + (path,)))
        merged = _merge(merged, data)
    return merged


def _parent(path: Traversable) -> Traversable | None:
    # Files on disk (Paths, and the package's own recipes) know their directory; a zipped resource may not.
    return getattr(path, "parent", None)


def _same_file(a: Traversable, b: Traversable) -> bool:
    if isinstance(a, Path) and isinstance(b, Path):
        return a.resolve() == b.resolve()
    return str(a) == str(b)


def _key_error(key: str) -> ConfigError:
    section = key.split(".")[0]
    same = [k for k in valid_keys() if k.startswith(section + ".")]
    return _unknown_key(key, same or valid_keys(), "key")


def _parse_override(item: str) -> tuple[list[str], str]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=1e-3)")
    key, value = item.split("=", 1)
    key = key.strip()
    if key not in valid_keys():
        raise _key_error(key)
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str] | dict[str, Any]) -> dict:
    """Apply ``["section.key=value", ...]`` (or a ``{"section.key": value}`` dict) onto a nested dict."""
    items = overrides.items() if isinstance(overrides, dict) else [_parse_override(o) for o in overrides]
    out = _merge({}, data)
    for path, value in items:
        path = path.split(".") if isinstance(path, str) else path
        if ".".join(path) not in valid_keys():
            raise _key_error(".".join(path))
        if isinstance(value, str):
            # YAML typing for command-line strings ("[0.5, 1.0]", "null", "{a: 1}"); _coerce fixes the rest.
            try:
                value = yaml.safe_load(value) if value.strip() else value
            except yaml.YAMLError:
                pass
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return out


def load_config(recipe: str | None = None, overrides: list[str] | dict[str, Any] | None = None) -> TrainConfig:
    """Recipe (name / path / ``a+b``) + overrides -> validated :class:`TrainConfig`."""
    data = load_recipe(recipe) if recipe else {}
    data = apply_overrides(data, overrides or [])
    cfg = config_from_dict(data)
    if recipe:
        cfg.recipe = [p for p in recipe.split("+") if p]
    return cfg


def save_config(cfg: TrainConfig, path: str | os.PathLike, extra: dict | None = None) -> None:
    """Write the resolved config (plus ``extra``: derived values such as the effective lr) atomically."""

    data = config_to_dict(cfg)
    if extra:
        data["resolved"] = extra
    text = yaml.safe_dump(data, sort_keys=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
