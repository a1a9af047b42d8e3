"""Two processes (torchrun, gloo on the CPU) train as one does, up to floating-point noise, resumed too.

Dropout draws its masks per process, so the comparison freezes the network through its dropout layer;
SGD keeps the weights a linear function of the gradients, so floating-point noise in them stays as small
in the weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from support import KNN_TRAIN

SETTINGS = [
    "--batch-size",
    "4",
    "--freeze",
    "dropout",
    "--optimizer",
    "sgd",
    "--lr",
    "1",
    "--epochs",
    "1",
    "--device",
    "cpu",
]


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def test_two_processes_train_as_one_resumed_too(seeded_weights, face_cache, torch_home, tmp_path):
    env = {"TORCH_HOME": str(torch_home)}
    args = [
        "train",
        str(KNN_TRAIN),
        "--weights",
        str(seeded_weights),
        "--face-cache",
        str(face_cache),
        *SETTINGS,
    ]
    one = run([sys.executable, "-m", "facerec", *args, "--epochs", "2", "--out", str(tmp_path / "one")], env)
    assert one.returncode == 0, one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    two = run([*torchrun, "-m", "facerec", *args, "--epochs", "1", "--out", str(tmp_path / "two")], env)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("epoch 1/1") == 1  # one process reports and writes
    assert two.stderr.count("used only as negatives") == 1
    resumed = run(
        [*torchrun, "-m", "facerec", *args, "--epochs", "2", "--resume", "--out", str(tmp_path / "two")], env
    )
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.splitlines()[0].startswith("epoch 2/2")

    metrics = {
        name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        for name in ("one", "two")
    }
    for single, double in zip(metrics["one"], metrics["two"], strict=True):
        assert single["epoch"] == double["epoch"] and single["steps"] == double["steps"] == 2
        assert abs(single["loss"] - double["loss"]) < 1e-5 * single["loss"]
    weights = {
        name: torch.load(tmp_path / name / "backbone.pt", weights_only=True) for name in ("one", "two")
    }
    start = torch.load(seeded_weights, weights_only=True)
    moved = (weights["one"]["last_linear.weight"] - start["last_linear.weight"]).abs().max().item()
    assert moved > 5e-4
    difference = max(
        (weights["one"][k].float() - weights["two"][k].float()).abs().max().item() for k in start
    )
    assert difference < 1e-6, (difference, moved)  # float32 rounding: a few units in the last place
