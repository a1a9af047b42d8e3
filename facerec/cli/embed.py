"""`facerec embed`: the embedding of every face in each image."""

from __future__ import annotations

import click

from facerec.cli import each_result, echo_json, make_pipeline
from facerec.cli.options import aligner_options, backbone_options, detector_options, precision_option


@click.command(name="embed")
@click.argument("images", nargs=-1, required=True)
@backbone_options
@precision_option
@detector_options
@aligner_options
@click.option("--json", "as_json", is_flag=True, help="JSON Lines on stdout, one object per image.")
@click.pass_context
def command(ctx, images, as_json, **_models):
    """Embed every face in IMAGES (use --detector none for aligned face crops).

    An image that cannot be read is named on stderr and the others are still processed; the exit status
    is then 1, at the end.
    """
    pipeline = make_pipeline(ctx.params, embed=True, photos=images)
    for result in each_result(pipeline, images):
        if as_json:
            echo_json(result.to_json())
        elif result.error is None:
            click.echo(f"{result.path}: {len(result.faces)} face(s)")
            for face, vector in zip(result.faces, result.embeddings.tolist(), strict=True):
                box = ", ".join(f"{v:.0f}" for v in face.box)
                head = " ".join(f"{v:+.4f}" for v in vector[:4])
                click.echo(f"  box [{box}]  embedding [{head} ...] ({len(vector)}-d)")
