"""Embedding speed: aligned faces, whole process, facerec against the library each backbone replaces.

Each side runs in a fresh Python process, as a user's script would: import, build the network, load its
weights, prepare the faces and embed them in batches. The parent times each whole process; each process
times its own embedding loop (wall and CPU time). Two pairs, each on the four aligned faces of
../shared/faces/test_images_aligned repeated to `--faces`:

- inception-resnet, 160x160 faces, the same seeded weights (../shared/tools/seeded_weights.py, salt 0)
  from one file on both sides:
  - facenet-pytorch: `InceptionResnetV1().eval()`, `load_state_dict`, calls under `torch.no_grad()`.
    It is installed into this environment for the benchmark only (`pip install --no-deps`: its pins are
    stale);
  - facerec: `registry().create("backbone", "inception-resnet")`, `build(state_dict)`, `for_inference`,
    faces standardized by `facerec.pipeline.standardize.standardize_pictures` with the backbone's recipe;
- each facerec side again at `--precision int8` (facerec.pipeline.precision: static int8, calibrated once on the
  photos of ../shared/faces/knn/train, not on the faces timed, then loaded from its cache as every later
  run loads it; the untimed first run's time is printed as the calibration's), with the cosine of its
  embeddings to facerec's FP32 ones on the same faces;
- dlib-resnet, the same faces scaled (bicubic) to 150x150, dlib's chip size, and the real weights of
  face_recognition_models on both sides (the speed does not depend on the pictures):
  - dlib: `face_recognition_model_v1(...).compute_face_descriptor(chips)`, as face_recognition loads it;
    its descriptors are scaled to unit length to compare them with facerec's;
  - facerec: `facerec.pipeline.engine.load_backbone("dlib-resnet")` (weights `dlib-v1`) and its inference form.

Rounds alternate the two sides of a pair and the best round of each counts: the machine may be shared,
so each round waits (up to `--wait` seconds) for the CPUs to go idle and reports how many cores other
processes kept busy while it ran. The rate is set against the CPU's peak FP32 rate, estimated from lscpu
(cores x clock x FLOPs per cycle), and against a large matrix product, the rate this CPU reaches in
practice. The torch processes use torch's default threads, or `--threads` (on a busy machine one thread
is often faster than two); dlib-bin's DNN runs on one core (no BLAS), as the "CPU cores used" row shows.

    .venv/bin/python benchmarks/bench_embed.py [--faces 128] [--batch 32] [--rounds 3] [--threads N]
        [--models inception-resnet dlib-resnet]
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
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PEER = "facenet-pytorch==2.6.0"


CALIBRATION = SHARED / "faces" / "knn" / "train"  # int8 calibrates on these photos, not on the faces timed


@dataclass(frozen=True)
class Pair:
    """A facerec backbone and the side it replaces: worker names (the peer, facerec at FP32, facerec at
    int8), what the table calls the peer, cost."""

    peer: str
    ours: str
    int8: str
    peer_label: str
    gflop_per_face: float
    size: int

    @property
    def sides(self) -> tuple[str, str, str]:
        return self.peer, self.ours, self.int8


PAIRS = {
    # Inception-ResNet-v1 on one 160x160 face: 1.418 G multiply-adds
    "inception-resnet": Pair(
        "facenet-pytorch", "facerec", "facerec-int8", PEER.replace("==", " "), 2.84, 160
    ),
    # dlib's ResNet on one 150x150 chip: 0.271 G multiply-adds (torch's FlopCounterMode, convolutions + fc)
    "dlib-resnet": Pair(
        "dlib",
        "facerec-dlib-resnet",
        "facerec-dlib-resnet-int8",
        "dlib (face_recognition_model_v1)",
        0.542,
        150,
    ),
}
SIDES = tuple(side for pair in PAIRS.values() for side in pair.sides)


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

    return embed, aligned_faces(count, 160, standardize)


def facerec_side(weights: Path | None, count: int):
    import torch

    from facerec.contract.registry import registry
    from facerec.pipeline.standardize import standardize_pictures
    from facerec.pipeline.weights import load_state_dict

    backbone = registry().create("backbone", "inception-resnet")
    network = backbone.for_inference(backbone.build(load_state_dict(weights)))

    def embed(batch: list):
        return network(torch.cat(batch)).numpy()

    return embed, aligned_faces(count, 160, lambda face: standardize_pictures([face], backbone.recipe))


def dlib_side(weights: Path | None, count: int):
    """dlib's own network file, as face_recognition loads it (no `weights`: those are the seeded pair's)."""
    import dlib
    import face_recognition_models
    import numpy as np

    encoder = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())

    def embed(batch: list):
        descriptors = np.array(encoder.compute_face_descriptor(batch), dtype=np.float32)
        return descriptors / np.linalg.norm(descriptors, axis=1, keepdims=True)

    return embed, aligned_faces(count, 150, np.asarray)


def facerec_dlib_side(weights: Path | None, count: int):
    """facerec's dlib-resnet with its default weights, dlib-v1: the same file as dlib's (no `weights`)."""
    import torch

    from facerec.pipeline.engine import load_backbone
    from facerec.pipeline.standardize import standardize_pictures

    backbone = load_backbone("dlib-resnet")
    recipe = backbone.plugin.recipe
    backbone.inference  # noqa: B018 (built before the timed loop, as for the int8 side)

    def embed(batch: list):
        return backbone.embed(torch.cat(batch)).numpy()

    return embed, aligned_faces(count, 150, lambda face: standardize_pictures([face], recipe))


def int8_side(model: str, size: int):
    """facerec's `--precision int8` form of `model`, calibrated once on CALIBRATION's photos (MTCNN and
    the recipe's aligner, as `facerec index` calibrates on the folder it indexes) and loaded from the
    cache after that: the first, untimed run of the benchmark calibrates."""

    def side(weights: Path | None, count: int):
        import torch

        from facerec.pipeline.engine import create_aligner, create_detector, load_backbone
        from facerec.pipeline.precision import calibration_faces
        from facerec.pipeline.standardize import standardize_pictures

        backbone = load_backbone(model, weights=weights, precision="int8")
        recipe = backbone.plugin.recipe
        backbone.calibration = lambda: calibration_faces(
            create_detector("mtcnn"), create_aligner(recipe)[0], recipe, CALIBRATION
        )
        backbone.inference  # noqa: B018 (built, or read from the cache, before the timed loop)

        def embed(batch: list):
            return backbone.embed(torch.cat(batch)).numpy()

        return embed, aligned_faces(count, size, lambda face: standardize_pictures([face], recipe))

    return side


WORKERS = {
    "facenet-pytorch": facenet_pytorch_side,
    "facerec": facerec_side,
    "facerec-int8": int8_side("inception-resnet", 160),
    "dlib": dlib_side,
    "facerec-dlib-resnet": facerec_dlib_side,
    "facerec-dlib-resnet-int8": int8_side("dlib-resnet", 150),
}


def work(side: str, weights: Path | None, count: int, batch: int, out: Path) -> None:
    """One side's whole job; prints its timings as one JSON line and saves the embeddings to `out`."""
    embed, faces = WORKERS[side](weights, count)
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
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)} if args.threads else None
    wait_for_idle(args.wait)
    busy, ours = busy_cpu_seconds(), children_cpu_seconds()
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - started
    others = (busy_cpu_seconds() - busy) - (children_cpu_seconds() - ours)
    if result.returncode != 0:
        sys.exit(f"{side} worker failed:\n{result.stderr}")
    timings = json.loads(result.stdout.strip().splitlines()[-1])
    return {**timings, "process_s": elapsed, "other_cores": max(others, 0.0) / elapsed}


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


