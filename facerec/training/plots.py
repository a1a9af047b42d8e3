"""Line charts as PNG with Pillow alone (a loss curve, an ROC), so plotting needs no extra dependency."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from facerec.atomic import write_atomically

SIZE = (640, 480)
MARGIN = (70, 40, 30, 60)  # left, top, right, bottom
COLOURS = ("#1f77b4", "#7f7f7f", "#d62728", "#2ca02c")
TICKS = 5


@dataclass(frozen=True)
class Series:
    xs: Sequence[float]
    ys: Sequence[float]
    label: str
    width: int = 2


def line_chart(
    path: Path,
    series: Sequence[Series],
    title: str,
    x_label: str,
    y_label: str,
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
) -> None:
    """Draw `series` as lines on labelled axes and write the PNG to `path` atomically."""
    x_range = x_range or _span([x for s in series for x in s.xs])
    y_range = y_range or _span([y for s in series for y in s.ys])
    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, top, right, bottom = MARGIN[0], MARGIN[1], SIZE[0] - MARGIN[2], SIZE[1] - MARGIN[3]

    def point(x: float, y: float) -> tuple[float, float]:
        fx = (x - x_range[0]) / (x_range[1] - x_range[0])
        fy = (y - y_range[0]) / (y_range[1] - y_range[0])
        return left + fx * (right - left), bottom - fy * (bottom - top)

    draw.rectangle([left, top, right, bottom], outline="black")
    for tick in range(TICKS + 1):
        x = x_range[0] + (x_range[1] - x_range[0]) * tick / TICKS
        y = y_range[0] + (y_range[1] - y_range[0]) * tick / TICKS
        px, _ = point(x, y_range[0])
        _, py = point(x_range[0], y)
        draw.line([px, bottom, px, bottom + 4], fill="black")
        draw.text((px, bottom + 6), f"{x:.3g}", fill="black", font=font, anchor="ma")
        draw.line([left - 4, py, left, py], fill="black")
        draw.text((left - 6, py), f"{y:.3g}", fill="black", font=font, anchor="rm")
    draw.text((left, top / 2), title, fill="black", font=font, anchor="lm")
    draw.text(((left + right) / 2, SIZE[1] - 20), x_label, fill="black", font=font, anchor="mm")
    draw.text((8, (top + bottom) / 2), y_label, fill="black", font=font, anchor="lm")
    for number, line in enumerate(series):
        colour = COLOURS[number % len(COLOURS)]
        points = [point(x, y) for x, y in zip(line.xs, line.ys, strict=True)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=line.width)
        for x, y in points if len(points) < 50 else ():
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        draw.text((right, 4 + 14 * number), line.label, fill=colour, font=font, anchor="ra")
    write_atomically(Path(path), lambda f: image.save(f, format="PNG"))


def _span(values: Sequence[float]) -> tuple[float, float]:
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    return (low, high) if high > low else (low - 0.5, high + 0.5)


def loss_curve(path: Path, epochs: Sequence[int], losses: Sequence[float]) -> None:
    """The training loss per epoch."""
    top = max(losses, default=1.0)
    line_chart(
        path, [Series(epochs, losses, "loss")], "training loss", "epoch", "loss", y_range=(0.0, top or 1.0)
    )


def roc_curve(path: Path, far: Sequence[float], tar: Sequence[float], auc: float) -> None:
    """The ROC (true- against false-accept rate) with the chance diagonal."""
    line_chart(
        path,
        [Series(far, tar, f"ROC, AUC {auc:.4f}"), Series([0, 1], [0, 1], "chance", width=1)],
        "verification ROC",
        "false accept rate",
        "true accept rate",
        (0.0, 1.0),
        (0.0, 1.0),
    )
