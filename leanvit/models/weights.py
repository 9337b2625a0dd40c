"""Published weights: find a weight set on disk or download it, and list what exists.

Published weight sets are declared by the families (``ModelConfig.weights``: an official release file
and timm's Hugging Face copy per set). :func:`fetch` finds one locally or downloads it: into torch hub's
checkpoint folder, written atomically (a temporary file, checked, then renamed), verified against its
SHA-256 when known and read back before it is kept, so the cache never holds a partial or corrupt file.

Environment: ``LEANVIT_WEIGHTS_DIR`` (local files, tried first: the offline recipe),
``LEANVIT_WEIGHTS_URL`` (a mirror serving the files under their URL paths, e.g. for tests),
``HF_HUB_OFFLINE=1`` / ``LEANVIT_OFFLINE=1`` (never download). Loading the file into a model is
``leanvit.create_model(pretrained=...)`` (:mod:`leanvit.models.factory`).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch.hub

from .._io import atomic_write
from ..errors import OperationError
from ._pretrained import PretrainedWeights, WeightFile
from ._registry import get_config, list_models
from .checkpoint import CheckpointError, read_state_dict

__all__ = ["fetch", "cached_file", "weights_cache_dir", "WeightsError", "WeightsEntry",
           "list_weights", "WEIGHTS_DIR_ENV", "WEIGHTS_URL_ENV"]

WEIGHTS_DIR_ENV = "LEANVIT_WEIGHTS_DIR"
WEIGHTS_URL_ENV = "LEANVIT_WEIGHTS_URL"
_OFFLINE_ENVS = ("LEANVIT_OFFLINE", "HF_HUB_OFFLINE")
_CHUNK = 1 << 20


class WeightsError(OperationError):
    """Published weights that could not be found or downloaded; the message says what was tried and how
    to provide the file by hand."""


def weights_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where downloads are kept: ``cache_dir``, else torch hub's checkpoint folder
    (``$TORCH_HOME/hub/checkpoints``, the folder ``torch.hub`` and timm's URL downloads use)."""
    return Path(cache_dir) if cache_dir is not None else Path(torch.hub.get_dir()) / "checkpoints"


def _is_offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in _OFFLINE_ENVS)


def _mirror_url(file: WeightFile, base_url: str | None) -> str:
    base = base_url or os.environ.get(WEIGHTS_URL_ENV)
    return f"{base.rstrip('/')}/{file.url_path}" if base else file.url


def cached_file(name: str, tag: str | None = None, *, cache_dir: str | os.PathLike | None = None,
                weights_dir: str | os.PathLike | None = None) -> Path | None:
    """The local file of weight set ``name.tag`` (``LEANVIT_WEIGHTS_DIR`` / ``weights_dir`` first, then the
    cache), or None when none of its copies is on disk."""
    weights = get_config(name).weight_set(tag)
    folders = [Path(d) for d in (weights_dir or os.environ.get(WEIGHTS_DIR_ENV),) if d]
    for folder in (*folders, weights_cache_dir(cache_dir)):
        for file in weights.files:
            if (folder / file.filename).is_file():
                return folder / file.filename
    return None


def _download(file: WeightFile, url: str, dest: Path, timeout: float) -> Path:
    """Download ``url`` to ``dest`` atomically; the file is kept only when complete, matching its SHA-256
    (when known) and readable as a checkpoint."""

    def write(tmp: str) -> None:
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            expected = response.headers.get("Content-Length")
            size = 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        if expected is not None and size != int(expected):
            raise WeightsError(f"truncated download: got {size} of {expected} bytes")
        if file.sha256 and digest.hexdigest() != file.sha256.lower():
            raise WeightsError(f"SHA-256 mismatch: expected {file.sha256}, got {digest.hexdigest()}; "
                               "the download was deleted")
        try:
            read_state_dict(tmp)
        except CheckpointError as e:
            raise WeightsError(f"the downloaded file is not a readable checkpoint (corrupt?), deleted: {e}") from e

    print(f"leanvit: downloading {url} -> {dest}", file=sys.stderr)
    return atomic_write(dest, write)


def fetch(
    name: str,
    tag: str | None = None,
    *,
    base_url: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    weights_dir: str | os.PathLike | None = None,
    timeout: float = 60.0,
) -> Path:
    """The file of weight set ``name.tag`` (default tag: the model's first): found locally (see
    :func:`cached_file`) or downloaded from its copies in order (``base_url`` / ``LEANVIT_WEIGHTS_URL``
    replaces the scheme and host of every URL). Raises :class:`WeightsError` naming the model, each URL tried
    with its failure, and where to put the file by hand."""
    weights = get_config(name).weight_set(tag)
    local = cached_file(name, weights.tag, cache_dir=cache_dir, weights_dir=weights_dir)
    if local is not None:
        return local
    cache = weights_cache_dir(cache_dir)
    failures = []
    if not _is_offline():
        for file in weights.files:
            url = _mirror_url(file, base_url)
            try:
                return _download(file, url, cache / file.filename, timeout)
            except (urllib.error.URLError, http.client.HTTPException, OSError, WeightsError, ValueError) as e:
                failures.append(f"  {url}: {getattr(e, 'reason', None) or e}")
    raise WeightsError(_unavailable_message(name, weights, failures, cache, base_url))


def _unavailable_message(name: str, weights: PretrainedWeights, failures: list[str], cache: Path,
                         base_url: str | None) -> str:
    if failures:
        head = f"could not download the weights {name}.{weights.tag}; tried:\n" + "\n".join(failures)
    else:
        urls = "\n".join(f"  {_mirror_url(f, base_url)}" for f in weights.files)
        head = (f"the weights {name}.{weights.tag} are not on disk and downloads are off "
                f"({' / '.join(_OFFLINE_ENVS)} is set); they would be downloaded from:\n{urls}")
    folder = os.environ.get(WEIGHTS_DIR_ENV)
    places = "\n".join(f"  {(Path(folder) if folder else cache) / f.filename}   (from {f.url}, {f.origin})"
                       for f in weights.files)
    return (f"{head}\nTo use them offline, download one of these files by hand and put it at\n{places}\n"
            f"(or set {WEIGHTS_DIR_ENV} to the folder holding it, or pass pretrained_file=PATH; any leanvit, "
            "timm or official layout works).")


@dataclass(frozen=True)
class WeightsEntry:
    """One row of :func:`list_weights`: a weight set, where it comes from and whether it is on disk."""

    model: str
    tag: str
    sources: tuple[str, ...]
    license: str
    top1: float | None
    img_size: int
    cached: Path | None
    note: str = ""


def list_weights(pattern: str = "*", *, cache_dir: str | os.PathLike | None = None) -> list[WeightsEntry]:
    """The published weight sets of the models matching ``pattern`` (one row per set; a model without any
    gets one row with an empty tag and the reason in ``note``)."""
    rows = []
    for name in list_models(pattern):
        cfg = get_config(name)
        if not cfg.weights:
            rows.append(WeightsEntry(name, "", (), "", None, cfg.img_size, None, cfg.weights_note))
        for w in cfg.weights:
            rows.append(WeightsEntry(
                name, w.tag, tuple(f"{f.origin}: {f.url}" for f in w.files), w.license, w.top1, w.img_size,
                cached_file(name, w.tag, cache_dir=cache_dir)))
    return rows
