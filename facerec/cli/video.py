"""How `identify` and `watch` show a video: JSON Lines (one object per track, or per frame), or a table
of tracks on a terminal, a progress bar for files, and the annotated copy."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from facerec.cli import echo_json, warn
from facerec.errors import FacerecError

stride_option = click.option(
    "--stride",
    type=click.IntRange(min=1),
    help="Videos: detect faces every N frames and follow them in between [default: as many frames as "
    "keep detection within half of the video's time].",
)
per_frame_option = click.option(
    "--per-frame", is_flag=True, help="Videos: print one JSON object per frame instead of one per track."
)


def show_video(
    gallery: Any,
    source: str,
    *,
    as_json: bool,
    per_frame: bool,
    annotate: Path | None,
    live: bool | None = None,
    stop: Callable[[], bool] | None = None,
    **options: Any,
) -> bool:
    """Follow one video and print what `identify` / `watch` print for it; False when it could not be
    opened or read whole (named on stderr in one line)."""
    from facerec.video.annotate import annotated, draw
    from facerec.video.follow import FrameReport

    try:
        following = gallery.follow(source, live=live, stop=stop, **options)
    except FacerecError as error:  # named as a photo that cannot be read is: the others go on
        warn(str(error))
        return False
    video = following.source
    table = None if as_json else TrackTable()
    drawing = (
        annotated(annotate / f"{_stem(source)}.mp4", video.rate, video.size) if annotate else nullcontext()
    )
    bar = tqdm(total=None if video.live else video.frame_count, unit="frame", disable=not sys.stderr.isatty())
    with bar, drawing as writer:
        for event in following:
            if isinstance(event, FrameReport):
                bar.update()
                if writer is not None:
                    writer.write(draw(event))
                if per_frame and as_json:
                    echo_json(event.to_json())
            elif as_json and not per_frame:
                echo_json(event.to_json())
            elif table is not None:
                table.print(event)
    said = video.summary()
    if said:
        warn(said)
    return video.problem is None and not video.undecodable


def _stem(source: str) -> str:
    """A file name for the annotated copy of `source`: its stem, or a readable form of a URL/device."""
    name = Path(source.split("?", 1)[0].rstrip("/")).stem or "video"
    return re.sub(r"[^\w.-]+", "_", name)


class TrackTable:
    """Tracks as they end, one row each."""

    def __init__(self) -> None:
        self.header = (
            f"{'TRACK':>5}  {'IDENTITY':<24}  {'DISTANCE':>8}  {'START':>8}  {'END':>8}  FRAMES  VIDEO"
        )

    def print(self, report: Any) -> None:
        if self.header:
            click.echo(self.header)
            self.header = ""
        record = report.to_json()
        distance = "" if record["distance"] is None else f"{record['distance']:.3f}"
        identity = record["identity"] or "unknown"
        state = "" if report.ended else "  (renamed)"
        click.echo(
            f"{record['track']:>5}  {identity:<24}  {distance:>8}  {record['start']:>8.2f}  "
            f"{record['end']:>8.2f}  {len(record['frames']):>6}  {record['video']}{state}"
        )
