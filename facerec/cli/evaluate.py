"""`facerec evaluate`: verification and identification figures of a model on labelled faces."""

from __future__ import annotations

import json
from pathlib import Path

import click

from facerec.cli import warn
from facerec.cli.options import (
    FiniteRange,
    aligner_options,
    backbone_options,
    detector_options,
    face_cache_option,
    out_option,
    pipeline_arguments,
    precision_option,
    seed_option,
)

DEFAULT_OUT = Path(".facerec") / "evaluation"


@click.command(name="evaluate")
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@backbone_options
@precision_option
@detector_options
@aligner_options
@click.option(
    "--pairs",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An LFW pairs.txt; its images are DATA/NAME/NAME_NNNN.jpg. Without it, pairs come from DATA.",
)
@click.option(
    "--impostors",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Impostor pairs sampled from DATA (every genuine pair is used).",
)
@click.option(
    "--folds",
    type=click.IntRange(min=2),
    help="Cross-validation folds for the accuracy [default: 10, or as the pairs file says].",
)
@click.option("--far", type=FiniteRange(0, 1), default=1e-3, show_default=True, help="FAR for TAR@FAR.")
@seed_option("Seed of the impostor sample.")
@out_option(DEFAULT_OUT, "Folder for metrics.json and roc.png.")
@face_cache_option
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json on stdout instead of a summary.")
@click.pass_context
def command(ctx, data, pairs, impostors, folds, far, seed, out, face_cache, as_json, **_models):
    """Evaluate a model on DATA/<identity>/<image> (or on an LFW pairs file with --pairs).

    Verification: ROC, AUC, accuracy at the best threshold in 10-fold cross-validation (FaceNet's LFW
    protocol) and TAR at --far. Identification (folders only): the first image of each identity is its
    gallery entry, the others are probes; rank-1 accuracy.
    """
    from facerec.pipeline.engine import build_pipeline
    from facerec.training.assess import evaluate_folder, evaluate_pairs, write_results
    from facerec.training.facecache import FaceCache, default_root

    # --precision int8 calibrates on DATA's photos when not cached
    pipeline = build_pipeline(embed=True, calibration=data, **pipeline_arguments(ctx.params))
    loaded = pipeline.backbone
    cache = FaceCache(face_cache or default_root(), pipeline)
    if pairs is not None:
        metrics = evaluate_pairs(cache, loaded, pairs, Path(data), folds, far, warn)
    else:
        metrics = evaluate_folder(cache, loaded, Path(data), impostors, folds or 10, far, seed, warn)
    metrics["model"] = {
        "backbone": loaded.name,
        "weights": ctx.params["weights"] or loaded.pretrained,
        "weights_sha256": loaded.weights_sha256,
        "precision": loaded.precision,
        "detector": pipeline.detector_name,
        "recipe": pipeline.recipe.to_json(),
    }
    write_results(out, metrics)
    if as_json:
        click.echo(json.dumps(metrics, ensure_ascii=False))
        return
    for line in summary(metrics, out):
        click.echo(line)


def summary(metrics: dict, out: Path) -> list[str]:
    """The figures a person reads first, one per line."""
    v = metrics["verification"]
    at = v["tar_at_far"]
    lines = [
        f"verification: {v['pairs']} pairs ({v['genuine']} genuine), AUC {v['auc']:.4f}, "
        f"accuracy {v['accuracy']:.4f} +- {v['accuracy_std']:.4f} ({v['folds']}-fold, threshold {v['threshold']:.3f})",
        f"TAR {at['tar']:.4f} at FAR {at['far_reached']:.2g} (asked {at['far']:g}; {at['impostor_pairs']} impostor pairs)",
    ]
    if "identification" in metrics:
        i = metrics["identification"]
        lines.append(
            f"identification: rank-1 accuracy {i['accuracy']:.4f} ({i['probes']} probes, {i['gallery']} in gallery)"
        )
    lines.append(f"wrote {out / 'metrics.json'} and {out / 'roc.png'}")
    return lines
