"""The Click options commands share, defined once: models (backbone, detector, aligner), run folders,
the face cache, seeds; and the reading of what a user gave explicitly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from facerec import defaults
from facerec.errors import UsageError

MODEL_PARAMETERS = ("backbone", "pretrained", "weights", "detector", "detector_options", "precision")
ALIGNER_PARAMETERS = ("aligner", "aligner_options", "margin", "align")


class FiniteRange(click.FloatRange):
    """click's FloatRange that also refuses NaN and the infinities, which pass its comparisons (a NaN
    margin or learning rate would otherwise fail deep inside a command, naming no option)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


class OutputFolder(click.Path):
    """A folder the command writes into, checked writable when the command starts (see
    facerec.atomic.check_writable): a folder refused at the end would cost the whole run's work."""

    def __init__(self) -> None:
        super().__init__(file_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from facerec.atomic import check_writable

        if isinstance(value, str) and not value:  # Path("") is the working directory, not what "" means
            self.fail("give a folder", param, ctx)
        folder = super().convert(value, param, ctx)
        try:
            check_writable(folder)
        except OSError as error:
            self.fail(f"{folder}: cannot be written ({error.strerror or error})", param, ctx)
        return folder


def _stacked(*options: Callable) -> Callable:
    def decorate(command: Callable) -> Callable:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


backbone_options = _stacked(
    click.option("--backbone", default=defaults.BACKBONE, show_default=True, help="Registered backbone."),
    click.option(
        "--pretrained",
        help="Named pretrained weights of the backbone (inception-resnet: vggface2, casia-webface; "
        "dlib-resnet: dlib-v1), or none [default: the backbone's own].",
    ),
    click.option(
        "--weights",
        type=click.Path(dir_okay=False),
        help="A state-dict file in the backbone's layout; overrides --pretrained.",
    ),
    click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto."),
)

precision_option = click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "int8", "bf16"]),
    help="The arithmetic. auto: the fastest this machine runs natively that keeps the backbone's "
    "embeddings within cosine 0.9995 of fp32, measured once per machine and model and cached. int8: the "
    "backbone quantized (CPU), calibrated once on real faces and cached. bf16: backbone and detector in "
    "bfloat16 (native with AVX512-BF16, AMX or a recent GPU; emulated, slower, elsewhere). A gallery "
    f"keeps its own, or one that stands in for it. [default: ${defaults.PRECISION_VARIABLE}, else "
    f"{defaults.PRECISION}]",
)

detector_options = _stacked(
    click.option(
        "--detector",
        default=defaults.DETECTOR,
        show_default=True,
        help="Registered detector. none: each image is already an aligned face, used as it is (resized to "
        "the backbone's input size, no aligner).",
    ),
    click.option(
        "-D",
        "--detector-option",
        "detector_options",
        multiple=True,
        metavar="KEY=VALUE",
        help="Detector option, e.g. -D min_face_size=40 (repeatable).",
    ),
)

aligner_options = _stacked(
    click.option(
        "--aligner",
        help="Registered aligner: box, landmarks, dlib-5point [default: the backbone's recipe's].",
    ),
    click.option(
        "-A",
        "--aligner-option",
        "aligner_options",
        multiple=True,
        metavar="KEY=VALUE",
        help="Aligner option, e.g. -A margin=20 or -A padding=0.3 (repeatable).",
    ),
    click.option(
        "--margin",
        type=FiniteRange(min=0),
        help="Shorthand for --aligner box -A margin=PIXELS (facenet-pytorch's margin).",
    ),
    click.option(
        "--align",
        type=click.Choice(["box", "landmarks"]),
        help="Shorthand for --aligner box or --aligner landmarks.",
    ),
)


def out_option(default: Path, help: str) -> Callable:
    return click.option(
        "--out",
        type=OutputFolder(),
        default=default,
        show_default=True,
        help=help,
    )


gallery_option = click.option(
    "--gallery",
    envvar=defaults.GALLERY_VARIABLE,
    default=str(defaults.GALLERY),
    show_default=True,
    help="The gallery: a folder, or a store URI such as milvus:faces.db or "
    "milvus:http://HOST:19530#COLLECTION (also FACEREC_GALLERY).",
)

face_cache_option = click.option(
    "--face-cache",
    type=OutputFolder(),
    help="Where face crops are cached [default: $XDG_CACHE_HOME/facerec/faces].",
)


def seed_option(help: str) -> Callable:
    return click.option("--seed", type=int, default=0, show_default=True, help=help)


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


def aligner_choice(
    aligner: str | None, pairs: tuple[str, ...], margin: float | None, align: str | None
) -> tuple[str | None, dict[str, Any] | None]:
    """The aligner and its options from --aligner/-A and the shorthands --margin and --align; None for
    what was not given (the backbone's recipe, or the gallery's, decides)."""
    options = parse_options(pairs, "--aligner-option") if pairs else None
    if align is not None:
        if aligner is not None and aligner != align:
            raise UsageError(f"--align {align} contradicts --aligner {aligner}")
        aligner = align
    if margin is not None:
        if aligner not in (None, "box"):
            raise UsageError(f"--margin is the box aligner's option, not aligner '{aligner}'s; use -A")
        aligner, options = "box", {**(options or {}), "margin": margin}
    return aligner, options


def pipeline_arguments(params: dict[str, Any]) -> dict[str, Any]:
    """facerec.pipeline.engine.build_pipeline's arguments from a command's model, detector and aligner options."""
    aligner, options = aligner_choice(
        params.get("aligner"), params.get("aligner_options", ()), params.get("margin"), params.get("align")
    )
    names = ("backbone", "pretrained", "weights", "device", "precision")
    found = {name: params[name] for name in names if name in params}
    if "precision" in params and params["precision"] is None:
        from facerec.pipeline.precision import default_precision

        found["precision"] = default_precision()
    return {
        **found,
        "detector": params["detector"],
        "detector_options": parse_options(params["detector_options"], "--detector-option"),
        "aligner": aligner,
        "aligner_options": options,
    }


def given(ctx: click.Context, name: str) -> bool:
    """Whether the user gave option `name` (not its default)."""
    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)


def explicit_models(ctx: click.Context) -> dict[str, Any]:
    """The model options the user actually gave, as facerec.gallery.models.ModelRequest's fields.

    A gallery fixes the models that made its vectors, so the shared options' defaults must not count
    as a request for other models: what is not given comes from the gallery's record (the precision:
    FACEREC_PRECISION or auto, among those the gallery accepts).
    """
    params = ctx.params
    found = {name: params[name] for name in MODEL_PARAMETERS if name in params and given(ctx, name)}
    if "detector_options" in found:
        found["detector_options"] = parse_options(found["detector_options"], "--detector-option")
    aligner, options = aligner_choice(
        params.get("aligner"), params.get("aligner_options", ()), params.get("margin"), params.get("align")
    )
    if aligner is not None:
        found["aligner"] = aligner
    if options is not None:
        found["aligner_options"] = options
    return found


answer_options = _stacked(
    click.option(
        "--threshold",
        type=float,
        help="Largest distance at which the nearest identity is accepted; beyond it the face is unknown. "
        "Default: for the faiss head, the same-person distance the gallery's weights declare (Euclidean "
        "between unit embeddings: vggface2 1.0, dlib-v1 0.38); for the classifier head 0.5 (probability "
        "at least 0.5).",
    ),
    click.option(
        "--top-k", type=click.IntRange(min=1), default=defaults.TOP_K, show_default=True, help="Candidates."
    ),
)
