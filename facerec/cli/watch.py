"""`facerec watch SOURCE`: name the faces of a live source (a camera, an RTSP or HTTP stream) until stopped."""

from __future__ import annotations

import os
import signal

import click

from facerec.cli import warn
from facerec.cli.options import OutputFolder, answer_options, gallery_option
from facerec.cli.video import per_frame_option, stride_option
from facerec.errors import UsageError


@click.command(name="watch")
@click.argument("source", required=False, default="")
@click.option("--camera", type=click.IntRange(min=0), help="Camera number N: the device /dev/videoN.")
@gallery_option
@answer_options
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="JSON Lines on stdout: one object per track when it ends, and when a named track's name changes.",
)
@click.option(
    "--annotate",
    type=OutputFolder(),
    metavar="OUTDIR",
    help="Also record what was seen, boxes and names drawn, as OUTDIR/NAME.mp4 (written when stopped).",
)
@stride_option
@per_frame_option
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
def command(source, camera, gallery, threshold, top_k, as_json, annotate, stride, per_frame, device):
    """Follow and name the faces of SOURCE live, until it ends or Ctrl-C.

    SOURCE is a camera (/dev/videoN, or --camera N), an rtsp:// or http(s):// stream, or a video file
    played as a camera would deliver it. Frames are read at the source's own pace; when naming is
    slower than the source, frames are dropped rather than falling behind, and the count is said at
    the end. A stream that drops is reopened with back-off before giving up in one line. Ctrl-C
    reports the tracks still open and exits with status 130.
    """
    from facerec.api import open_gallery
    from facerec.cli.video import show_video
    from facerec.video.source import is_video, source_spec

    stopped = []

    def interrupted(signum, frame):
        if stopped:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        stopped.append(signum)

    spec = source_spec(source, camera)
    if os.path.isfile(spec) and not is_video(spec):  # a photo would be one frame, reported as nothing
        raise UsageError(f"{spec}: not a video; `facerec identify` names the faces of photos")
    found = open_gallery(gallery, device)
    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        options = {"threshold": threshold, "top_k": top_k, "stride": stride}
        read = show_video(
            found,
            spec,
            as_json=as_json,
            per_frame=per_frame,
            annotate=annotate,
            live=True,
            stop=lambda: bool(stopped),
            **options,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    if stopped:
        warn("stopped: the open tracks were reported")
        raise click.exceptions.Exit(130)
    if not read:
        raise click.exceptions.Exit(1)
