"""`torchrun --nproc-per-node 2 -m facerec index` (gloo on the CPU) makes the gallery one process makes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from facerec.gallery.stores import open_store
from support.gallery import small_people

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def index(command: list[str], people: Path, gallery: Path, weights: Path, home: Path):
    args = ["-m", "facerec", "index", str(people), "--gallery", str(gallery), "--weights", str(weights)]
    env = {**os.environ, "TORCH_HOME": str(home), "FACEREC_MIRROR": "http://127.0.0.1:9"}
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=300)


def contents(gallery: Path):
    """What a gallery holds, without the times of enrollment."""
    state = open_store(gallery).read()
    try:
        entries = [(e.identity, e.source, e.sha256) for e in state.entries()]
        boxes = np.array([e.box for e in state.entries()])
        skipped = sorted((s.source, s.reason) for s in state.skipped())
        return entries, boxes, np.array(state.vectors()), skipped, state.provenance
    finally:
        state.close()


def test_two_processes_index_as_one_does(tmp_path, seeded_weights, torch_home):
    people = small_people(tmp_path / "people")
    (people / "notes").mkdir()
    (people / "notes" / "todo.jpg").write_text("not a photo")  # skipped by whichever process embeds it
    one = index([sys.executable], people, tmp_path / "one", seeded_weights, torch_home)
    assert one.returncode == 0, one.stderr
    two = index(TORCHRUN, people, tmp_path / "two", seeded_weights, torch_home)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("updated to") == 1  # process 0 alone reports
    assert two.stderr.count("todo.jpg: cannot decode image") == 1  # each photo embedded once
    entries, boxes, vectors, skipped, made = contents(tmp_path / "one")
    entries2, boxes2, vectors2, skipped2, made2 = contents(tmp_path / "two")
    assert len(entries) == 9 and entries2 == entries and skipped2 == skipped and made2 == made
    # Each process batches other photos together: floating-point noise only.
    assert np.allclose(boxes2, boxes, atol=1e-3) and np.allclose(vectors2, vectors, atol=1e-5)

    (people / "biden" / "biden2.jpg").unlink()
    again = index(TORCHRUN, people, tmp_path / "two", seeded_weights, torch_home)  # nothing to embed
    assert again.returncode == 0, again.stderr
    assert "(0 embedded, 0 reused, 8 unchanged, 1 removed, 1 skipped)" in again.stdout


def test_a_failing_leader_stops_every_process_with_one_line_each(tmp_path, seeded_weights, torch_home):
    failed = index(TORCHRUN, tmp_path / "missing", tmp_path / "gallery", seeded_weights, torch_home)
    assert failed.returncode != 0
    lines = [line for line in failed.stderr.splitlines() if line.startswith("Error:")]
    assert sorted(lines) == [
        f"Error: {tmp_path / 'gallery'}: process 0 of the run stopped; its error says why",
        f"Error: {tmp_path / 'missing'}: no such folder (expected DIR/<identity>/<image>)",
    ]
    assert not (tmp_path / "gallery").exists()