def matmul_gflops(wait_s: float) -> float:
    """The FP32 rate of a large matrix product with torch's default threads, on idle CPUs if they get idle.

    MKL's matrix product runs close to the FMA units' limit, so this is a floor for the true peak: when it
    beats the lscpu estimate, the CPU runs above the clock it reports (turbo).
    """
    import torch

    a, b = torch.randn(3072, 3072), torch.randn(3072, 3072)
    a @ b
    wait_for_idle(wait_s)
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * 3072**3 / best / 1e9


def _timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def table(pair: Pair, best: dict[str, dict], args, peak: Peak, matmul: float, checks: dict) -> str:
    peer, ours, int8 = (best[side] for side in pair.sides)

    def rate(side: dict) -> float:
        return args.faces * pair.gflop_per_face / side["embed_s"]

    def cores(side: dict) -> str:
        return f"{side['embed_cpu_s'] / side['embed_s']:.2f}"

    def times(key: str) -> tuple:
        return tuple(f"{side[key]:.2f}" for side in (peer, ours, int8)), (
            peer[key] / ours[key],
            ours[key] / int8[key],
            peer[key] / int8[key],
        )

    process, process_x = times("process_s")
    embedding, embedding_x = times("embed_s")
    rows = [
        ("whole process, s", *process, *process_x),
        (f"embedding {args.faces} faces, s", *embedding, *embedding_x),
        ("faces/s (embedding)", *(f"{args.faces / side['embed_s']:.1f}" for side in (peer, ours, int8)), None, None, None),
        ("CPU cores used (embedding)", cores(peer), cores(ours), cores(int8), None, None, None),
        ("GFLOP/s (embedding; int8: the FP32 work it replaces)", *(f"{rate(side):.0f}" for side in (peer, ours, int8)), None, None, None),
        (f"share of peak FP32 per lscpu ({peak.gflops:.0f} GFLOP/s)", *(f"{rate(side) / peak.gflops:.0%}" for side in (peer, ours, int8)), None, None, None),
        (f"share of a measured 3072² matmul ({matmul:.0f} GFLOP/s)", *(f"{rate(side) / matmul:.0%}" for side in (peer, ours, int8)), None, None, None),
    ]  # fmt: skip
    threads = ours["threads"]
    lines = [
        f"| {args.faces} faces of {pair.size}x{pair.size}, batch {args.batch}, torch on {threads} thread{'s' if threads > 1 else ''} | {pair.peer_label} | facerec FP32 | facerec int8 | FP32 vs peer | int8 vs FP32 | int8 vs peer |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]  # fmt: skip
    lines += [
        f"| {name} | {a} | {b} | {c} | " + " | ".join(f"{x:.2f}x" if x else "" for x in ratios) + " |"
        for name, a, b, c, *ratios in rows
    ]
    if matmul > peak.gflops:
        lines.append(
            f"\nThe matmul beats the lscpu estimate: the CPU runs above its reported clock (at least "
            f"{peak.ghz * matmul / peak.gflops:.2f} GHz), so the matmul row is the truer share of peak."
        )
    lines.append(
        f"\nmax abs difference of the unit embeddings, facerec FP32 vs {pair.peer}: {checks['diff']:.1e}"
    )
    lines.append(
        f"int8 against facerec FP32 on the same faces: cosine min {checks['cos_min']:.5f}, median "
        f"{checks['cos_median']:.5f}; calibrating once (untimed run, then cached): {checks['calibration_s']:.1f} s"
    )
    lines.append(
        "other processes kept "
        + " / ".join(f"{side['other_cores']:.2f}" for side in (peer, ours, int8))
        + " cores busy during these runs"
    )
    return "\n".join(lines)


def best_rounds(pair: Pair, weights: Path | None, folder: Path, args) -> dict[str, dict]:
    """Each side's fastest whole process over the rounds, which alternate the two sides."""
    best: dict[str, dict] = {}
    for round_number in range(1, args.rounds + 1):
        for side in pair.sides:
            timings = run_side(side, weights, args, folder / f"{side}.npy")
            print(
                f"round {round_number} {side:19s} process {timings['process_s']:.2f} s, "
                f"setup {timings['setup_s']:.2f} s, embedding {timings['embed_s']:.2f} s, "
                f"other processes {timings['other_cores']:.2f} cores",
                flush=True,
            )
            if side not in best or timings["process_s"] < best[side]["process_s"]:
                best[side] = timings
    return best


def compare(args: argparse.Namespace) -> None:
    import numpy as np

    peak = estimated_peak()
    print(f"peak FP32 estimate: {peak.how}")
    tables = []
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        os.environ["TORCH_HOME"] = str(mtcnn_home(folder))  # int8 calibration detects with MTCNN; offline
        os.environ.setdefault("FACEREC_MIRROR", "http://127.0.0.1:9")
        for model in args.models:
            pair = PAIRS[model]
            weights = None
            if model == "inception-resnet":
                ensure_peer()
                weights = seeded_weights(folder)
            calibration_s = run_side(pair.int8, weights, args, folder / "calibrating.npy")["process_s"]
            best = best_rounds(pair, weights, folder, args)
            peer, ours, int8 = (np.load(folder / f"{side}.npy") for side in pair.sides)
            cosines = np.sum(ours * int8, axis=1) / np.linalg.norm(int8, axis=1)
            checks = {
                "diff": float(np.abs(peer - ours).max()),
                "cos_min": float(cosines.min()),
                "cos_median": float(np.median(cosines)),
                "calibration_s": calibration_s,
            }
            tables.append((pair, best, checks))
    matmul = matmul_gflops(args.wait)
    for pair, best, checks in tables:
        print()
        print(table(pair, best, args, peak, matmul, checks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", nargs="+", choices=list(PAIRS), default=list(PAIRS))
    parser.add_argument("--threads", type=int, help="torch's threads (OMP_NUM_THREADS; default: torch's)")
    parser.add_argument("--wait", type=float, default=120, help="seconds to wait for idle CPUs per run")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        work(args.worker, args.weights, args.faces, args.batch, args.out)
    else:
        compare(args)


if __name__ == "__main__":
    main()
