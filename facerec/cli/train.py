"""`facerec train`: fine-tune the backbone with triplets (`--dry-run`: verify the pipeline in one step), or
train a gallery's head on frozen embeddings (`--head classifier`, the seed's classification module).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import click

from facerec.cli import warn
from facerec.cli.options import (
    ALIGNER_PARAMETERS,
    MODEL_PARAMETERS,
    FiniteRange,
    aligner_options,
    backbone_options,
    detector_options,
    explicit_models,
    face_cache_option,
    gallery_option,
    given,
    out_option,
    parse_options,
    pipeline_arguments,
    seed_option,
)
from facerec.errors import UsageError
from facerec.training.trainer import NOTHING_FROZEN, OPTIMIZERS, TrainSettings

DEFAULT_RUN = Path(".facerec") / "run"
HEAD_OPTIONS = ("lr", "batch_size", "epochs", "seed")  # the options of `train` a head takes as its own
SETTING_NAMES = {f.name for f in fields(TrainSettings)}
OPTION_OF = {"miner_options": "miner_option", "loss_options": "loss_option"}


@click.command(name="train")
@click.argument("data", type=click.Path(file_okay=False))
@backbone_options
@detector_options
@aligner_options
@click.option(
    "--miner", default="dict", show_default=True, help="Registered miner: dict, batch-hard, semi-hard."
)
@click.option(
    "-M",
    "--miner-option",
    multiple=True,
    metavar="KEY=VALUE",
    help="Miner option, e.g. -M negatives=semi-hard.",
)
@click.option("--loss", default="triplet", show_default=True, help="Registered loss.")
@click.option(
    "-L", "--loss-option", multiple=True, metavar="KEY=VALUE", help="Loss option, e.g. -L margin=0.3."
)
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="adagrad", show_default=True)
@click.option("--lr", type=FiniteRange(min=0, min_open=True), default=0.05, show_default=True)
@click.option(
    "--batch-size", type=click.IntRange(min=2), default=8, show_default=True, help="Anchors per step."
)
@click.option(
    "--per-identity",
    type=click.IntRange(min=2),
    default=4,
    show_default=True,
    help="Images per identity in a batch, for in-batch miners (batch-hard, semi-hard).",
)
@click.option("--epochs", type=click.IntRange(min=1), default=100, show_default=True, help="Epochs in all.")
@click.option(
    "--freeze",
    default=NOTHING_FROZEN,
    show_default=True,
    metavar="LAYER",
    help="Keep the backbone's layers up to and including LAYER fixed (e.g. block8); none trains all.",
)
@click.option("--augment/--no-augment", default=True, show_default=True, help="Flip, crop and jitter faces.")
@seed_option("Seed of every random choice of the run.")
@out_option(DEFAULT_RUN, "Run folder: metrics.jsonl, backbone.pt, checkpoint.pt, loss.png.")
@click.option("--resume", is_flag=True, help="Continue the run in --out at its next epoch, up to --epochs.")
@click.option(
    "--dry-run", is_flag=True, help="Run one step on one batch, verify data and loss, write nothing."
)
@click.option(
    "--head",
    help="Train this gallery head (classifier) on frozen embeddings instead of fine-tuning the backbone; "
    "--lr, --batch-size, --epochs and --seed become the head's options.",
)
@gallery_option
@face_cache_option
@click.pass_context
def command(ctx, data, out, resume, dry_run, head, gallery, face_cache, device, **options):
    """Fine-tune the backbone on DATA/<identity>/<image> with triplets.

    The dict miner (the seed's) draws each anchor's positive and negative from the whole dataset; the
    in-batch miners take them from batches of --per-identity images of each identity. With --head, DATA
    is enrolled into --gallery and the head is trained on the gallery's embeddings.
    """
    chosen = {name for name in SETTING_NAMES if given(ctx, OPTION_OF.get(name, name))}
    if any(given(ctx, name) for name in ALIGNER_PARAMETERS):
        chosen |= {"aligner", "aligner_options"}
    if head is not None:
        train_head_command(ctx, data, out, resume, dry_run, head, gallery, device, chosen)
        return
    from facerec.training.trainer import check as check_run
    from facerec.training.trainer import train

    settings = settings_from(data, options)
    if dry_run:
        for line in check_run(settings, device, face_cache, warn).lines():
            click.echo(line)
        return
    train(settings, out, resume, device, face_cache, warn, click.echo, chosen - {"epochs"})


def train_head_command(ctx, data, out, resume, dry_run, head, gallery, device, given) -> None:
    """`train --head NAME`: the options that mean something for a head, as its options."""
    from facerec.training.classifier import train_head

    used = {*HEAD_OPTIONS, *MODEL_PARAMETERS, *ALIGNER_PARAMETERS, "data"}
    unused = sorted(given - used) + (["dry_run"] if dry_run else [])
    if unused:
        names = ", ".join("--" + OPTION_OF.get(name, name).replace("_", "-") for name in unused)
        raise UsageError(f"{names}: not used when training a head (--head {head})")
    head_options = {name: ctx.params[name] for name in HEAD_OPTIONS if name in given}
    train_head(
        gallery, Path(data), head, head_options, out, resume, explicit_models(ctx), device, warn, click.echo
    )


def settings_from(data: str, options: dict) -> TrainSettings:
    """The run's settings from the command's options: the models as every command reads them, the
    miner's and loss's KEY=VALUE lists parsed."""
    models = pipeline_arguments(options)
    values = {name: options[name] for name in SETTING_NAMES & options.keys()}
    values.update({name: models[name] for name in SETTING_NAMES & models.keys()})
    values["aligner_options"] = values["aligner_options"] or {}
    values["miner_options"] = parse_options(options["miner_option"], "--miner-option")
    values["loss_options"] = parse_options(options["loss_option"], "--loss-option")
    return TrainSettings(data=data, **values)
