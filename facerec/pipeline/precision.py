"""`--precision int8`: a backbone's inference network quantized statically, calibrated on real faces, cached.

Why static int8 (weights and activations): on CPUs the convolutions then run on 8-bit integer kernels,
1.5-2x faster than our fused FP32 networks, while the embeddings stay within cosine 0.999 of FP32. The
backbone supplies a float network torch.fx can trace (`for_quantization`, see facerec.contract.parts.Backbone);
this module knows no concrete model. It quantizes with PyTorch's FX graph mode on the x86 engine:

- activations: unsigned 8-bit, per tensor, over the whole range seen on the calibration faces. A
  histogram's error-minimizing ranges fit the few dozen calibration faces better and clip other faces:
  on unseen faces the worst cosine to FP32 fell from 0.9990 to 0.9986 (dlib-resnet);
- weights: signed, per output channel, symmetric, limited to 7 bits (-64..63). On CPUs without VNNI the
  integer kernels add pairs of u8 x s8 products in 16 bits, which saturates for 8-bit weights and
  activations; PyTorch's default gives up one bit of the activations instead (`reduce_range`), which
  costs faces far more accuracy (median cosine 0.9991 against 0.9996 on facerec's test photos).

Calibration needs aligned faces as the backbone sees them: those of the user's photos when a command has
them (the folder `index` enrolls, the data `evaluate` reads), else the public five-person demo set
(facerec.demo), downloaded once. The quantized network is cached in `$TORCH_HOME/checkpoints/facerec-int8`,
keyed by the backbone, the weights' SHA-256, the input recipe, the quantization scheme and the torch
version, as a state dict of plain and quantized tensors (no pickle: it loads with weights_only=True),
with the photos it was calibrated on (path and SHA-256 each). Loading rebuilds the graph without
calibrating and fills it from the file, in a fraction of the time. The first calibration of a key is the
one every later run uses.

A cache that still loads may hold another network than the one written (a damaged or edited file), and
every face then embeds wrongly with no error. So its checksum is recorded beside it (`.pt.xxh128`,
facerec.integrity) and checked before use: a damaged cache is named on stderr and made again. A cache
written before checksums were recorded is adopted: its checksum is recorded once it loads. Each network
is known by that checksum (`identity`): a gallery records the one that made its vectors, with its
calibration photos, so that a search with another network is refused, and a cache that is gone is made
again from those photos when they are still on disk (calibration is deterministic: the same faces give
the same file, byte for byte, on the same kind of CPU).
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from facerec.errors import FacerecError, UsageError
from facerec.integrity import Damaged, adopt, read_checked, write_checked
from facerec.pipeline.images import IMAGE_SUFFIXES, ImageError, load_image
from facerec.pipeline.standardize import standardize_pictures
from facerec.pipeline.weights import cache_dir, sha256_file

if TYPE_CHECKING:
    from facerec.contract.parts import Aligner, Backbone, Detector, InputRecipe
    from facerec.pipeline.engine import LoadedBackbone

FP32, INT8 = "fp32", "int8"
PRECISIONS = (FP32, INT8)
ENGINE = "x86"
SCHEME = "fx-x86-static/act-u8-minmax-per-tensor/w-s7-symmetric-per-channel/1"
FORMAT = "facerec-int8/1"
CALIBRATION_PHOTOS = 32  # photos read at most; the faces of a few dozen photos fix the ranges
CALIBRATION_SIDE = 1024  # photos are shrunk to this before detection: faster, the faces stay large

IDENTITY = "facerec_int8_identity"  # the attribute of an int8 network that says which network it is


@dataclass(frozen=True)
class Calibration:
    """Standardized faces (N, 3, S, S) to calibrate on, and the photos they were cut from, in order
    (`{"path", "sha256"}` each): recorded with the network, they can make it again."""

    faces: torch.Tensor
    photos: list[dict[str, str]]


FaceSource = Callable[[], Calibration]


def check_precision(precision: str, plugin: Backbone, name: str) -> None:
    """Refuse, before any weights load, a precision the backbone or this machine cannot run."""
    if precision not in PRECISIONS:
        raise UsageError(f"--precision: unknown precision '{precision}' (available: {', '.join(PRECISIONS)})")
    if precision == FP32:
        return
    if not callable(getattr(plugin, "for_quantization", None)):
        raise UsageError(
            f"--precision int8: backbone '{name}' cannot be quantized (it declares no for_quantization); "
            "use --precision fp32"
        )
    if ENGINE not in torch.backends.quantized.supported_engines:
        raise UsageError(f"--precision int8: this PyTorch build has no '{ENGINE}' quantized engine")


def int8_device(device: str | None) -> str:
    """int8 networks run on the CPU: `auto` means the CPU; any other device is refused."""
    if device in (None, "auto") or torch.device(device).type == "cpu":
        return "cpu"
    raise UsageError(f"--device {device}: --precision int8 runs on the CPU only; use --device cpu")


def cache_key(loaded: LoadedBackbone, recipe: InputRecipe) -> str:
    """SHA-256 of everything that makes the quantized network what it is (not the calibration photos:
    the first calibration of a key is kept, see the module docstring)."""
    version = ".".join(torch.__version__.split("+")[0].split(".")[:2])  # quantized tensors' layout
    parts = {
        "format": FORMAT,
        "scheme": SCHEME,
        "torch": version,
        "backbone": loaded.name,
        "weights_sha256": loaded.weights_sha256 or "untrained (seed 0)",
        "recipe": recipe.to_json(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def cache_path(loaded: LoadedBackbone, recipe: InputRecipe) -> Path:
    """The cached int8 network, beside the weights: checkpoints/facerec-int8/BACKBONE-WEIGHTS-KEY.pt."""
    weights = (loaded.weights_sha256 or "untrained")[:12]
    return cache_dir() / "facerec-int8" / f"{loaded.name}-{weights}-{cache_key(loaded, recipe)[:16]}.pt"


def int8_network(
    loaded: LoadedBackbone, recipe: InputRecipe, faces: FaceSource, note: Callable[[str], None]
) -> nn.Module:
    """The int8 inference network of `loaded`: from the cache when it is intact, else calibrated on
    `faces()` and cached. Its `identity` says which network it is."""
    path = cache_path(loaded, recipe)
    quiet_concatenation()
    form = quantizable_form(loaded)
    cached = read_cache(path, form, recipe.size, note)
    if cached is not None:
        return cached
    calibration = faces()
    if len(calibration.faces) == 0:
        raise FacerecError("--precision int8: no face found in the calibration photos")
    note(f"calibrating int8 {loaded.name} on {len(calibration.faces)} faces (once: cached in {path})")
    network = quantize(form, calibration.faces)
    digest = write_cache(path, network, calibration)
    setattr(network, IDENTITY, {"xxh3_128": digest, "calibration": calibration.photos})
    return network


def identity(network: nn.Module) -> dict[str, Any] | None:
    """Which int8 network this is: the checksum of its cache file (`xxh3_128`) and the photos it was
    calibrated on (`calibration`); None for a network not made here (an FP32 one)."""
    return getattr(network, IDENTITY, None)


def quiet_concatenation() -> None:
    """Silence, for good, torch's warning at the first concatenation of int8 tensors with different
    ranges (Inception's branches): it requantizes them, and the accuracy is measured (tests/pipeline/test_precision.py)."""
    warnings.filterwarnings(
        "ignore", message="All inputs of this cat operator must share the same quantization"
    )


def quantizable_form(loaded: LoadedBackbone) -> nn.Module:
    with torch.no_grad():
        return loaded.plugin.for_quantization(loaded.module.eval()).eval()


def qconfig_mapping(form: nn.Module) -> Any:
    """The scheme of the module docstring, with the backbone's `float_modules` left in FP32."""
    from torch.ao.quantization import QConfig, QConfigMapping
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

    weight = PerChannelMinMaxObserver.with_args(
        dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-64, quant_max=63
    )
    activation = MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=False)
    mapping = QConfigMapping().set_global(QConfig(activation=activation, weight=weight))
    for name in getattr(form, "float_modules", ()):
        mapping.set_module_name(name, None)
    return mapping


