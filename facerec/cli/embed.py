"""`facerec embed`: the embedding of every face in each image."""

from __future__ import annotations

import click

from facerec.cli import backbone_options, detector_options, each_result, echo_json, make_pipeline


@click.command(name="embed")
@click.argument("images", nargs=-1, required=True)
@backbone_options
@detector_options
@click.option("--json", "as_json", is_flag=True, help="JSON Lines on stdout, one object per image.")
def command(
    images, backbone, pretrained, weights, device, detector, detector_options, margin, align, as_json
):
    """Embed every face in IMAGES (use --detector none for aligned face crops)."""
    model = {"name": backbone, "pretrained": pretrained, "weights": weights, "device": device}
    pipeline = make_pipeline(detector, detector_options, margin, align, model)
    for result in each_result(pipeline, images):
        if as_json:
            echo_json(result.to_json())
        elif result.error is None:
            click.echo(f"{result.path}: {len(result.faces)} face(s)")
            for face, vector in zip(result.faces, result.embeddings.tolist(), strict=True):
                box = ", ".join(f"{v:.0f}" for v in face.box)
                head = " ".join(f"{v:+.4f}" for v in vector[:4])
                click.echo(f"  box [{box}]  embedding [{head} ...] ({len(vector)}-d)")
