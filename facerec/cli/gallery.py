"""`facerec gallery`: what a gallery holds: who, how many faces each, and which models made it."""

from __future__ import annotations

import click

from facerec.cli import echo_json
from facerec.cli.options import gallery_option
from facerec.errors import FacerecError


@click.command(name="gallery")
@gallery_option
@click.option("--json", "as_json", is_flag=True, help="JSON Lines on stdout, one object per identity.")
def command(gallery, as_json):
    """Show the gallery's identities with their face counts, and how it was made."""
    from facerec import gallery as store

    snapshot = store.read(gallery)
    if snapshot is None:
        raise FacerecError(f"{gallery}: no gallery here; run `facerec index DIR` first or pass --gallery")
    try:
        identities = snapshot.identities()
        if as_json:
            for name, count in identities.items():
                echo_json({"identity": name, "faces": count})
            return
        click.echo(f"gallery   {gallery} ({snapshot.version}, written {snapshot.meta['written_at']})")
        click.echo(f"models    {snapshot.provenance.describe()}")
        click.echo(f"head      {snapshot.head_name} {snapshot.head_options}")
        click.echo(f"faces     {sum(identities.values())} of {len(identities)} identities")
        width = max((len(name) for name in identities), default=0)
        for name, count in identities.items():
            click.echo(f"  {name:<{width}}  {count}")
    finally:
        snapshot.close()
