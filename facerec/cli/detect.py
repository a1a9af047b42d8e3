"""`facerec detect`: the faces in each image, with boxes, scores and landmarks, and optionally their crops."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from facerec import defaults
from facerec.cli import each_result, echo_json, make_pipeline
from facerec.cli.options import OutputFolder, aligner_options, detector_options, precision_option
from facerec.contract.faces import Face
from facerec.errors import FacerecError
from facerec.pipeline.engine import ImageResult


@click.command(name="detect")
@click.argument("images", nargs=-1, required=True)
@detector_options
@precision_option
@aligner_options
@click.option(
    "--backbone",
    default=defaults.BACKBONE,
    show_default=True,
    help="The backbone whose input recipe (size, aligner) makes the --save-crops pictures.",
)
@click.option("--json", "as_json", is_flag=True, help="JSON Lines on stdout, one object per image.")
@click.option(
    "--save-crops",
    type=OutputFolder(),
    help="Write each face as the backbone takes it (its recipe's aligner and size, or --aligner's) as "
    "DIR/<image name>_<n>.png (n=1 largest).",
)
@click.pass_context
def command(ctx, images, as_json, save_crops, **_models):
    """Detect the faces in IMAGES: box [x1, y1, x2, y2], score and five landmarks each, largest first.

    An image that cannot be read is named on stderr and the others are still processed; the exit status
    is then 1, at the end.
    """
    pipeline = make_pipeline(ctx.params, embed=False)
    crops = CropWriter(Path(save_crops)) if save_crops else None
    for result in each_result(pipeline, images):
        if crops is not None and result.error is None:
            crops.write(result)
        if as_json:
            echo_json(result.to_json())
        elif result.error is None:
            print_table(result)


class CropWriter:
    """Writes the crops of each image as PNG under one folder; repeated image names get a -2, -3 suffix."""

    def __init__(self, folder: Path) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise FacerecError(f"--save-crops: cannot create {folder}: {error.strerror}") from None
        self.folder = folder
        self.seen: Counter[str] = Counter()

    def write(self, result: ImageResult) -> None:
        stem = Path(result.path).stem
        self.seen[stem] += 1
        if self.seen[stem] > 1:
            stem = f"{stem}-{self.seen[stem]}"
        for number, crop in enumerate(result.crops, start=1):
            target = self.folder / f"{stem}_{number}.png"
            try:
                crop.save(target)
            except OSError as error:
                raise FacerecError(f"--save-crops: cannot write {target}: {error.strerror}") from None


def print_table(result: ImageResult) -> None:
    """A human-readable table of one image's faces."""
    click.echo(f"{result.path}: {len(result.faces)} face{'' if len(result.faces) == 1 else 's'}")
    if result.faces:
        click.echo(
            f"  {'#':>2}  {'box (x1, y1, x2, y2)':<26}{'score':>7}  landmarks (eyes, nose, mouth corners)"
        )
    for number, face in enumerate(result.faces, start=1):
        click.echo(f"  {number:>2}  {_box(face):<26}{_score(face):>7}  {_landmarks(face)}")


def _box(face: Face) -> str:
    return "[" + ", ".join(f"{value:.0f}" for value in face.box) + "]"


def _score(face: Face) -> str:
    return "-" if face.score is None else f"{face.score:.4f}"


def _landmarks(face: Face) -> str:
    if face.landmarks is None:
        return "-"
    return " ".join(f"({x:.0f},{y:.0f})" for x, y in face.landmarks)
