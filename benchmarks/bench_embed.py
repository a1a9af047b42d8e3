"""Embedding speed: aligned faces, whole process, facerec at each precision against the library each
backbone replaces.

Each side runs in a fresh Python process, as a user's script would: import, build the network, load its
weights, prepare the faces and embed them in batches. The parent times each whole process; each process
times its own embedding loop (wall and CPU time). Two groups, each on the four aligned faces of
../shared/faces/test_images_aligned repeated to `--faces`:

- inception-resnet, 160x160 faces, the same seeded weights (../shared/tools/seeded_weights.py, salt 0)
  from one file on both sides:
  - facenet-pytorch: `InceptionResnetV1().eval()`, `load_state_dict`, calls under `torch.no_grad()`.
    It is installed into this environment for the benchmark only (`pip install --no-deps`: its pins are
    stale);
  - facerec: `facerec.pipeline.engine.load_backbone("inception-resnet", weights=..., precision=P)` and its
    inference network, faces standardized by `standardize_pictures` with the backbone's recipe;
- dlib-resnet, the same faces scaled (bicubic) to 150x150, dlib's chip size, and the real weights of
  face_recognition_models on both sides (the speed does not depend on the pictures):
  - dlib: `face_recognition_model_v1(...).compute_face_descriptor(chips)`, as face_recognition loads it;
    its descriptors are scaled to unit length to compare them with facerec's;
  - facerec: `load_backbone("dlib-resnet", precision=P)` (weights `dlib-v1`), as above.

facerec runs at each precision P of `--precisions` (fp32, int8, bf16, auto): int8 is calibrated once on
the photos of ../shared/faces/knn/train (not on the faces timed) and loaded from its cache as every later
run loads it; auto measures once (facerec.pipeline.autoprecision) and reads its record after that. The
untimed first runs that calibrate and measure are printed with their times. bf16 on a CPU without
AVX512-BF16 or AMX is emulated by PyTorch: its figures there say what emulation costs, not what bf16 can
do. Every side's embeddings are compared with facerec's FP32 ones (cosine, worst and median).

Rounds alternate the sides of a group and the best round of each counts: the machine may be shared,
so each round waits (up to `--wait` seconds) for the CPUs to go idle and reports how many cores other
processes kept busy while it ran. The rate is set against the CPU's peak FP32 rate, estimated from lscpu
(cores x clock x FLOPs per cycle), and against a large matrix product, the rate this CPU reaches in
practice, and against a matrix product at the side's own precision (bf16, int8), what the CPU reaches
at that precision; int8 and bf16 rates count the FP32 work they replace. The CPU's model and the flags
that decide precisions are printed with every table. The torch processes use torch's default threads,
or `--threads`; dlib-bin's DNN runs on one core (no BLAS), as the "CPU cores used" row shows. The
workers may write Python's compiled modules (`__pycache__`), as a user's Python does, even where the
environment says not to (PYTHONDONTWRITEBYTECODE): otherwise facerec, run from its checkout, would
compile its sources in every process (74 ms of a worker's start-up seen here) while the peers, installed
by pip, would not.

    .venv/bin/python benchmarks/bench_embed.py [--faces 256] [--batch 32] [--rounds 3] [--threads N]
        [--models inception-resnet dlib-resnet] [--precisions fp32 int8 bf16 auto]
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before the heavy imports a worker process makes

import argparse  # noqa: E402 (the start time comes first)
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PEER = "facenet-pytorch==2.6.0"
PRECISIONS = ("fp32", "int8", "bf16", "auto")
CALIBRATION = SHARED / "faces" / "knn" / "train"  # int8 calibrates on these photos, not on the faces timed


@dataclass(frozen=True)
class Group:
    """A facerec backbone and the side it replaces: the peer's worker and label, the cost of a face."""

    model: str
    peer: str
    peer_label: str
    gflop_per_face: float
    size: int

    def sides(self, precisions) -> list[str]:
        return [self.peer, *(f"{self.model}@{precision}" for precision in precisions)]


GROUPS = {
    # Inception-ResNet-v1 on one 160x160 face: 1.418 G multiply-adds
    "inception-resnet": Group("inception-resnet", "facenet-pytorch", PEER.replace("==", " "), 2.84, 160),
    # dlib's ResNet on one 150x150 chip: 0.271 G multiply-adds (torch's FlopCounterMode, convolutions + fc)
    "dlib-resnet": Group("dlib-resnet", "dlib", "dlib (face_recognition_model_v1)", 0.542, 150),
}


