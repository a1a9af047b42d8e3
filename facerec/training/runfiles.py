"""The files of a run folder (docs/training.md), written atomically and never as pickle.

- `metrics.jsonl`: one JSON object per finished epoch, `{"epoch": N, "loss": X, ...}`, strict JSON (no
  NaN or Infinity: a run whose loss stops being finite stops before logging it);
- `backbone.pt`: the trained network's state dict in its backbone's layout (usable as `--weights`);
- `checkpoint.pt`: what `--resume` needs: model, optimizer, epoch, sampler seed and the run's settings;
  plain tensors, numbers, strings, lists and dicts, so it loads with `weights_only=True`;
- `loss.png`: the loss curve.

`backbone.pt` and `checkpoint.pt` each have their checksum beside them (`backbone.pt.xxh128`, see
facerec.integrity), written with them: `--resume` and `--weights` refuse a file that does not match it,
in one line naming the file, instead of training on or embedding with whatever a damaged file decodes to.
A sidecar per file rather than one record for the run, because `backbone.pt` travels alone as
`--weights FILE` (copy its `.xxh128` with it to keep it checked) and each file is then written on its own.
Neither is ever written holding NaN or infinity.

An epoch's metrics line is written before its checkpoint and replaces any line of that epoch or later, so
a run killed between the two writes redoes that epoch when resumed and logs it once.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from facerec.atomic import write_atomically
from facerec.errors import FacerecError
from facerec.integrity import Damaged, first_not_finite, read_checked, write_checked
from facerec.training.plots import loss_curve

CHECKPOINT = "checkpoint.pt"
BACKBONE = "backbone.pt"
METRICS = "metrics.jsonl"
LOSS_CURVE = "loss.png"


def save_tensors(path: Path, state: Mapping[str, Any]) -> None:
    """torch.save `state` to `path` atomically, its checksum beside it; refused (FacerecError naming the
    tensor) when a floating tensor in it is not finite: such a file would only pass the damage on."""
    bad = first_not_finite(state)
    if bad is not None:
        raise FacerecError(f"{path}: not written: tensor {bad} holds NaN or infinity")
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    write_checked(path, buffer.getbuffer())


class RunFolder:
    """A run folder; only one process of a distributed run writes to it."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        save_tensors(self.checkpoint, state)

    def load_checkpoint(self) -> dict[str, Any]:
        """The checkpoint, checked against its recorded checksum and loaded with weights_only=True; one
        clear line when it is missing, damaged, unreadable or holds tensors that are not finite."""
        if not self.checkpoint.is_file():
            raise FacerecError(f"{self.checkpoint}: no checkpoint to resume from")
        try:
            data, _ = read_checked(self.checkpoint)
        except Damaged as error:
            raise FacerecError(f"{error}; it cannot be resumed (start a new --out)") from None
        except OSError as error:
            raise FacerecError(f"{self.checkpoint}: cannot be read ({error.strerror})") from None
        try:
            checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for bad files; all mean "cannot resume"
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise FacerecError(
                f"{self.checkpoint}: not a checkpoint that loads safely ({first_line})"
            ) from None
        if not isinstance(checkpoint, Mapping):
            raise FacerecError(f"{self.checkpoint}: not a facerec checkpoint (expected a mapping)")
        bad = first_not_finite(checkpoint)
        if bad is not None:
            raise FacerecError(f"{self.checkpoint}: tensor {bad} holds NaN or infinity; it cannot be resumed")
        self.metrics()  # the log a resumed run rewrites must read too
        return checkpoint

    def save_backbone(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        save_tensors(self.path / BACKBONE, {k: v.detach().cpu() for k, v in state_dict.items()})

    def metrics(self) -> list[dict[str, Any]]:
        """The logged epochs; one line naming the file and line when one is not an epoch's record, so
        that `--resume` stops before training rather than after its first epoch, when it logs it."""
        path = self.path / METRICS
        try:
            lines = path.read_text("utf-8").splitlines()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as error:
            why = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
            raise FacerecError(f"{path}: cannot be read ({why})") from None
        records = []
        for number, line in enumerate(lines, 1):
            if line.strip():
                records.append(_epoch_record(line, f"{path}, line {number}"))
        return records

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        """Rewrite `metrics.jsonl` with `records` and redraw the loss curve from them."""
        text = "".join(json.dumps(record, allow_nan=False) + "\n" for record in records)
        write_atomically(self.path / METRICS, lambda f: f.write(text.encode()))
        if records:
            loss_curve(self.path / LOSS_CURVE, [r["epoch"] for r in records], [r["loss"] for r in records])

    def diverged(self, at: str, cause: str, finished: int, lr: float | None) -> FacerecError:
        """The one line that stops a run whose loss or gradients stopped being finite `at` a step, with
        `finished` epochs saved in this folder and the learning rate `lr` (None: the run has none)."""
        kept = (
            f"{self.path} keeps the files of epoch {finished}"
            if finished
            else f"nothing was written to {self.path}"
        )
        lower = "a lower --lr" if lr is None else f"a lower --lr than {lr:g}"
        return FacerecError(f"training diverged at {at} ({cause}); {kept}; try {lower} in a new --out")

    def add_metrics(self, record: dict[str, Any]) -> None:
        """Log a finished epoch (replacing a line of the same epoch left by an interrupted run)."""
        kept = [r for r in self.metrics() if r["epoch"] < record["epoch"]]
        self.write_metrics([*kept, record])


def _epoch_record(line: str, where: str) -> dict[str, Any]:
    """A line of `metrics.jsonl` as `write_metrics` writes it, or FacerecError naming `where`."""
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if not (
        isinstance(record, dict)
        and type(record.get("epoch")) is int
        and type(record.get("loss")) in (int, float)
        and math.isfinite(record["loss"])
    ):
        raise FacerecError(
            f"{where}: not an epoch's record (an epoch number and a finite loss); mend or remove it"
        )
    return record
