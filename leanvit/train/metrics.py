"""Run logging on rank 0: one CSV row per epoch, TensorBoard scalars, the end-of-run summary."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any
from .._io import atomic_write

__all__ = ["RunLogger", "CSV_FIELDS"]

log = logging.getLogger("leanvit.train")

CSV_FIELDS = [
    "epoch", "global_step", "lr", "train_loss", "train_images_per_s", "epoch_time_s",
    "val_loss", "top1", "top5", "ema_top1", "ema_top5", "skipped_files",
]


class RunLogger:
    """CSV (``metrics.csv``) and TensorBoard (``tb/``) writers; inactive on ranks other than 0."""

    def __init__(self, output: Path, active: bool, csv_on: bool = True, tensorboard: bool = True,
                 resume_epoch: int | None = None, fields: list[str] | None = None) -> None:
        self.active = active
        self.fields = list(fields or CSV_FIELDS)
        self.csv_path = output / "metrics.csv" if active and csv_on else None
        self.tb = None
        if self.csv_path is not None:
            self._prepare_csv(resume_epoch)
        if active and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(output / "tb"))
            except ImportError:
                log.warning("tensorboard is not installed; TensorBoard logging is off (pip install tensorboard)")

    def _prepare_csv(self, resume_epoch: int | None) -> None:
        assert self.csv_path is not None
        if resume_epoch is None or not self.csv_path.exists():
            with open(self.csv_path, "w", newline="") as f:
                csv.DictWriter(f, self.fields).writeheader()
            return
        # Resuming: keep rows up to the checkpoint's epoch; later rows belong to the abandoned run.
        with open(self.csv_path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("epoch", "").isdigit() and int(r["epoch"]) <= resume_epoch]
        with open(self.csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, self.fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def scalar(self, tag: str, value: float, step: int) -> None:
        """One TensorBoard scalar."""
        if self.tb is not None:
            self.tb.add_scalar(tag, value, step)

    def epoch_row(self, row: dict[str, Any]) -> None:
        """Append one epoch's metrics to the CSV and TensorBoard."""
        if not self.active:
            return
        if self.csv_path is not None:
            with open(self.csv_path, "a", newline="") as f:
                csv.DictWriter(f, self.fields, extrasaction="ignore").writerow(
                    {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        for k, v in row.items():
            if isinstance(v, (int, float)) and v is not None and k not in ("epoch", "global_step"):
                self.scalar(f"epoch/{k}", float(v), int(row["epoch"]))
        if self.tb is not None:
            self.tb.flush()

    def summary(self, output: Path, summary: dict[str, Any]) -> None:
        """Print the end-of-run summary and write ``summary.json``."""
        if not self.active:
            return

        text = json.dumps(summary, indent=2)
        atomic_write(output / "summary.json", lambda tmp: Path(tmp).write_text(text))
        lines = [f"  {k}: {v}" for k, v in summary.items() if k != "skipped_paths"]
        log.info("training finished\n%s", "\n".join(lines))

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None