# The worker processes.


def aligned_faces(count: int, size: int, prepare) -> list:
    """The shared aligned faces at `size` pixels, prepared by the side's own function, repeated to `count`."""
    from PIL import Image

    paths = sorted((SHARED / "faces" / "test_images_aligned").glob("*/1.png"))
    pictures = [Image.open(path).convert("RGB") for path in paths]
    faces = [prepare(p if p.width == size else p.resize((size, size), Image.BICUBIC)) for p in pictures]
    return [faces[i % len(faces)] for i in range(count)]


def facenet_pytorch_side(weights: Path | None, count: int):
    import numpy as np
    import torch
    from facenet_pytorch import InceptionResnetV1, fixed_image_standardization

    network = InceptionResnetV1().eval()
    network.load_state_dict(torch.load(weights, weights_only=True))

    def standardize(image):
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)
        return fixed_image_standardization(pixels)

    def embed(batch: list):
        with torch.no_grad():
            return network(torch.stack(batch)).numpy()

    return embed, aligned_faces(count, 160, standardize), None


def dlib_side(weights: Path | None, count: int):
    """dlib's own network file, as face_recognition loads it (no `weights`: those are the seeded pair's)."""
    import dlib
    import face_recognition_models
    import numpy as np

    encoder = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())

    def embed(batch: list):
        descriptors = np.array(encoder.compute_face_descriptor(batch), dtype=np.float32)
        return descriptors / np.linalg.norm(descriptors, axis=1, keepdims=True)

    return embed, aligned_faces(count, 150, np.asarray), None


def facerec_side(model: str, precision: str, weights: Path | None, count: int):
    """facerec's `model` at `precision` (dlib-resnet: its default weights, dlib-v1, the same file as
    dlib's; no `weights`), its network built before the timed loop. int8 and auto calibrate, when not
    cached, on CALIBRATION's photos with MTCNN and the recipe's aligner, as `facerec index` calibrates
    on the folder it indexes."""
    import torch

    from facerec.pipeline.engine import create_aligner, create_detector, load_backbone
    from facerec.pipeline.int8 import calibration_faces
    from facerec.pipeline.standardize import standardize_pictures

    backbone = load_backbone(model, weights=weights, precision=precision)
    recipe = backbone.plugin.recipe
    backbone.calibration = lambda: calibration_faces(
        create_detector("mtcnn"), create_aligner(recipe)[0], recipe, CALIBRATION
    )
    backbone.inference  # noqa: B018 (built, or read from the cache, before the timed loop)

    def embed(batch: list):
        return backbone.embed(torch.cat(batch)).numpy()

    faces = aligned_faces(count, recipe.size, lambda face: standardize_pictures([face], recipe))
    return embed, faces, backbone.precision


PEERS = {"facenet-pytorch": facenet_pytorch_side, "dlib": dlib_side}


def worker(side: str):
    if side in PEERS:
        return PEERS[side]
    model, _, precision = side.partition("@")
    return lambda weights, count: facerec_side(model, precision, weights, count)


def work(side: str, weights: Path | None, count: int, batch: int, out: Path) -> None:
    """One side's whole job; prints its timings as one JSON line and saves the embeddings to `out`."""
    embed, faces, precision = worker(side)(weights, count)
    import numpy as np

    torch = sys.modules.get("torch")  # not imported by the dlib side, whose process needs none
    ready, cpu = time.perf_counter(), time.process_time()
    embeddings = np.concatenate([embed(faces[i : i + batch]) for i in range(0, count, batch)])
    done = time.perf_counter()
    np.save(out, embeddings, allow_pickle=False)
    timings = {
        "setup_s": ready - STARTED,
        "embed_s": done - ready,
        "embed_cpu_s": time.process_time() - cpu,
        "threads": torch.get_num_threads() if torch else None,
        "precision": precision,
    }
    print(json.dumps(timings))


# The parent process.


def ensure_peer() -> None:
    if importlib.util.find_spec("facenet_pytorch") is None:
        print(f"installing {PEER} for this benchmark (--no-deps)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", PEER], check=True)


