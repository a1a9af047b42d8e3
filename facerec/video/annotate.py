"""Annotated copies of videos: every frame, with each face's box, track number and name drawn, as H.264.

The copy keeps the source's frame rate and frame count. It is written to a temporary file beside the
target and renamed into place only when complete, so an interrupted run leaves no half-written video.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

from PIL import Image

from facerec.gallery.annotate import Label, draw_labels
from facerec.video.follow import FrameReport

CODEC = "libx264"
OPTIONS = {"preset": "veryfast", "crf": "23"}


def labels(report: FrameReport) -> list[Label]:
    """What is drawn on a frame: `#TRACK NAME DISTANCE` under each face's box."""
    drawn = []
    for sighting, track in report.faces:
        text = f"#{track.number} {track.identity if track.identity is not None else 'unknown'}"
        if track.distance is not None:
            text += f" {track.distance:.2f}"
        drawn.append(Label(sighting.face.box, text, track.identity is not None))
    return drawn


class VideoWriter:
    """Frames encoded into `target` (see the module docstring); `close()` publishes it."""

    def __init__(self, target: Path, rate: Fraction | float, size: tuple[int, int]) -> None:
        import av

        self.target = Path(target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.temporary = self.target.with_name(f".{self.target.name}.{os.getpid()}.part")
        self.size = (size[0] - size[0] % 2, size[1] - size[1] % 2)  # 4:2:0 needs even sides
        rate = Fraction(rate).limit_denominator(1001 * 1000)
        self.container = av.open(str(self.temporary), "w", format="mp4")
        self.stream = self.container.add_stream(CODEC, rate=rate, options=OPTIONS)
        self.stream.width, self.stream.height = self.size
        self.stream.pix_fmt = "yuv420p"
        self.stream.time_base = 1 / rate
        self.count = 0

    def write(self, image: Image.Image) -> None:
        import av

        if image.size != self.size:
            image = image.crop((0, 0, *self.size))
        frame = av.VideoFrame.from_image(image.convert("RGB")).reformat(format="yuv420p")
        frame.pts = self.count
        self.count += 1
        self.container.mux(self.stream.encode(frame))

    def close(self) -> Path:
        """Flush the encoder and rename the finished file into place."""
        self.container.mux(self.stream.encode(None))
        self.container.close()
        os.replace(self.temporary, self.target)
        return self.target

    def abandon(self) -> None:
        """Drop the unfinished file."""
        with contextlib.suppress(Exception):
            self.container.close()
        self.temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def annotated(target: Path, rate: Fraction | float, size: tuple[int, int]) -> Iterator[Any]:
    """A VideoWriter that publishes `target` when the block ends normally and leaves nothing otherwise."""
    writer = VideoWriter(target, rate, size)
    try:
        yield writer
    except BaseException:
        writer.abandon()
        raise
    writer.close()


def draw(report: FrameReport) -> Image.Image:
    """The frame with its faces drawn."""
    return draw_labels(report.image, labels(report))
