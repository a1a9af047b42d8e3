"""Training speed: faces per second of a triplet step at batch sizes 8 to 64, and where a step's time goes.

Not a test: it prints markdown tables. The data are 128 face crops (16 identities x 8, made from the
aligned faces of ../shared/faces/test_images_aligned with small shifts and colour changes, so every file
differs) read with the `none` detector through the face cache; the network is Inception-ResNet-v1 with
seeded weights, trained with the layers up to `--freeze` fixed (default mixed_7a: repeat_3, block8 and
the embedding layers train, a usual fine-tuning).

- Throughput: facerec's whole step (sampling, loading and augmenting the faces, forward, mining, loss,
  backward, optimizer) with the `dict` miner, against facenet-pytorch's InceptionResnetV1 doing only the
  forward and backward passes of the same number of faces already in memory (the peer: a bare loop, the
  ceiling for any trainer on this CPU). A `dict` step embeds each anchor with a positive and a negative,
  three faces per anchor.
- Shares: the fraction of a step spent drawing companions and mining, and loading faces, per miner.
  Target: mining under 5% of a step.

The machine may be shared: each setting runs `--rounds` times, the two sides alternating, and the best
round of each side counts; the load average before and after is printed with the tables.
facenet-pytorch is installed for benchmarks only (`pip install --no-deps facenet-pytorch==2.6.0`).

    .venv/bin/python benchmarks/bench_train.py [--batch-sizes 8,16,32,64] [--steps 2] [--rounds 2]
                                               [--freeze mixed_7a]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_embed import cpu_line

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
IDENTITIES, IMAGES_PER_IDENTITY = 16, 8
MINERS = ("dict", "batch-hard", "semi-hard")


def make_dataset(folder: Path) -> Path:
    """16 identities x 8 distinct 160x160 face crops from the shared aligned faces."""
    faces = [
        Image.open(p).convert("RGB")
        for p in sorted((SHARED / "faces" / "test_images_aligned").glob("*/1.png"))
    ]
    rng = np.random.default_rng(0)
    for identity in range(IDENTITIES):
        (folder / f"person{identity:02d}").mkdir(parents=True)
        for image in range(IMAGES_PER_IDENTITY):
            face = faces[(identity + image) % len(faces)]
            dx, dy = (int(v) for v in rng.integers(-6, 7, 2))
            shifted = face.transform(face.size, Image.AFFINE, (1, 0, dx, 0, 1, dy), resample=Image.BILINEAR)
            varied = ImageEnhance.Brightness(shifted).enhance(float(rng.uniform(0.8, 1.2)))
            varied.save(folder / f"person{identity:02d}" / f"{image}.png")
    return folder


def seeded_weights(target: Path) -> Path:
    spec = importlib.util.spec_from_file_location("seeded_weights", SHARED / "tools" / "seeded_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import json

    shapes = json.loads((SHARED / "reference" / "inception_resnet_v1.shapes.json").read_text())
    torch.save(module.seeded_state_dict(shapes, 0), target)
    return target


def facerec_steps(
    data: Path, weights: Path, cache: Path, miner: str, batch_size: int, freeze: str, steps: int
):
    """(faces per step, [per-step seconds dicts]) of facerec's trainer, after one warm-up step."""
    from facerec.training.distributed import Processes
    from facerec.training.trainer import Trainer, TrainSettings

    settings = TrainSettings(
        data=str(data),
        weights=str(weights),
        miner=miner,
        batch_size=batch_size,
        per_identity=4,
        freeze=freeze,
        detector="none",
    )
    trainer = Trainer(settings, torch.device("cpu"), Processes(), cache, lambda message: None)
    trainer.train_mode()
    batches = trainer.sampler.epoch(1)
    trainer.step(1, 0, batches[0])
    results = [trainer.step(1, n, batches[n % len(batches)]) for n in range(1, steps + 1)]
    return results[0].faces, [r.seconds for r in results]


def peer_seconds(weights: Path, faces: int, freeze: str, steps: int) -> float | None:
    """Median seconds of facenet-pytorch's forward and backward on `faces` faces, same layers frozen."""
    try:
        from facenet_pytorch import InceptionResnetV1
    except ImportError:
        return None
    model = InceptionResnetV1()
    state = torch.load(weights, weights_only=True)
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("logits.")}, strict=False)
    names = [name for name, _ in model.named_children()]
    for name, child in model.named_children():
        if names.index(name) <= names.index(freeze):
            child.requires_grad_(False)
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    batch = torch.randn(faces, 3, 160, 160)
    optimizer = torch.optim.Adagrad([p for p in model.parameters() if p.requires_grad], lr=0.05)
    timings = []
    for _ in range(steps + 1):
        began = time.perf_counter()
        loss = model(batch).pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        timings.append(time.perf_counter() - began)
    return statistics.median(timings[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="8,16,32,64")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round, after one warm-up")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per setting; the best counts")
    parser.add_argument("--freeze", default="mixed_7a")
    parser.add_argument("--share-batch-size", type=int, default=32)
    args = parser.parse_args()
    sizes = [int(v) for v in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        data = make_dataset(folder / "faces")
        weights = seeded_weights(folder / "seeded.pt")
        cache = folder / "cache"
        print(cpu_line())
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, frozen through {args.freeze}")
        print(f"load average before: {os.getloadavg()[0]:.1f}\n")
        print(
            "| batch (anchors) | faces/step | facerec faces/s | facenet-pytorch fwd+bwd faces/s | facerec/peer |"
        )
        print("| --- | --- | --- | --- | --- |")
        for size in sizes:
            ours, theirs = 0.0, 0.0
            for _ in range(args.rounds):
                faces, seconds = facerec_steps(data, weights, cache, "dict", size, args.freeze, args.steps)
                ours = max(ours, faces / statistics.median(s["step"] for s in seconds))
                peer = peer_seconds(weights, faces, args.freeze, args.steps)
                theirs = max(theirs, faces / peer) if peer else 0.0
            peer_column = f"{theirs:.2f}" if theirs else "n/a (facenet-pytorch not installed)"
            ratio = f"{ours / theirs:.2f}" if theirs else "n/a"
            print(f"| {size} | {faces} | {ours:.2f} | {peer_column} | {ratio} |", flush=True)
        print(f"\nbatch of {args.share_batch_size} anchors, the round with the fastest step\n")
        print("| miner | faces/step | step s | mining % | loading % |")
        print("| --- | --- | --- | --- | --- |")
        for miner in MINERS:
            rounds = [
                facerec_steps(data, weights, cache, miner, args.share_batch_size, args.freeze, args.steps)
                for _ in range(args.rounds)
            ]
            faces, seconds = min(rounds, key=lambda r: sum(s["step"] for s in r[1]))
            step = sum(s["step"] for s in seconds)
            mine = 100 * sum(s["mine"] for s in seconds) / step
            load = 100 * sum(s["load"] for s in seconds) / step
            print(f"| {miner} | {faces} | {step / len(seconds):.2f} | {mine:.2f} | {load:.2f} |", flush=True)
        print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    sys.exit(main())
