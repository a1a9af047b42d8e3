"""`facerec demo`: the main job end to end: fetch the demo set and weights, index, identify, draw."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from facerec.cli import warn
from facerec.cli.identify import show
from facerec.cli.index import summary
from facerec.cli.options import OutputFolder, backbone_options, explicit_models, gallery_option
from facerec.demo import GALLERY_DIR, PHOTOS_DIR


@click.command(name="demo")
@gallery_option
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default=str(GALLERY_DIR),
    show_default=True,
    help="Folder of <person>/<image> to index; the demo's people are fetched into it when it has none.",
)
@click.option(
    "--photos",
    type=click.Path(file_okay=False, path_type=Path),
    default=str(PHOTOS_DIR),
    show_default=True,
    help="Where the demo's test photos (the ones to identify) are fetched.",
)
@click.option(
    "--out",
    type=OutputFolder(),
    default="out/annotated",
    show_default=True,
    help="Where the annotated photos are written.",
)
@backbone_options
@click.pass_context
def command(ctx, gallery, data, photos, out, device, **_models):
    """Fetch ageitgey/face_recognition's five-person demo set (verified), index it, identify its test photos.

    Needs the network, or FACEREC_MIRROR pointing at a mirror; files already in place are not fetched again.
    """
    from facerec import demo
    from facerec.api import open_gallery

    test_photos = [str(path) for path in demo.fetch(data, photos, note=warn)]
    found = open_gallery(gallery, device)
    report = found.index(data, progress=sys.stderr.isatty(), note=warn, **explicit_models(ctx))
    click.echo(summary(report))
    failed = show(found.identify_all(test_photos), test_photos, found.identities(), False, out)
    click.echo(f"annotated photos in {out}/")
    if failed:
        raise click.exceptions.Exit(1)
