"""Preemption: SIGTERM, SIGUSR1 (SLURM's ``--signal``) and SIGINT stop training cleanly.

On the first signal the trainer finishes the optimizer update in progress; then every process agrees
(one all-reduce per update) to stop after that same update, rank 0 writes ``last.ckpt`` at that step
(atomically), and ``leanvit train`` exits with :data:`PREEMPTED_EXIT_CODE`. Running the same command
again continues the run. Further signals while stopping are logged and ignored, so they cannot
interrupt the checkpoint write (SIGKILL still can: the atomic write then leaves the previous file).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from .distributed import DistInfo, all_reduce_sum

__all__ = ["PREEMPTED_EXIT_CODE", "PREEMPTION_SIGNALS", "TrainingPreempted", "PreemptionGuard"]

# EX_TEMPFAIL from sysexits.h: "a temporary failure; the user is invited to retry".
PREEMPTED_EXIT_CODE = 75
PREEMPTION_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")

log = logging.getLogger("leanvit.train")


class TrainingPreempted(Exception):
    """Training stopped on a signal after writing a checkpoint; running the same command again continues."""

    def __init__(self, signal_name: str | None, checkpoint: Path, global_step: int) -> None:
        self.signal_name = signal_name
        self.checkpoint = checkpoint
        self.global_step = global_step
        cause = signal_name or "a signal received by another process"
        super().__init__(f"stopped on {cause} after update {global_step}; checkpoint {checkpoint} holds that "
                         f"step. Run the same command again to continue (exit code {PREEMPTED_EXIT_CODE})")


class PreemptionGuard:
    """Records preemption signals while installed; :meth:`agreed` tells every rank when to stop."""

    def __init__(self, signals: tuple[str, ...] = PREEMPTION_SIGNALS) -> None:
        self.signals = signals
        self.signal_name: str | None = None  # the first signal this process received
        self.stopping = False  # agreed by all processes
        self._previous: dict[int, Any] = {}
        self._owner_pid = 0

    def install(self) -> None:
        """Catch the signals (main thread only; elsewhere Python cannot, and the defaults stay)."""
        if self._previous or threading.current_thread() is not threading.main_thread():
            return
        self._owner_pid = os.getpid()
        for name in self.signals:
            number = getattr(signal, name, None)
            if number is not None:
                self._previous[number] = signal.signal(number, self._handle)

    def uninstall(self) -> None:
        """Restore the handlers that were there before :meth:`install`."""
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        # Forked DataLoader workers inherit this handler; they ignore the signal and let the trainer decide
        # (dying on it would crash the trainer before it can save).
        if os.getpid() != self._owner_pid:
            return
        name = signal.Signals(number).name
        if self.signal_name is None:
            self.signal_name = name
            log.warning("received %s: finishing the current update, then writing a checkpoint and exiting with "
                        "code %d", name, PREEMPTED_EXIT_CODE)
        else:
            log.warning("received %s while already stopping on %s: ignored, the checkpoint is being finished",
                        name, self.signal_name)

    @property
    def requested(self) -> bool:
        """True once this process received a signal."""
        return self.signal_name is not None

    def agreed(self, info: DistInfo) -> bool:
        """True on every process once any process received a signal. A collective: call it on all ranks at the
        same point of the loop (after each update); once True it stays True without further communication."""
        if not self.stopping:
            self.stopping = all_reduce_sum([1.0 if self.requested else 0.0], info)[0] > 0
        return self.stopping
