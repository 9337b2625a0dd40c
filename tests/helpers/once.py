"""Build a test fixture's folder once per test run, also when pytest-xdist runs the suite in several workers.

A session fixture runs once per *worker* under pytest-xdist, so a costly one (training a model, a two-process
reference run) would run once per worker. :func:`built_once` keeps the folder in the run's shared temporary
directory and lets the first worker build it under a file lock while the others wait and reuse it (the recipe
in pytest-xdist's documentation, "Making session-scoped fixtures execute only once").
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import pytest
from filelock import FileLock


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder ``name`` filled by ``build(folder)``, built once per run and shared by xdist workers."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # one process: an ordinary fresh folder
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    shared = tmp_path_factory.getbasetemp().parent  # this run's folder; each worker's basetemp is below it
    folder, done = shared / name, shared / f"{name}.built"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            if folder.exists():  # left half-built by a worker that failed: start again
                shutil.rmtree(folder)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder
