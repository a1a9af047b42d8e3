"""`--precision auto`: the fastest precision this machine runs natively that keeps a backbone's embeddings
within cosine COSINE (0.9995) of FP32, measured once per machine and model and cached.

Which precisions are measured follows from the CPU's flags or the GPU (facerec.pipeline.precision.
candidates): FP32 always; int8 on x86 CPUs for a backbone that can be quantized; bf16 on CPUs with
AVX512-BF16 or AMX and on GPUs of compute capability 8 and up. Each is timed on TIMING_FACES faces
(synthetic: the kernels' speed does not depend on the pixels), after one untimed call, best of
TIMING_ROUNDS rounds that take the precisions in turn. Its agreement with FP32 is measured on real faces:
int8's when it is calibrated, as the worst cosine to expect on faces it was not calibrated on (twice the
worst calibration face's distance, facerec.pipeline.int8.UNSEEN_FACTOR, recorded with the network;
unknown, and so never chosen, when it was calibrated on fewer than FORESEEN_FACES faces);
bf16's on the faces of some of the command's own photos (embed's, identify's), else on those it
calibrates on (its photos, else the demo set's); they calibrate nothing.
The choice is the fastest that keeps that worst cosine at COSINE or above, counting FP32 as GAIN times
faster than it measured, so that timing noise never picks a precision that is not really faster. (On
AVX2 without VNNI, int8's 7-bit weights keep neither built-in backbone there: auto runs FP32.)

What it costs, once per machine and model: the timing, about 1-2 s for inception-resnet on 2 cores
(0.3 s for dlib-resnet); and calibrating int8 when it was never calibrated here (detecting the faces of
up to 32 photos and quantizing: 10-15 s on 2 cores), which `--precision int8` would have cost on its
first run too. Later runs read the record: milliseconds. When a precision cannot be measured (int8 or bf16
with no faces to check on, offline), the others are recorded and chosen from, and a later run measures
the missing one, scaling the recorded rates by FP32's, which it times again.

The record is JSON, in `$TORCH_HOME/checkpoints/facerec-precision/BACKBONE-WEIGHTS-KEY.json` with its
checksum beside it (facerec.integrity: a damaged record is named on stderr and measured again), keyed by
the machine (the CPU's model and its relevant flags, or the GPU), the backbone, its weights' SHA-256, the
input recipe, the int8 scheme and torch's version. Delete it to measure again; `--precision fp32|int8|bf16`
or `FACEREC_PRECISION` choose without it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from facerec.errors import FacerecError
from facerec.integrity import Damaged, read_checked, write_checked
from facerec.pipeline.int8 import Calibration, FaceSource, agreement, identity, scheme
from facerec.pipeline.precision import BF16, COSINE, FP32, INT8, Machine, candidates, machine, quantizable
from facerec.pipeline.weights import cache_dir

if TYPE_CHECKING:
    from facerec.pipeline.engine import LoadedBackbone

FORMAT = "facerec-precision/1"
TIMING_FACES = 8
TIMING_ROUNDS = 3
GAIN = 1.05  # a precision must beat FP32's measured speed by this factor to be chosen over it

Note = Callable[[str], None]


def choose(loaded: LoadedBackbone, allowed: Sequence[str] | None, note: Note) -> tuple[str, nn.Module | None]:
    """The precision `loaded` runs at under auto, among `allowed` (None: any; else in the order to fall
    back on, a gallery's own precision first), and its network when measuring built it (else None)."""
    found = machine(loaded.device)
    measurable = candidates(found.flags, loaded.device.type, quantizable(loaded.plugin), _gpu_bf16(loaded))
    usable = [p for p in measurable if allowed is None or p in allowed]
    if not usable:
        return allowed[0], None
    if len(usable) == 1:
        return usable[0], None
    path = record_path(loaded, found)
    record = read_record(path, note)
    networks: dict[str, nn.Module] = {}
    missing = [p for p in measurable if record is None or p not in record["measured"]]
    if missing:
        record, networks = measure(loaded, [FP32, *(p for p in missing if p != FP32)], found, note, record)
        complete = set(record["measured"]) == set(measurable)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_checked(path, (json.dumps(record, indent=1) + "\n").encode())
        note(summary(loaded.name, found, record, path, complete))
    choice = next((p for p in record["ranking"] if p in usable), usable[0])
    return choice, networks.get(choice)


def _gpu_bf16(loaded: LoadedBackbone) -> bool:
    return loaded.device.type == "cuda" and torch.cuda.is_bf16_supported()


def record_key(loaded: LoadedBackbone, found: Machine) -> dict[str, Any]:
    """What the record holds for: the machine, the model, the int8 scheme, torch's version."""
    return {
        "format": FORMAT,
        "machine": found.to_json(),
        "torch": torch.__version__.split("+")[0],
        "backbone": loaded.name,
        "weights_sha256": loaded.weights_sha256 or "untrained (seed 0)",
        "recipe": (loaded.recipe or loaded.plugin.recipe).to_json(),
        "int8_scheme": scheme(loaded.int8_weight_bits),
    }


def record_path(loaded: LoadedBackbone, found: Machine) -> Path:
    key = hashlib.sha256(json.dumps(record_key(loaded, found), sort_keys=True).encode()).hexdigest()
    weights = (loaded.weights_sha256 or "untrained")[:12]
    return cache_dir() / "facerec-precision" / f"{loaded.name}-{weights}-{key[:16]}.json"


def read_record(path: Path, note: Note) -> dict[str, Any] | None:
    """The recorded measurement, or None when there is none or it is damaged (said, then measured again)."""
    if not path.is_file():
        return None
    try:
        data, _ = read_checked(path)
        record = json.loads(data)
        if record.get("format") != FORMAT or not isinstance(record.get("ranking"), list):
            raise ValueError("not a measurement of this facerec")
    except Damaged as damaged:
        note(f"{damaged}; measuring again")
        return None
    except (OSError, ValueError) as error:
        note(f"{path}: unreadable ({error}); measuring again")
        return None
    return record


def measure(
    loaded: LoadedBackbone,
    precisions: Sequence[str],
    found: Machine,
    note: Note,
    earlier: dict[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, nn.Module]]:
    """Time and check each of `precisions` (FP32 first) and add them to the `earlier` record; the record
    and the networks built. A precision that cannot be measured now (int8 or bf16 with no faces to
    check on, offline) is left out of the record, so that a later run measures it."""
    started = time.perf_counter()
    faces = _once(loaded.faces_source())
    size = (loaded.recipe or loaded.plugin.recipe).size
    reference = loaded.network_at(FP32)
    networks, cosines = {FP32: reference}, {FP32: 1.0}
    for precision in precisions[1:]:
        try:
            networks[precision] = loaded.network_at(precision, faces)
            checked = _once(loaded.checked_on) if precision == BF16 and loaded.checked_on else faces
            cosines[precision] = _cosine(precision, networks[precision], reference, checked, loaded.device)
        except FacerecError as error:
            note(f"--precision auto: {precision} not measured: {error}")
            networks.pop(precision, None)
    rates = faces_per_second(networks, _timing_faces(size).to(loaded.device))
    measured = dict(earlier["measured"]) if earlier else {}
    if earlier:  # rates of another run: scaled by FP32's, which every run measures
        scale = rates[FP32] / measured[FP32]["faces_per_s"]
        measured = {p: {**m, "faces_per_s": round(m["faces_per_s"] * scale, 2)} for p, m in measured.items()}
    measured.update({p: {"faces_per_s": rates[p], "cosine_worst": cosines[p]} for p in networks})
    record = {
        **record_key(loaded, found),
        "measured": measured,
        "ranking": ranking(measured),
        "timing_faces": TIMING_FACES,
        "threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - started + (earlier or {}).get("seconds", 0.0), 2),
    }
    return record, networks


def ranking(measured: dict[str, dict[str, float]]) -> list[str]:
    """The precisions that keep COSINE, fastest first, FP32's speed counted GAIN times."""
    kept = [p for p, m in measured.items() if (m["cosine_worst"] or 0.0) >= COSINE]  # None: unknown
    return sorted(kept, key=lambda p: -measured[p]["faces_per_s"] * (GAIN if p == FP32 else 1.0))


def _cosine(
    precision: str, network: nn.Module, reference: nn.Module, faces: FaceSource, device: torch.device
) -> float | None:
    """The worst cosine to FP32; None when it cannot be known (int8 calibrated on too few faces)."""
    if precision == INT8:  # measured when it was calibrated, and foreseen for faces it was not
        return (identity(network).get("agreement") or {}).get("cosine_unseen")
    if precision == BF16:
        return float(agreement(reference, network, faces().faces.to(device))["cosine_min"])
    raise ValueError(f"no agreement measure for {precision}")


def faces_per_second(networks: dict[str, nn.Module], faces: torch.Tensor) -> dict[str, float]:
    """Each network's best rate on `faces` over TIMING_ROUNDS rounds, after one untimed call each. The
    rounds take the networks in turn, so that a moment of load elsewhere slows them all alike."""
    times: dict[str, list[float]] = {precision: [] for precision in networks}
    with torch.inference_mode():
        for network in networks.values():
            network(faces)
        for _ in range(TIMING_ROUNDS):
            for precision, network in networks.items():
                times[precision].append(_timed(network, faces))
    return {precision: round(len(faces) / min(found), 2) for precision, found in times.items()}


def _timed(network: nn.Module, faces: torch.Tensor) -> float:
    cuda = faces.device.type == "cuda"
    started = time.perf_counter()
    network(faces)
    if cuda:
        torch.cuda.synchronize(faces.device)
    return time.perf_counter() - started


def _timing_faces(size: int) -> torch.Tensor:
    """Standardized-looking faces, the same every time."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(TIMING_FACES, 3, size, size, generator=generator).clamp_(-1, 1)


def _once(source: FaceSource) -> FaceSource:
    """`source`, detecting its photos at most once in this measurement (int8 and bf16 share them)."""
    found: list[Calibration] = []

    def faces() -> Calibration:
        if not found:
            found.append(source())
        return found[0]

    return faces


def summary(name: str, found: Machine, record: dict[str, Any], path: Path, complete: bool) -> str:
    """One line: what was measured, what was chosen, where it is kept."""
    measured = record["measured"]
    figures = "; ".join(
        f"{p} {m['faces_per_s']:.1f} faces/s"
        + ("" if p == FP32 else f", worst cosine {_cosine_text(m['cosine_worst'])}")
        for p, m in measured.items()
    )
    kept = f"measured in {record['seconds']:.1f} s, kept in {path}" + ("" if complete else "; the rest later")
    return f"--precision auto for {name} on {found.cpu}: {figures}; fastest kept: {record['ranking'][0]} ({kept})"


def _cosine_text(cosine: float | None) -> str:
    return "unknown (too few calibration faces)" if cosine is None else f"{cosine:.5f}"