@contextmanager
def _quiet() -> Iterator[None]:
    """No warnings: torch deprecates its FX quantization and quantized tensors (for torchao) at every
    use, and the CLI's stderr is for the user. Only while building, before any serving thread runs."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        yield


@contextmanager
def _fx_quantization() -> Iterator[Any]:
    """torch's FX quantization functions, on the x86 engine, quietly."""
    from torch.ao.quantization import quantize_fx

    torch.backends.quantized.engine = ENGINE
    with _quiet():
        yield quantize_fx


def quantize(form: nn.Module, faces: torch.Tensor, batch: int = 16) -> nn.Module:
    """`form` quantized, its activation ranges observed on `faces`."""
    with _fx_quantization() as fx:
        prepared = fx.prepare_fx(form, qconfig_mapping(form), (faces[:1],))
        for start in range(0, len(faces), batch):
            prepared(faces[start : start + batch])
        return fx.convert_fx(prepared).eval()


def skeleton(form: nn.Module, size: int) -> nn.Module:
    """The quantized graph of `form` with placeholder ranges, to be filled from a cached state dict."""
    with _fx_quantization() as fx:
        example = torch.zeros(1, 3, size, size)
        return fx.convert_fx(fx.prepare_fx(form, qconfig_mapping(form), (example,))).eval()


