"""`facerec index DIR`: enroll DIR/<identity>/<image> into a gallery (only what changed since last time)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from facerec.cli import warn
from facerec.cli.options import (
    aligner_options,
    backbone_options,
    detector_options,
    explicit_models,
    gallery_option,
    parse_options,
    precision_option,
)
from facerec.errors import FacerecError


@click.command(name="index")
@click.argument("folder", type=click.Path(path_type=Path))
@gallery_option
@backbone_options
@precision_option
@detector_options
@aligner_options
@click.option(
    "--head",
    help="How identities are told apart: faiss (nearest neighbours) or classifier (softmax). "
    "Default: the gallery's, else faiss.",
)
@click.option(
    "-H",
    "--head-option",
    "head_option",
    multiple=True,
    metavar="KEY=VALUE",
    help="Head option, e.g. -H index=hnsw (repeatable).",
)
@click.pass_context
def command(ctx, folder, gallery, device, head, head_option, **_models):
    """Enroll FOLDER/<identity>/<image> into the gallery.

    The identity is the folder name. An image with several faces enrolls the largest; one with none,
    or unreadable, is named on stderr and skipped, as is every path not scanned (hidden names, files
    that are not regular, symbolic links back into FOLDER or into a loop). Re-running embeds only new or
    changed images and forgets deleted ones; a damaged gallery is rebuilt on the way. Model options
    default to the gallery's (a new gallery: inception-resnet with vggface2 weights, mtcnn, the
    backbone's aligner); options that differ from the gallery's are refused.

    Exit status 0 when any face is enrolled from FOLDER (skipped images do not change it), 1 when none is.
    """
    from facerec.api import open_gallery

    report = open_gallery(gallery, device).index(
        folder,
        head=head,
        head_options=parse_options(head_option, "--head-option") if head_option else None,
        progress=sys.stderr.isatty(),
        note=warn,
        calibration=folder,  # --precision int8 calibrates on these photos when not cached
        **explicit_models(ctx),
    )
    if report.helper:  # another process of a torchrun run: process 0 reports
        return
    click.echo(summary(report))
    if report.enrolled_from_folder == 0:
        raise FacerecError(f"{folder}: no face enrolled from this folder")


def summary(report) -> str:
    """One line: what the gallery holds now and what this run did."""
    state = f"updated to {report.version}" if report.version else "already up to date"
    if report.repaired:
        state = f"repaired and {state}"
    return (
        f"{report.gallery}: {state}; {sum(report.identities.values())} faces of {len(report.identities)} "
        f"identities ({report.embedded} embedded, {report.reused} reused, {report.unchanged} unchanged, "
        f"{report.removed} removed, {len(report.skipped)} skipped)"
    )
