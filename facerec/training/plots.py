"""The charts of a run, drawn with matplotlib: the training loss per epoch, and the verification ROC.

The ROC is drawn as the field reads it: true-accept rate against false-accept rate on a logarithmic FAR
axis, with the TAR at the FAR `evaluate` reports (1e-3 by default) marked, since the low-FAR end is where
face verification systems differ. matplotlib is imported on first use, with the file-only Agg backend, so
loading the trainer costs nothing and no display is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

from facerec.atomic import write_atomically

SIZE_INCHES = (6.4, 4.8)
DPI = 100


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure  # a Figure of its own: no global pyplot state

    figure = Figure(figsize=SIZE_INCHES, dpi=DPI, layout="constrained")
    return figure, figure.add_subplot()


def _save(figure: Any, path: Path) -> None:
    buffer = BytesIO()
    figure.savefig(buffer, format="png")
    write_atomically(Path(path), lambda f: f.write(buffer.getvalue()))


def loss_curve(path: Path, epochs: Sequence[int], losses: Sequence[float]) -> None:
    """The training loss per epoch, written to `path` as PNG (atomically)."""
    _save(loss_figure(epochs, losses), path)


def loss_figure(epochs: Sequence[int], losses: Sequence[float]) -> Any:
    """The loss chart as a matplotlib Figure."""
    figure, axes = _figure()
    axes.plot(epochs, losses, marker="o" if len(epochs) < 50 else None, label="loss")
    axes.set(title="training loss", xlabel="epoch", ylabel="loss")
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    return figure


def roc_curve(
    path: Path,
    far: Sequence[float],
    tar: Sequence[float],
    auc: float,
    marked: tuple[float, float] | None = None,
) -> None:
    """The verification ROC on a log FAR axis, written to `path` as PNG (atomically)."""
    _save(roc_figure(far, tar, auc, marked), path)


def roc_figure(
    far: Sequence[float], tar: Sequence[float], auc: float, marked: tuple[float, float] | None = None
) -> Any:
    """The ROC chart as a matplotlib Figure.

    `marked` is (FAR, TAR) of the operating point to show, such as TAR at FAR 1e-3. Points at FAR 0
    cannot sit on a log axis: the axis starts at the smallest resolvable FAR (one impostor pair in the
    smallest non-zero step), and the curve starts there.
    """
    positive = [value for value in far if value > 0]
    floor = min(positive, default=1e-3)
    if marked is not None and marked[0] > 0:
        floor = min(floor, marked[0])
    points = [(max(f, floor), t) for f, t in zip(far, tar, strict=True)]
    figure, axes = _figure()
    axes.plot([p[0] for p in points], [p[1] for p in points], label=f"ROC, AUC {auc:.4f}")
    if marked is not None:
        at, rate = marked
        axes.axvline(at, color="grey", linestyle=":", linewidth=1)
        axes.plot([at], [rate], "o", color="tab:red", label=f"TAR {rate:.3f} at FAR {at:g}")
    axes.set_xscale("log")
    axes.set_xlim(floor, 1.0)
    axes.set_ylim(0.0, 1.01)
    axes.set(title="verification ROC", xlabel="false accept rate (log)", ylabel="true accept rate")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right")
    return figure
