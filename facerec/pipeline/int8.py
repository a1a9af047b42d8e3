"""`--precision int8`: a backbone's inference network quantized statically, calibrated on real faces, cached.

Why static int8 (weights and activations): on CPUs the convolutions then run on 8-bit integer kernels,
1.3-1.6x faster than our fused FP32 networks on AVX2, while the embeddings stay within cosine 0.999 of
FP32. The backbone supplies a float network torch.fx can trace (`for_quantization`, see
facerec.contract.parts.Backbone); this module knows no concrete model. It quantizes with PyTorch's FX
graph mode on the x86 engine:

- activations: unsigned 8-bit, per tensor, over the whole range seen on the calibration faces. A
  histogram's error-minimizing ranges fit the few dozen calibration faces better and clip other faces:
  on unseen faces the worst cosine to FP32 fell from 0.9990 to 0.9986 (dlib-resnet);
- weights: signed, per output channel, symmetric; 8-bit on CPUs whose int8 kernels sum products in 32
  bits (VNNI, AMX), else 7-bit (-64..63): on AVX2 without VNNI the kernels add pairs of u8 x s8 products
  in 16 bits, which saturates for 8-bit weights and activations; PyTorch's default gives up one bit of
  the activations instead (`reduce_range`), which costs faces far more accuracy (median cosine 0.9991
  against 0.9996 on facerec's test photos). See facerec.pipeline.precision.int8_weight_bits.

Calibration needs aligned faces as the backbone sees them: those of the user's photos when a command has
them (the folder `index` enrolls, the data `evaluate` reads), else the public five-person demo set
(facerec.demo), downloaded once. Calibrating also measures the network: the cosine of its embeddings to
FP32's on those faces (`agreement`), and from it the worst cosine to expect on faces it was not calibrated
on (UNSEEN_FACTOR): what `--precision auto` weighs (facerec.pipeline.autoprecision).

The network is cached in `$TORCH_HOME/checkpoints/facerec-int8`, keyed by the backbone, the weights'
SHA-256, the input recipe, the quantization scheme and the torch version, in facerec.pipeline.fxfile's
form: its converted graph as JSON and its tensors as .npy arrays in a zip, which loads without pickle
and without running FX again (making the graph again with FX took 6-7 s a process, mostly importing
torch._dynamo; loading the file takes a fraction of a second). A network whose graph that form cannot
name is cached as its state dict alone and rebuilt with FX on loading (slower). The first calibration of
a key is the one every later run uses; the photos it was calibrated on (path and SHA-256 each) are
recorded with it.

A cache that still loads may hold another network than the one written (a damaged or edited file), and
every face then embeds wrongly with no error. So its checksum is recorded beside it (`.xxh128`,
facerec.integrity) and checked before use: a damaged cache is named on stderr and made again. Each
network is known by that checksum (`identity`): a gallery records the one that made its vectors, with
its calibration photos and scheme, so that a search with another network is refused, and a cache that
is gone is made again from those photos when they are still on disk (calibration is deterministic: the
same faces give the same file, byte for byte, on the same kind of CPU).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from facerec.errors import FacerecError
from facerec.integrity import Damaged, adopt, read_checked, write_checked
from facerec.pipeline import fxfile
from facerec.pipeline.images import IMAGE_SUFFIXES, ImageError, load_image
from facerec.pipeline.precision import ENGINE
from facerec.pipeline.standardize import standardize_pictures
from facerec.pipeline.weights import cache_dir, sha256_file

if TYPE_CHECKING:
    from facerec.contract.parts import Aligner, Detector, InputRecipe
    from facerec.pipeline.engine import LoadedBackbone

FORMAT = "facerec-int8/2"
CALIBRATION_PHOTOS = 32  # photos read at most; the faces of a few dozen photos fix the ranges
CALIBRATION_SIDE = 1024  # photos are shrunk to this before detection: faster, the faces stay large
CHECKED_FACES = 4  # faces a freshly written file is loaded back and checked on
# How much farther from FP32 faces the network was not calibrated on may land than the worst calibration
# face: on facerec's shared photos (21 faces, neither set's), the worst unseen face's distance (1 - cosine)
# was 1.97x the worst calibration face's for dlib-resnet (0.00103 against 0.00052, 9 calibration faces)
# and 2.0x for inception-resnet (0.0009 against 0.00045, 11 faces); photos held out of calibration did
# not foresee it (2 held-out faces scored closer than the calibration faces themselves).
UNSEEN_FACTOR = 2.0
# The fewest calibration faces whose worst foresees the others: on 2 faces (a gallery of two people)
# dlib-resnet's worst cosine was 0.99983, on 11 faces 0.99947 (AMD EPYC); with fewer, none is foreseen.
FORESEEN_FACES = 8

IDENTITY = "facerec_int8_identity"  # the attribute of an int8 network that says which network it is


@dataclass(frozen=True)
class Calibration:
    """Standardized faces (N, 3, S, S) to calibrate on, and the photos they were cut from, in order
    (`{"path", "sha256"}` each): recorded with the network, they can make it again."""

    faces: torch.Tensor
    photos: list[dict[str, str]]


FaceSource = Callable[[], Calibration]


def scheme(weight_bits: int) -> str:
    """The quantization scheme's name (the module docstring's), as caches and galleries record it."""
    return f"fx-x86-static/act-u8-minmax-per-tensor/w-s{weight_bits}-symmetric-per-channel/1"


def weight_bits_of(name: str) -> int:
    """The weight bits of a scheme `scheme` named (7 for a name this facerec does not know)."""
    return 8 if "/w-s8-" in name else 7


def cache_key(loaded: LoadedBackbone, recipe: InputRecipe, weight_bits: int) -> str:
    """SHA-256 of everything that makes the quantized network what it is (not the calibration photos:
    the first calibration of a key is kept, see the module docstring)."""
    version = ".".join(torch.__version__.split("+")[0].split(".")[:2])  # quantized tensors' layout
    parts = {
        "format": FORMAT,
        "scheme": scheme(weight_bits),
        "torch": version,
        "backbone": loaded.name,
        "weights_sha256": loaded.weights_sha256 or "untrained (seed 0)",
        "recipe": recipe.to_json(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def cache_path(loaded: LoadedBackbone, recipe: InputRecipe, weight_bits: int) -> Path:
    """The cached int8 network, beside the weights: checkpoints/facerec-int8/BACKBONE-WEIGHTS-KEY.zip."""
    weights = (loaded.weights_sha256 or "untrained")[:12]
    key = cache_key(loaded, recipe, weight_bits)[:16]
    return cache_dir() / "facerec-int8" / f"{loaded.name}-{weights}-{key}.zip"


def int8_network(
    loaded: LoadedBackbone,
    recipe: InputRecipe,
    faces: FaceSource,
    note: Callable[[str], None],
    weight_bits: int,
) -> nn.Module:
    """The int8 inference network of `loaded`: from the cache when it is intact, else calibrated on
    `faces()` and cached. Its `identity` says which network it is and how close it keeps to FP32."""
    path = cache_path(loaded, recipe, weight_bits)
    quiet_concatenation()
    cached = read_cache(path, lambda: quantizable_form(loaded), recipe.size, note)
    if cached is not None:
        return cached
    calibration = faces()
    if len(calibration.faces) == 0:
        raise FacerecError("--precision int8: no face found in the calibration photos")
    note(f"calibrating int8 {loaded.name} on {len(calibration.faces)} faces (once: cached in {path})")
    network = quantize(quantizable_form(loaded), calibration.faces, weight_bits)
    found = agreement(loaded.plugin.for_inference(loaded.module.eval()), network, calibration.faces)
    found["cosine_unseen"] = foreseen(found)
    record = {"calibration": calibration.photos, "scheme": scheme(weight_bits), "agreement": found}
    digest = write_cache(path, network, record, calibration.faces)
    setattr(network, IDENTITY, {"xxh3_128": digest, **record})
    return network


def foreseen(found: dict[str, Any]) -> float | None:
    """The worst cosine to FP32 to expect on faces the network was not calibrated on, from its
    `agreement` on its calibration faces (UNSEEN_FACTOR); None from fewer than FORESEEN_FACES faces."""
    if found["faces"] < FORESEEN_FACES:
        return None
    return round(1 - UNSEEN_FACTOR * (1 - found["cosine_min"]), 6)


def identity(network: nn.Module) -> dict[str, Any] | None:
    """Which int8 network this is: the checksum of its cache file (`xxh3_128`), the photos it was
    calibrated on (`calibration`), its `scheme` and its `agreement` with FP32 on those faces (`faces`,
    `cosine_min`, `cosine_median`, and `cosine_unseen`, the worst cosine expected on other faces:
    `foreseen`); None for a network not made here (an FP32 one)."""
    return getattr(network, IDENTITY, None)


def agreement(
    reference: nn.Module, network: nn.Module, faces: torch.Tensor, batch: int = 16
) -> dict[str, Any]:
    """The cosines of `network`'s embeddings to `reference`'s (FP32) on `faces`: count, worst, median."""
    with torch.inference_mode():
        cosines = torch.cat(
            [(_unit(network(chunk)) * _unit(reference(chunk))).sum(1) for chunk in faces.split(batch)]
        )
    return {
        "faces": len(cosines),
        "cosine_min": round(float(cosines.min()), 6),
        "cosine_median": round(float(cosines.median()), 6),
    }


def _unit(vectors: torch.Tensor) -> torch.Tensor:
    vectors = vectors.float()
    return vectors / vectors.norm(dim=1, keepdim=True)


def quiet_concatenation() -> None:
    """Silence, for good, torch's warning at the first concatenation of int8 tensors with different
    ranges (Inception's branches): it requantizes them, and the accuracy is measured (tests/pipeline/test_precision.py)."""
    warnings.filterwarnings(
        "ignore", message="All inputs of this cat operator must share the same quantization"
    )


def quantizable_form(loaded: LoadedBackbone) -> nn.Module:
    with torch.no_grad():
        return loaded.plugin.for_quantization(loaded.module.eval()).eval()


def qconfig_mapping(form: nn.Module, weight_bits: int) -> Any:
    """The scheme of the module docstring, with the backbone's `float_modules` left in FP32."""
    from torch.ao.quantization import QConfig, QConfigMapping
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

    top = 2 ** (weight_bits - 1)
    weight = PerChannelMinMaxObserver.with_args(
        dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-top, quant_max=top - 1
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
    torch.backends.quantized.engine = ENGINE
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        yield


def quantize(form: nn.Module, faces: torch.Tensor, weight_bits: int, batch: int = 16) -> nn.Module:
    """`form` quantized, its activation ranges observed on `faces`."""
    from torch.ao.quantization import quantize_fx

    with _quiet():
        prepared = quantize_fx.prepare_fx(form, qconfig_mapping(form, weight_bits), (faces[:1],))
        for start in range(0, len(faces), batch):
            prepared(faces[start : start + batch])
        return quantize_fx.convert_fx(prepared).eval()


def skeleton(form: nn.Module, size: int, weight_bits: int) -> nn.Module:
    """The quantized graph of `form` with placeholder ranges, to be filled from a cached state dict
    (the slow path, for a network fxfile cannot describe)."""
    from torch.ao.quantization import quantize_fx

    with _quiet():
        example = torch.zeros(1, 3, size, size)
        prepared = quantize_fx.prepare_fx(form, qconfig_mapping(form, weight_bits), (example,))
        return quantize_fx.convert_fx(prepared).eval()


def write_cache(path: Path, network: nn.Module, record: dict[str, Any], faces: torch.Tensor) -> str:
    """The network in fxfile's form with what made it (`record`), written atomically with its checksum
    beside it; returns the checksum. The file is read back and its network checked against `network`
    on a few `faces`: a graph that does not come back the same is written without it (the slow path)."""
    meta = {"format": FORMAT, **record}
    state = network.state_dict()
    try:
        graph = fxfile.describe(network)
    except fxfile.NotDescribable:
        graph = None
    data = fxfile.write(meta, state, graph)
    if graph is not None and not _same_network(data, network, faces[:CHECKED_FACES]):
        data = fxfile.write(meta, state, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_checked(path, data)


def _same_network(data: bytes, network: nn.Module, faces: torch.Tensor) -> bool:
    try:
        with _quiet():
            _, state, graph = fxfile.read(data)
            again = fxfile.build(graph, state)
    except fxfile.Unreadable:
        return False
    with torch.inference_mode():
        return torch.equal(again(faces), network(faces))


def read_cache(
    path: Path, form: Callable[[], nn.Module], size: int, note: Callable[[str], None]
) -> nn.Module | None:
    """The cached network, its identity set; None when there is none, or when it is damaged or does not
    fit (`note` says which: it is then made again). `form` makes the float network, needed only for a
    file written without its graph."""
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
            meta, state, graph = fxfile.read(data)
            if meta.get("format") != FORMAT:
                raise fxfile.Unreadable(f"not an int8 network of this facerec ({meta.get('format')})")
            if graph is not None:
                network = fxfile.build(graph, state)
            else:
                network = skeleton(form(), size, weight_bits_of(meta["scheme"]))
                network.load_state_dict(state)
    except Exception as error:  # fxfile and torch raise many types for bad files; all mean "make it again"
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        note(f"{path}: damaged int8 cache, it does not load ({first_line[:200]}); it is made again")
        return None
    digest = digest or adopt(path, data)  # copied without its record: sound, so recorded now
    record = {key: meta.get(key) for key in ("calibration", "scheme", "agreement")}
    setattr(network, IDENTITY, {"xxh3_128": digest, **record})
    return network


# The calibration faces.


def calibration_faces(
    detector: Detector, aligner: Aligner, recipe: InputRecipe, photos: Path | Sequence[Path] | None
) -> Calibration:
    """The calibration of `photos`: a folder's (sampled: `sample_photos`), the very photos given (a
    gallery's calibration photos, to make its network again), or, for None, the public demo set's."""
    if photos is None:
        return faces_of_photos(detector, aligner, recipe, public_photos(), "the demo photos")
    if isinstance(photos, Path):
        return faces_of_photos(detector, aligner, recipe, sample_photos(photos), photos)
    return faces_of_photos(detector, aligner, recipe, photos, "the calibration photos")


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
            pictures += cut(detector, aligner, [(image, faces)], recipe)[0]
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
