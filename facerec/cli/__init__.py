"""The `facerec` command line: a Click group whose commands compose parts from the plugin registry.

`main` is the console entry point. It turns every user-facing failure into one line on stderr
(exit 2 for bad usage, 1 for failures) instead of a traceback.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import sys
from typing import Any

import click

from facerec import __version__
from facerec.errors import FacerecError, UsageError

BUILTIN_COMMANDS = {
    name: f"facerec.cli.{name}"
    for name in (
        "detect",
        "embed",
        "index",
        "identify",
        "watch",
        "cluster",
        "people",
        "gallery",
        "serve",
        "demo",
        "train",
        "evaluate",
        "plugins",
    )
}


class LazyGroup(click.Group):
    """Commands load on first use, so a command pays only for its own imports.

    A built-in command imports just its module (`facerec train` needs torchvision's transforms; `facerec
    detect` should not wait for them, and an `index` with nothing to do needs no torch at all). Plugins'
    commands are added, which loads every plugin, only when a name is not built-in or for the listing.
    """

    plugins_loaded = False

    def add_plugin_commands(self) -> None:
        if not self.plugins_loaded:
            from facerec.contract.registry import add_plugin_commands

            self.plugins_loaded = True
            add_plugin_commands(self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self.add_plugin_commands()
        return sorted({*BUILTIN_COMMANDS, *super().list_commands(ctx)})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in BUILTIN_COMMANDS:
            self.add_plugin_commands()
        elif name not in self.commands:
            self.add_command(importlib.import_module(BUILTIN_COMMANDS[name]).command, name)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="facerec")
def cli() -> None:
    """facerec: detect, embed, index and identify faces with FaceNet, and fine-tune it."""


def echo_json(record: dict[str, Any]) -> None:
    """One JSON Lines object on stdout (UTF-8 kept readable)."""
    click.echo(json.dumps(record, ensure_ascii=False))


def warn(message: str) -> None:
    """One line on stderr, never more: newlines inside the message are flattened."""
    click.echo(" ".join(str(message).split("\n")), err=True)


def main(args: list[str] | None = None) -> None:
    """Run the CLI; exit 0 on success, 2 on bad usage, 1 on failure, with one line on stderr."""
    try:
        status = cli.main(args=args, prog_name="facerec", standalone_mode=False)
    except click.exceptions.Exit as done:
        status = done.exit_code
    except click.exceptions.Abort:
        warn("Aborted.")
        status = 130
    except click.UsageError as error:
        where = f"{error.ctx.command_path}: " if error.ctx else ""
        warn(f"Error: {where}{error.format_message()}")
        status = 2
    except click.ClickException as error:
        warn(f"Error: {error.format_message()}")
        status = error.exit_code
    except UsageError as error:
        warn(f"Error: {error}")
        status = 2
    except FacerecError as error:
        warn(f"Error: {error}")
        status = 1
    except KeyboardInterrupt:
        status = 130
    except Exception as error:
        if os.environ.get("FACEREC_DEBUG"):
            raise
        warn(f"Error: {_unexpected(error)}")
        status = 1
    # The interpreter's last collection at exit walks every object left, some 200,000 once torch is
    # imported: 0.3 s of each command (AMD EPYC). Frozen objects are skipped; files and stores are
    # closed by then.
    gc.freeze()
    sys.exit(status if isinstance(status, int) else 0)


def _unexpected(error: Exception) -> str:
    """The line for an error no part of facerec turned into one: a file the system refused (its name
    and why, as the shell would say it), else an internal error."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return f"internal error: {type(error).__name__}: {error} (set FACEREC_DEBUG=1 for the traceback)"


def make_pipeline(params: dict[str, Any], embed: bool, photos: tuple[str, ...] = ()) -> Any:
    """The engine's Pipeline from a command's model, detector and aligner options (see
    facerec.cli.options); the detector and aligner are built first, so a bad option is reported before
    any weights are downloaded. `photos`, the command's images: what `--precision auto` checks bf16 on."""
    from facerec.cli.options import pipeline_arguments
    from facerec.pipeline.engine import build_pipeline

    return build_pipeline(embed=embed, photos=list(photos), **pipeline_arguments(params))


def each_result(pipeline: Any, images: tuple[str, ...]) -> Any:
    """Results image by image; a bad image is named on stderr and the stream goes on.

    When the stream ends, exits with status 1 if any image failed.
    """
    from tqdm import tqdm

    failed = 0
    with tqdm(total=len(images), unit="image", disable=not sys.stderr.isatty()) as bar:
        for result in pipeline.run(images):
            if result.error is not None:
                warn(f"{result.path}: {result.error}")
                failed += 1
            yield result
            bar.update()
    if failed:
        raise click.exceptions.Exit(1)
