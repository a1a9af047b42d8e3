"""`facerec identify IMAGE...`: who is in each photo and each video, by the gallery."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from tqdm import tqdm

from facerec.cli import echo_json, warn
from facerec.cli.options import (
    OutputFolder,
    aligner_options,
    answer_options,
    backbone_options,
    detector_options,
    explicit_models,
    gallery_option,
    precision_option,
)
from facerec.cli.video import per_frame_option, stride_option
from facerec.gallery.identify import IdentifiedImage

if TYPE_CHECKING:
    from facerec.gallery.annotate import AnnotatedFolder

UNKNOWN = "unknown"


@click.command(name="identify")
@click.argument("images", nargs=-1, required=True)
@gallery_option
@answer_options
@click.option(
    "--json", "as_json", is_flag=True, help="JSON Lines on stdout, one object per image (per video track)."
)
@click.option(
    "--annotate",
    type=OutputFolder(),
    metavar="OUTDIR",
    help="Write each photo (each video, as OUTDIR/NAME.mp4) with boxes and names drawn into OUTDIR.",
)
@stride_option
@per_frame_option
@backbone_options
@precision_option
@detector_options
@aligner_options
@click.pass_context
def command(ctx, images, gallery, threshold, top_k, as_json, annotate, stride, per_frame, device, **_models):
    """Identify every face in IMAGES (photos and videos, told apart by their content) against the gallery.

    The gallery's own models embed the faces (no model options needed); model options, when given,
    must be the gallery's, and anything else is refused. In a video, faces are tracked and each track
    is named once from its best views: --json prints one object per track (--per-frame: per frame). An
    image or video that cannot be read is named on stderr and the others are still answered; the exit
    status is then 1, at the end.
    """
    from facerec.api import open_gallery
    from facerec.cli.video import show_video
    from facerec.video.source import is_video

    found = open_gallery(gallery, device)
    models = explicit_models(ctx)
    failed = 0
    for video, group in itertools.groupby(images, key=is_video):
        if not video:
            photos = tuple(group)
            results = found.identify_all(photos, threshold=threshold, top_k=top_k, **models)
            failed += show(results, photos, found.identities(), as_json, annotate)
            continue
        for clip in group:
            options = {"threshold": threshold, "top_k": top_k, "stride": stride, **models}
            failed += not show_video(
                found, clip, as_json=as_json, per_frame=per_frame, annotate=annotate, **options
            )
    if failed:
        raise click.exceptions.Exit(1)


def show(results, images, identities: dict[str, int], as_json: bool, annotate: Path | None) -> int:
    """Print results as they come (JSON Lines or a table), draw them when asked; returns the failures."""
    from facerec.gallery.annotate import AnnotatedFolder

    table = None if as_json else Table(images, identities)
    pictures = AnnotatedFolder(annotate) if annotate else None
    failed = 0
    with tqdm(total=len(images), unit="image", disable=not sys.stderr.isatty()) as bar:
        for result in results:
            bar.update()
            if result.error is not None:
                warn(f"{result.path}: {result.error}")
                failed += 1
            elif pictures is not None:
                failed += not _drawn(pictures, result)
            if as_json:
                echo_json(result.to_json())
            elif result.error is None:
                table.print(result)
    return failed


def _drawn(pictures: AnnotatedFolder, result: IdentifiedImage) -> bool:
    """Draw `result` into `pictures`; a picture that cannot be written is named, and the batch goes on."""
    try:
        pictures.save(result.path, result.faces)
    except OSError as error:
        warn(f"{error.filename or pictures.folder}: cannot be written ({error.strerror or error})")
        return False
    return True


class Table:
    """A readable table, one row per face, its columns sized up front so rows print as results come."""

    header: str

    def __init__(self, images: tuple[str, ...], identities: dict[str, int]) -> None:
        self.image_width = max(len("IMAGE"), *(len(image) for image in images))
        self.name_width = max(len("IDENTITY"), len(UNKNOWN), *(len(name) for name in identities))
        self.header = self._row("IMAGE", "FACE", "IDENTITY", "DISTANCE", "BOX", "CANDIDATES")

    def _row(self, image, face, identity, distance, box, candidates) -> str:
        return (
            f"{image:<{self.image_width}}  {face:>4}  {identity:<{self.name_width}}  {distance:>8}  "
            f"{box:<22}  {candidates}".rstrip()
        )

    def print(self, result: IdentifiedImage) -> None:
        if self.header:  # printed with the first row, so that a failure before it leaves stdout empty
            click.echo(self.header)
            self.header = ""
        if not result.faces:
            click.echo(self._row(result.path, "-", "(no face)", "", "", ""))
        for number, found in enumerate(result.faces, 1):
            distance = "" if found.distance is None else f"{found.distance:.3f}"
            box = "[" + ", ".join(f"{v:.0f}" for v in found.face.box) + "]"
            candidates = ", ".join(f"{name} {d:.3f}" for name, d in found.candidates)
            click.echo(self._row(result.path, number, found.identity or UNKNOWN, distance, box, candidates))
