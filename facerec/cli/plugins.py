"""`facerec plugins`: every plugin, where it came from and what it registers."""

from __future__ import annotations

import click

from facerec.cli import echo_json


@click.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="JSON Lines on stdout, one object per plugin.")
def command(as_json: bool) -> None:
    """List installed plugins (built-in ones included) and the parts each registers."""
    from facerec.contract.registry import registry

    for info in sorted(registry().plugins.values(), key=lambda info: info.name):
        if as_json:
            echo_json(
                {"name": info.name, "source": info.source, "registers": info.registers, "error": info.error}
            )
            continue
        parts = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in sorted(info.registers.items()))
        status = f"  BROKEN: {info.error}" if info.error else ""
        click.echo(f"{info.name} ({info.source})  {parts or 'nothing'}{status}")
