"""The `facerec` command line: a Click group whose commands compose parts from the plugin registry.

`main` is the console entry point. It turns every user-facing failure into one line on stderr
(exit 2 for bad usage, 1 for failures) instead of a traceback.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from facerec import __version__
from facerec.errors import FacerecError, UsageError

BUILTIN_COMMANDS = {
    name: f"facerec.cli.{name}"
    for name in ("detect", "embed", "index", "identify", "gallery", "demo", "train", "evaluate", "plugins")
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
            from facerec.registry import add_plugin_commands

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


def parse_options(pairs: tuple[str, ...], option: str) -> dict[str, Any]:
    """`KEY=VALUE` pairs to keyword options; values are JSON when they parse as JSON, else strings."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{option}: expected KEY=VALUE, got '{pair}'")
        try:
            options[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.replace("-", "_")] = value
    return options


def backbone_options(command: Callable) -> Callable:
    """--backbone, --pretrained, --weights and --device, shared by every command that embeds."""
    for option in reversed(
        [
            click.option(
                "--backbone", default="inception-resnet", show_default=True, help="Registered backbone."
            ),
            click.option(
                "--pretrained",
                default="vggface2",
                show_default=True,
                help="Named pretrained weights of the backbone (vggface2, casia-webface) or none.",
            ),
            click.option(
                "--weights",
                type=click.Path(dir_okay=False),
                help="A state-dict file in the backbone's layout; overrides --pretrained.",
            ),
            click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto."),
        ]
    ):
        command = option(command)
    return command


def detector_options(command: Callable) -> Callable:
    """--detector, -D KEY=VALUE, --margin and --align, shared by every command that detects."""
    for option in reversed(
        [
            click.option("--detector", default="mtcnn", show_default=True, help="Registered detector."),
            click.option(
                "-D",
                "--detector-option",
                "detector_options",
                multiple=True,
                metavar="KEY=VALUE",
                help="Detector option, e.g. -D min_face_size=40 (repeatable).",
            ),
            click.option(
                "--margin",
                default=0.0,
                show_default=True,
                help="Pixels of margin around the box (facenet-pytorch).",
            ),
            click.option(
                "--align",
                type=click.Choice(["box", "landmarks"]),
                default="box",
                show_default=True,
                help="Crop the box as facenet-pytorch does, or align by the five landmarks.",
            ),
        ]
    ):
        command = option(command)
    return command


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
        warn(
            f"Error: internal error: {type(error).__name__}: {error} (set FACEREC_DEBUG=1 for the traceback)"
        )
        status = 1
    sys.exit(status if isinstance(status, int) else 0)


def make_pipeline(
    detector: str,
    detector_options: tuple[str, ...],
    margin: float,
    align: str,
    backbone: dict[str, Any] | None = None,
) -> Any:
    """The engine's Pipeline from the shared command-line options.

    `backbone` holds load_backbone's arguments; the detector is built first so that a bad option is
    reported before any weights are downloaded.
    """
    from facerec.engine import CropSettings, Pipeline, create_detector, load_backbone

    found = create_detector(detector, parse_options(detector_options, "--detector-option"))
    loaded = load_backbone(**backbone) if backbone is not None else None
    size = loaded.plugin.input_size if loaded is not None else CropSettings.size
    return Pipeline(detector=found, backbone=loaded, crop=CropSettings(size=size, margin=margin, align=align))


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
