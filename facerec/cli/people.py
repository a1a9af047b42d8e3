"""`facerec people`: the people `facerec cluster` found; name, merge, move and forget."""

from __future__ import annotations

import click

from facerec.cli import echo_json
from facerec.cli.options import OutputFolder, gallery_option


@click.group(name="people", invoke_without_command=True)
@gallery_option
@click.option(
    "--json", "as_json", is_flag=True, help="JSON Lines: one object per person, then the unassigned."
)
@click.option(
    "--sheet",
    type=OutputFolder(),
    metavar="OUTDIR",
    help="Write a contact sheet per person (OUTDIR/<id>.png, thumbnails of its faces) to look at.",
)
@click.pass_context
def command(ctx, gallery, as_json, sheet):
    """List the people of the gallery: id, name, how many faces, a few face ids.

    A named person is an identity of the gallery: `facerec identify` answers it. Choices made here are
    never undone by a later `facerec cluster`.
    """
    ctx.obj = {"gallery": gallery}
    if ctx.invoked_subcommand is not None:
        return
    from facerec.people.library import listing

    records = listing(gallery)
    if sheet is not None:
        from facerec.people.sheets import write_sheets

        for path in write_sheets(records, sheet):
            click.echo(f"wrote {path}", err=True)
    for record in records:
        if as_json:
            echo_json(record)
            continue
        faces = record["faces"]
        shown = " ".join(face["face_id"] for face in faces[:3]) + (" ..." if len(faces) > 3 else "")
        if record["person"] is None:
            click.echo(f"{'(nobody)':<8}  {'':<24}  {len(faces):>5}  {shown}")
        else:
            click.echo(
                f"{record['person']:<8}  {record['name'] or '(no name)':<24}  {len(faces):>5}  {shown}"
            )


def _gallery(ctx) -> str:
    return ctx.obj["gallery"]


@command.command(name="name")
@click.argument("person")
@click.argument("name")
@click.pass_context
def name_command(ctx, person, name):
    """Name PERSON: its faces become the identity NAME, which `facerec identify` answers."""
    from facerec.gallery.names import NameRefused, identity_name
    from facerec.people.library import edit

    try:
        name = identity_name(name)
    except NameRefused as refused:
        raise click.UsageError(f"NAME: not an identity name ({refused.reason})") from None
    edit(_gallery(ctx), lambda people: people.name(person, name))
    click.echo(f"{person} is {name}")


@command.command(name="merge")
@click.argument("persons", nargs=-1, required=True)
@click.pass_context
def merge_command(ctx, persons):
    """Merge PERSONS into the first: it takes every face of the others, which are gone."""
    from facerec.people.library import edit

    kept = edit(_gallery(ctx), lambda people: people.merge(list(persons)))
    click.echo(f"merged into {kept}")


@command.command(name="move")
@click.argument("faces", nargs=-1, required=True)
@click.option("--to", "target", required=True, help="A person id, or `new` for a new person.")
@click.pass_context
def move_command(ctx, faces, target):
    """Move FACES (face ids) to another person, or to a new one."""
    from facerec.people.library import edit

    person = edit(_gallery(ctx), lambda people: people.move(list(faces), target))
    click.echo(f"moved {len(faces)} faces to {person}")


@command.command(name="forget")
@click.argument("faces", nargs=-1, required=True)
@click.pass_context
def forget_command(ctx, faces):
    """Forget FACES: not a face, or not wanted; no later `facerec cluster` assigns them again."""
    from facerec.people.library import edit

    edit(_gallery(ctx), lambda people: people.forget(list(faces)))
    click.echo(f"forgot {len(faces)} faces")
