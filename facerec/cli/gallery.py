"""`facerec gallery`: what a gallery holds: who, how many faces each, and which models made it; and
`--repair`, which checks every file of it and rebuilds what is damaged."""

from __future__ import annotations

import click

from facerec.cli import echo_json, warn
from facerec.cli.options import gallery_option
from facerec.errors import FacerecError


@click.command(name="gallery")
@gallery_option
@click.option("--json", "as_json", is_flag=True, help="JSON Lines on stdout, one object per identity.")
@click.option(
    "--repair",
    is_flag=True,
    help="Check every file against its recorded size and SHA-256 and rebuild what is damaged: the head "
    "from the vectors, the vectors from the photos still on disk, the current version from the newest "
    "readable one.",
)
def command(gallery, as_json, repair):
    """Show the gallery's identities with their face counts, and how it was made.

    Every file of the gallery is checked as it opens; a damaged gallery is named in one line (exit
    status 1), and `--repair` (or the next `facerec index`) rebuilds it.
    """
    from facerec.gallery.stores import open_store

    store = open_store(gallery)  # its location names it in messages (a URI's password as ***)
    if repair:
        click.echo(repaired(store))
        return
    snapshot = store.read()
    if snapshot is None:
        raise FacerecError(
            f"{store.location}: no gallery here; run `facerec index DIR` first or pass --gallery"
        )
    try:
        identities = snapshot.identities()
        unnamed = identities.pop("", 0)  # clustered faces of people nobody named (`facerec people`)
        if as_json:
            for name, count in identities.items():
                echo_json({"identity": name, "faces": count})
            return
        click.echo(f"gallery   {store.location} ({snapshot.version}, written {snapshot.written_at})")
        click.echo(f"models    {snapshot.provenance.describe()}")
        click.echo(f"head      {snapshot.head_name} {snapshot.head_options}")
        click.echo(f"faces     {sum(identities.values())} of {len(identities)} identities")
        if unnamed:
            click.echo(f"          and {unnamed} clustered faces of people not named yet (facerec people)")
        width = max((len(name) for name in identities), default=0)
        for name, count in identities.items():
            click.echo(f"  {name:<{width}}  {count}")
    finally:
        snapshot.close()


def repaired(store) -> str:
    """Repair the gallery (what was damaged goes to stderr); one line saying what it holds now."""
    from facerec.api import open_gallery

    report = open_gallery(store).repair(note=warn)
    faces = f"{sum(report.identities.values())} faces of {len(report.identities)} identities"
    if report.version is None:
        return f"{store.location}: intact, nothing to repair; {faces}"
    return f"{store.location}: repaired, now {report.version}; {faces} ({report.embedded} embedded again)"