def write_cache(path: Path, network: nn.Module, calibration: Calibration) -> str:
    """The network's state dict (plain and quantized tensors) with what made it, written atomically
    with its checksum beside it; returns the checksum."""
    record = {
        "format": FORMAT,
        "scheme": SCHEME,
        "calibration_faces": len(calibration.faces),
        "calibration": calibration.photos,
        "state_dict": network.state_dict(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(record, buffer)
    return write_checked(path, buffer.getbuffer())


def read_cache(path: Path, form: nn.Module, size: int, note: Callable[[str], None]) -> nn.Module | None:
    """The cached network, its identity set; None when there is none, or when it is damaged or does not
    fit (`note` says which: it is then made again)."""
    if not path.is_file():
        return None
    try:
        data, digest = read_checked(path)
    except Damaged as damaged:
        note(f"{damaged}; it is made again")
        return None
    except OSError as error:
        note(f"{path}: cannot be read ({error.strerror}); it is made again")
        return None
    try:
        with _quiet():
            record = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if record.get("format") != FORMAT:
            note(f"{path}: not an int8 network of this facerec ({record.get('format')}); it is made again")
            return None
        network = skeleton(form, size)
        network.load_state_dict(record["state_dict"])
    except Exception as error:  # torch raises many types for bad files; all mean "make it again"
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        note(f"{path}: damaged int8 cache, it does not load ({first_line[:200]}); it is made again")
        return None
    digest = digest or adopt(path, data)
    setattr(network, IDENTITY, {"xxh3_128": digest, "calibration": record.get("calibration", [])})
    return network


# The calibration faces.


def calibration_faces(
    detector: Detector, aligner: Aligner, recipe: InputRecipe, folder: Path | None
) -> Calibration:
    """The calibration of the photos in `folder` (sampled: `sample_photos`), else of the public demo set."""
    photos = sample_photos(folder) if folder is not None else public_photos()
    return faces_of_photos(detector, aligner, recipe, photos, folder or "the demo photos")


def faces_of_photos(
    detector: Detector, aligner: Aligner, recipe: InputRecipe, photos: Sequence[Path], where: object
) -> Calibration:
    """The standardized faces of `photos`, aligned as the backbone's recipe says: every face found, the
    small and blurred ones too, since those stretch the ranges that later faces must fit in. `where`
    names the photos in the error raised when none has a face."""
    from facerec.pipeline.engine import cut  # engine builds on this module

    pictures, used = [], []
    for path in photos:
        try:
            image = load_image(path)
        except ImageError:
            continue  # index names the photos it cannot read; here they just do not calibrate
        image.thumbnail((CALIBRATION_SIDE, CALIBRATION_SIDE))
        (faces,) = detector.detect([image])
        if faces:
            pictures += cut(detector, aligner, image, faces, recipe)
            used.append({"path": str(Path(path).resolve()), "sha256": sha256_file(Path(path))})
    if not pictures:
        raise FacerecError(f"{where}: no face found to calibrate --precision int8 on")
    return Calibration(standardize_pictures(pictures, recipe), used)


def recorded_photos(calibration: Sequence[dict[str, str]]) -> list[Path] | None:
    """The photos a network was calibrated on, when every one is still on disk with the bytes it had
    (then calibrating on them makes that network again); None when any is gone or changed, or none
    were recorded."""
    photos = [Path(photo["path"]) for photo in calibration]
    try:
        same = all(
            sha256_file(path) == photo["sha256"] for path, photo in zip(photos, calibration, strict=True)
        )
    except OSError:
        return None
    return photos if photos and same else None


def sample_photos(folder: Path, count: int = CALIBRATION_PHOTOS) -> list[Path]:
    """Up to `count` photos of `folder`, taken in turn from each identity folder (sorted: the same
    photos every time), so that every person and not just the first few shape the ranges."""
    people = sorted(p for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith("."))
    groups = [_photos_in(person) for person in people] or [_photos_in(Path(folder))]
    rounds = (
        [group[i] for group in groups if i < len(group)] for i in range(max(map(len, groups), default=0))
    )
    return list(islice((photo for photos in rounds for photo in photos), count))


def _photos_in(folder: Path) -> list[Path]:
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not path.name.startswith(".")
    )


def public_photos() -> Sequence[Path]:
    """The demo set's photos (facerec.demo), downloaded and verified once into the weights cache."""
    from facerec.demo import FILES, fetch_file

    folder = cache_dir() / "facerec-calibration"
    advice = (
        "--precision int8 calibrates once on the demo photos when a command has no photos of its own: "
        "connect to the network, set FACEREC_MIRROR, or run `facerec index DIR --precision int8` first "
        "(it calibrates on DIR)"
    )
    for relative in FILES:
        fetch_file(relative, folder / relative, advice)
    return [folder / relative for relative in FILES]


def stderr_note(message: str) -> None:
    """One line on stderr: calibrating takes a while, once, and the user should know why."""
    print(message, file=sys.stderr, flush=True)