def seeded_weights(folder: Path) -> Path:
    """Salt-0 seeded weights without logits (what InceptionResnetV1() without `pretrained` loads)."""
    spec = importlib.util.spec_from_file_location("seeded_weights", SHARED / "tools" / "seeded_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import torch

    shapes = json.loads((SHARED / "reference" / "inception_resnet_v1.shapes.json").read_text())
    shapes = {key: shape for key, shape in shapes.items() if not key.startswith("logits.")}
    path = folder / "seeded-salt0.pt"
    torch.save(module.seeded_state_dict(shapes, 0), path)
    return path


def mtcnn_home(folder: Path) -> Path:
    """A TORCH_HOME whose checkpoints hold ../shared's MTCNN weights, as a first download leaves them."""
    checkpoints = folder / "torch-home" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for net in ("pnet", "rnet", "onet"):
        (checkpoints / f"{net}.pt").symlink_to(SHARED / "weights" / "mtcnn" / f"{net}.pt")
    return checkpoints.parent


def busy_cpu_seconds() -> float:
    """CPU seconds all processes have spent busy since boot (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_for_idle(limit_s: float) -> None:
    """Wait until other processes use under a fifth of a core, or `limit_s` has passed."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = busy_cpu_seconds()
        time.sleep(1.0)
        if busy_cpu_seconds() - before < 0.2:
            return


def run_side(side: str, weights: Path | None, args: argparse.Namespace, out: Path) -> dict:
    """One worker process, timed whole; also the cores other processes kept busy meanwhile."""
    command = [sys.executable, __file__, "--worker", side, "--out", str(out)]
    command += ["--faces", str(args.faces), "--batch", str(args.batch)]
    command += ["--weights", str(weights)] if weights else []
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as a user's Python keeps compiled modules (see the docstring)
    wait_for_idle(args.wait)
    busy, ours = busy_cpu_seconds(), children_cpu_seconds()
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - started
    others = (busy_cpu_seconds() - busy) - (children_cpu_seconds() - ours)
    if result.returncode != 0:
        sys.exit(f"{side} worker failed:\n{result.stderr}")
    timings = json.loads(result.stdout.strip().splitlines()[-1])
    return {
        **timings,
        "process_s": elapsed,
        "other_cores": max(others, 0.0) / elapsed,
        "stderr": result.stderr,
    }


def lscpu() -> dict[str, str]:
    output = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    return {
        key.strip(): value.strip() for key, _, value in (line.partition(":") for line in output.splitlines())
    }


def clock_ghz(info: dict[str, str]) -> tuple[float, str]:
    """lscpu's maximum clock, else the current one from lscpu or /proc/cpuinfo (VMs often show only that)."""
    for key in ("CPU max MHz", "CPU MHz"):
        if info.get(key):
            return float(info[key]) / 1000, f"lscpu '{key}'"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return float(line.split(":")[1]) / 1000, "/proc/cpuinfo 'cpu MHz' (nominal: lscpu shows none)"
    raise SystemExit("cannot tell the CPU clock")


def flops_per_cycle(info: dict[str, str]) -> tuple[int, str]:
    """FP32 FLOPs per cycle per core from the vector extensions, assuming two FMA pipes per core."""
    flags = set(info.get("Flags", "").split())
    if "avx512f" in flags and info.get("Vendor ID") == "AuthenticAMD" and info.get("CPU family") == "25":
        return 32, "AVX-512 on Zen 4, run as 2 x 256-bit FMA pipes: 2 x 8 lanes x 2"
    if "avx512f" in flags:
        return 64, "AVX-512 FMA: 2 pipes x 16 lanes x 2"
    if {"avx2", "fma"} <= flags:
        return 32, "AVX2 FMA: 2 pipes x 8 lanes x 2"
    return 8, "SSE: 4 lanes x (add + multiply)"


@dataclass(frozen=True)
class Peak:
    """The CPU's peak FP32 rate as estimated from lscpu, and how."""

    gflops: float
    ghz: float
    how: str


def estimated_peak() -> Peak:
    info = lscpu()
    cores = int(info.get("Core(s) per socket", "1")) * int(info.get("Socket(s)", "1"))
    ghz, clock_source = clock_ghz(info)
    per_cycle, why = flops_per_cycle(info)
    gflops = cores * ghz * per_cycle
    how = (
        f"{info.get('Model name', 'CPU')}: {cores} cores x {ghz:.2f} GHz ({clock_source}) x {per_cycle} "
        f"FLOP/cycle ({why}) = {gflops:.0f} GFLOP/s"
    )
    return Peak(gflops, ghz, how)


def matmul_gflops(wait_s: float) -> dict[str, float]:
    """The rate of a large matrix product at fp32, bf16 and int8 with torch's default threads, on idle
    CPUs if they get idle: a floor for the CPU's peak at each precision, against which each side's
    embedding rate is set (int8 and bf16 counted as the FP32 work they replace).

    MKL's FP32 product runs close to the FMA units' limit: when it beats the lscpu estimate, the CPU runs
    above the clock it reports (turbo). bf16 runs on oneDNN (AMX tiles where the CPU has them); int8 is
    torch's `_int_mm` (int8 in, int32 out, VNNI or AMX-INT8), absent from some builds.
    """
    import torch

    size = 3072
    a, b = torch.randn(size, size), torch.randn(size, size)
    products = {
        "fp32": (a, b, torch.matmul),
        "bf16": (a.bfloat16(), b.bfloat16(), torch.matmul),
        "int8": (a.mul(20).to(torch.int8), b.mul(20).to(torch.int8), getattr(torch, "_int_mm", None)),
    }
    rates = {}
    for precision, (x, y, product) in products.items():
        try:
            product(x, y)
        except (TypeError, RuntimeError, NotImplementedError):
            continue  # this build has no such product on the CPU
        wait_for_idle(wait_s)
        rates[precision] = 2 * size**3 / min(_timed(partial(product, x, y)) for _ in range(5)) / 1e9
    return rates


def _timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def cpu_line() -> str:
    """The CPU's model and the flags that decide precisions, as every benchmark prints with its figures."""
    import torch

    from facerec.pipeline.precision import machine

    return f"CPU: {machine(torch.device('cpu')).describe()}; torch {torch.__version__}"


def table(
    group: Group,
    sides: list[str],
    best: dict[str, dict],
    args,
    peak: Peak,
    matmuls: dict[str, float],
    checks: dict,
) -> str:
    """One markdown table: each side's figures, then each precision against FP32 and FP32 against the peer."""
    fp32 = f"{group.model}@fp32"
    runs = [best[side] for side in sides]

    def label(side: str) -> str:
        if side == group.peer:
            return group.peer_label
        precision = side.partition("@")[2]
        chosen = best[side]["precision"]
        return f"facerec {precision}" + (f" (chose {chosen})" if precision == "auto" else "")

    def rate(side: dict) -> float:
        return args.faces * group.gflop_per_face / side["embed_s"]

    def own_matmul(side: dict) -> str:
        precision = side["precision"] if side["precision"] in matmuls else "fp32"  # the peers: fp32
        return f"{rate(side) / matmuls[precision]:.0%}"

    matmul = matmuls["fp32"]
    own = ", ".join(f"{precision} {value:.0f}" for precision, value in matmuls.items())

    def ratios(key: str) -> list[str]:
        found = [f"{best[group.peer][key] / best[fp32][key]:.2f}x"]  # FP32 against the peer
        return found + [f"{best[fp32][key] / best[side][key]:.2f}x" for side in sides[2:]]

    rows = [
        ("whole process, s", [f"{run['process_s']:.2f}" for run in runs], ratios("process_s")),
        (f"embedding {args.faces} faces, s", [f"{run['embed_s']:.2f}" for run in runs], ratios("embed_s")),
        ("faces/s (embedding)", [f"{args.faces / run['embed_s']:.1f}" for run in runs], []),
        ("CPU cores used (embedding)", [f"{run['embed_cpu_s'] / run['embed_s']:.2f}" for run in runs], []),
        ("GFLOP/s (embedding; int8, bf16: the FP32 work they replace)", [f"{rate(run):.0f}" for run in runs], []),
        (f"share of peak FP32 per lscpu ({peak.gflops:.0f} GFLOP/s)", [f"{rate(run) / peak.gflops:.0%}" for run in runs], []),
        (f"share of a measured 3072² fp32 matmul ({matmul:.0f} GFLOP/s)", [f"{rate(run) / matmul:.0%}" for run in runs], []),
        (f"share of a 3072² matmul at the side's precision ({own} GFLOP/s)", [own_matmul(run) for run in runs], []),
        ("cosine to facerec FP32, worst / median", [checks[side] for side in sides], []),
    ]  # fmt: skip
    threads = best[fp32]["threads"]
    against = ["FP32 vs peer", *(f"{side.partition('@')[2]} vs FP32" for side in sides[2:])]
    head = f"{args.faces} faces of {group.size}x{group.size}, batch {args.batch}, torch on {threads} thread{'s' if threads > 1 else ''}"
    lines = [
        "| " + " | ".join([head, *map(label, sides), *against]) + " |",
        "| --- " + "| ---: " * (len(sides) + len(against)) + "|",
    ]
    for name, values, compared in rows:
        lines.append("| " + " | ".join([name, *values, *(compared or [""] * len(against))]) + " |")
    if matmul > peak.gflops:
        lines.append(
            f"\nThe matmul beats the lscpu estimate: the CPU runs above its reported clock (at least "
            f"{peak.ghz * matmul / peak.gflops:.2f} GHz), so the matmul row is the truer share of peak."
        )
    lines.append(f"\n{cpu_line()}")
    lines += [f"first run, untimed: {line}" for line in checks["first runs"]]
    lines.append(
        "other processes kept "
        + " / ".join(f"{run['other_cores']:.2f}" for run in runs)
        + " cores busy during these runs"
    )
    return "\n".join(lines)


def best_rounds(sides: list[str], weights: Path | None, folder: Path, args) -> dict[str, dict]:
    """Each side's fastest whole process over the rounds, which alternate the sides."""
    best: dict[str, dict] = {}
    for round_number in range(1, args.rounds + 1):
        for side in sides:
            timings = run_side(side, weights, args, folder / f"{side}.npy")
            print(
                f"round {round_number} {side:24s} process {timings['process_s']:.2f} s, "
                f"setup {timings['setup_s']:.2f} s, embedding {timings['embed_s']:.2f} s, "
                f"other processes {timings['other_cores']:.2f} cores",
                flush=True,
            )
            if side not in best or timings["process_s"] < best[side]["process_s"]:
                best[side] = timings
    return best


def first_runs(group: Group, precisions, weights: Path | None, folder: Path, args) -> list[str]:
    """Calibrate int8 and measure auto once, untimed, as a first run on a machine does; what they said."""
    said = []
    for precision in [p for p in ("int8", "auto") if p in precisions]:
        timings = run_side(f"{group.model}@{precision}", weights, args, folder / "first.npy")
        notes = [
            line
            for line in timings["stderr"].splitlines()
            if "calibrating" in line or "--precision auto" in line
        ]
        said += [f"{precision}, {timings['process_s']:.1f} s: {note}" for note in notes] or [
            f"{precision}, {timings['process_s']:.1f} s (nothing to calibrate or measure)"
        ]
    return said


def cosines(group: Group, sides: list[str], folder: Path) -> dict[str, str]:
    import numpy as np

    fp32 = np.load(folder / f"{group.model}@fp32.npy")
    found = {}
    for side in sides:
        vectors = np.load(folder / f"{side}.npy")
        cosine = np.sum(fp32 * vectors, axis=1) / np.linalg.norm(vectors, axis=1)
        found[side] = f"{cosine.min():.5f} / {np.median(cosine):.5f}"
    return found


def compare(args: argparse.Namespace) -> None:
    peak = estimated_peak()
    print(cpu_line())
    print(f"peak FP32 estimate: {peak.how}")
    precisions = ["fp32", *(p for p in args.precisions if p != "fp32")]
    tables = []
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        os.environ["TORCH_HOME"] = str(mtcnn_home(folder))  # int8 calibration detects with MTCNN; offline
        os.environ.setdefault("FACEREC_MIRROR", "http://127.0.0.1:9")
        for model in args.models:
            group = GROUPS[model]
            weights = None
            if model == "inception-resnet":
                ensure_peer()
                weights = seeded_weights(folder)
            said = first_runs(group, precisions, weights, folder, args)
            sides = group.sides(precisions)
            best = best_rounds(sides, weights, folder, args)
            checks = {**cosines(group, sides, folder), "first runs": said}
            tables.append((group, sides, best, checks))
    matmuls = matmul_gflops(args.wait)
    for group, sides, best, checks in tables:
        print()
        print(table(group, sides, best, args, peak, matmuls, checks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", nargs="+", choices=list(GROUPS), default=list(GROUPS))
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--threads", type=int, help="torch's threads (OMP_NUM_THREADS; default: torch's)")
    parser.add_argument("--wait", type=float, default=120, help="seconds to wait for idle CPUs per run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        work(args.worker, args.weights, args.faces, args.batch, args.out)
    else:
        compare(args)


if __name__ == "__main__":
    main()
