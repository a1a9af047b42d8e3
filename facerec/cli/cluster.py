"""`facerec cluster PHOTOS...`: find every face of a photo library and group the faces into people."""

from __future__ import annotations

import click

from facerec.cli import echo_json, warn
from facerec.cli.options import (
    aligner_options,
    backbone_options,
    detector_options,
    explicit_models,
    gallery_option,
    parse_options,
    precision_option,
)


@click.command(name="cluster")
@click.argument("photos", nargs=-1, required=True)
@gallery_option
@backbone_options
@precision_option
@detector_options
@aligner_options
@click.option(
    "-C",
    "--cluster-option",
    "cluster_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="rule=incremental|chinese-whispers|dbscan (default incremental), min_faces=N (default 2).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="JSON Lines: one object per person, then the unassigned."
)
@click.pass_context
def command(ctx, photos, gallery, device, cluster_options, as_json, **_models):
    """Group the faces of PHOTOS (files or folders) into people.

    Every face of every photo is detected and embedded, only for photos that are new or changed since
    the last run; the faces then join the nearest person or form new people, and faces close to nobody
    stay unassigned. People, names and the choices made with `facerec people` are kept across runs.
    """
    from facerec.gallery.models import ModelRequest
    from facerec.people.library import cluster

    options = parse_options(cluster_options, "--cluster-option")
    unknown = set(options) - {"rule", "min_faces"}
    if unknown:
        raise click.UsageError(
            f"--cluster-option: unknown option(s) {', '.join(sorted(unknown))} (rule, min_faces)"
        )
    request = ModelRequest(device=device, **explicit_models(ctx))
    report = cluster(
        gallery, photos, request, options.get("rule", "incremental"), options.get("min_faces", 2), warn
    )
    if as_json:
        from facerec.people.library import listing

        for record in listing(gallery):
            echo_json(record)
        return
    counts = report.people.counts()
    state = f"updated to {report.version}" if report.version else "already up to date"
    click.echo(
        f"{report.gallery}: {state}; {report.faces} faces of {report.photos} photos ({report.embedded} embedded), "
        f"{len(counts)} people, {report.faces - sum(counts.values()) - len(report.people.forgotten)} faces unassigned"
    )
