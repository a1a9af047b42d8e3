"""Fine-tuning for real on the five-person set of ../shared/faces/knn/train (MTCNN crops, seeded weights).

The faces are detected once per session into a face cache every run here shares; most layers are frozen
and epochs are two steps, so a run takes seconds.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facerec.contract.registry import registry
from facerec.errors import FacerecError, UsageError
from facerec.gallery.local import folder as store
from facerec.integrity import first_not_finite
from facerec.pipeline.engine import build_pipeline
from facerec.training.augment import FaceAugment
from facerec.training.distributed import Processes
from facerec.training.facecache import FaceCache
from facerec.training.runfiles import RunFolder
from facerec.training.sampler import AnchorSampler, IdentitySampler, label_index
from facerec.training.trainer import (
    StepResult,
    Trainer,
    TrainSettings,
    epoch_record,
    finite_gradients,
    freeze_through,
    make_optimizer,
    train,
)
from support import KNN_TRAIN, SHARED
from support.gallery import shrink

ALIGNED = SHARED / "faces" / "test_images_aligned"
QUICK = ["--batch-size", "4", "--freeze", "block8", "--device", "cpu"]  # two steps per epoch


def overwrite_middle(path: Path, size: int) -> None:
    """`size` bytes in the middle of `path` overwritten, as a bad copy or a disk leaves them (same length)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + size] = bytes(range(256)) * (size // 256)
    path.write_bytes(bytes(data))


def settings(weights: Path, **changes) -> TrainSettings:
    values = {"data": str(KNN_TRAIN), "weights": str(weights), "batch_size": 4, "freeze": "block8"}
    return TrainSettings(**{**values, **changes})


def test_loss_goes_down_on_a_fixed_batch_and_frozen_layers_stay(seeded_weights, face_cache):
    run = settings(
        seeded_weights, miner="batch-hard", per_identity=2, augment=False, batch_size=6, optimizer="sgd"
    )
    notes = []
    trainer = Trainer(run, torch.device("cpu"), Processes(), face_cache, notes.append)
    assert notes == ["1 identity has a single image (alex_lacamoire): used only as negatives"]
    before = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    trainer.train_mode()
    batch = trainer.sampler.epoch(1)[0]
    losses = [trainer.step(1, 0, batch).loss for _ in range(3)]
    assert losses[0] > 0.1
    assert all(later < earlier for earlier, later in itertools.pairwise(losses)), losses
    after = trainer.network.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    assert changed == {
        "last_linear.weight",
        "last_bn.weight",
        "last_bn.bias",
    }  # batch norm keeps its statistics


def test_freeze_names_a_layer_in_order():
    network = torch.nn.Sequential()
    network.add_module("trunk", torch.nn.Linear(2, 2))
    network.add_module("head", torch.nn.Linear(2, 2))
    assert freeze_through(network, "trunk") == [network.trunk]
    assert not network.trunk.weight.requires_grad and network.head.weight.requires_grad
    with pytest.raises(UsageError, match=r"no layer 'neck' \(layers: trunk, head, or none\)"):
        freeze_through(network, "neck")
    with pytest.raises(UsageError, match="nothing to train"):
        freeze_through(network, "head")


def test_samplers_are_reproducible_and_keep_singles_out_of_anchors():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    anchors = AnchorSampler(labels, batch_size=4, seed=7)
    first = anchors.epoch(1)
    assert [b.tolist() for b in first] == [b.tolist() for b in AnchorSampler(labels, 4, seed=7).epoch(1)]
    assert sorted(torch.cat(first).tolist()) == [
        0,
        1,
        2,
        3,
        4,
        6,
        7,
        8,
        9,
    ]  # image 5 is identity 2's only one
    assert [b.tolist() for b in anchors.epoch(2)] != [b.tolist() for b in first]
    identities = IdentitySampler(labels, batch_size=6, per_identity=3, seed=7)
    for batch in identities.epoch(1):
        assert len(batch) == 6 and len(set(batch.tolist())) == 6
        counts = torch.bincount(labels[batch], minlength=4)
        assert counts.max() <= 3
    assert len(identities) == 2
    assert label_index(labels)[3].tolist() == [6, 7, 8, 9]


def test_augmentation_is_a_function_of_its_seed():
    face = Image.open(ALIGNED / "kate_siegel" / "1.png").convert("RGB")
    augment = FaceAugment()
    one = np.asarray(augment(face, torch.Generator().manual_seed(3)))
    assert one.shape == (160, 160, 3)
    assert np.array_equal(one, np.asarray(augment(face, torch.Generator().manual_seed(3))))
    assert not np.array_equal(one, np.asarray(augment(face, torch.Generator().manual_seed(4))))
    assert np.abs(one.astype(float) - np.asarray(face)).mean() < 60  # still the same face, roughly


def test_face_cache_is_keyed_by_content_and_settings(face_cache, tmp_path, torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    cache = FaceCache(face_cache, build_pipeline(embed=False))
    other = FaceCache(face_cache, build_pipeline(aligner_options={"margin": 20}, embed=False))
    assert cache.folder != other.folder
    copy = tmp_path / "renamed.jpg"
    copy.write_bytes((KNN_TRAIN / "biden" / "biden.jpg").read_bytes())
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    from facerec.pipeline.weights import sha256_file

    notes = []
    crops = cache.crops([(str(p), sha256_file(p)) for p in (copy, text)], notes.append)
    assert crops[0] is not None and crops[0].parent.parent == cache.folder  # reused, not detected again
    assert crops[1] is None and notes == [f"{text}: cannot decode image: not an image file, skipped"]
    assert crops[1] is None and cache.crops([(str(text), sha256_file(text))], notes.append) == [None]


def test_metrics_lines_of_an_interrupted_epoch_are_replaced(tmp_path):
    run = RunFolder(tmp_path)
    for epoch in (1, 2, 3):
        run.add_metrics({"epoch": epoch, "loss": 1.0 / epoch})
    run.add_metrics({"epoch": 2, "loss": 0.4})  # resumed from the checkpoint of epoch 1
    assert [r["epoch"] for r in run.metrics()] == [1, 2]
    assert (tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")


def test_train_resume_and_use_the_weights(cli, env, seeded_weights, face_cache, tmp_path):
    out = tmp_path / "run"
    common = [KNN_TRAIN, "--weights", seeded_weights, "--out", out, "--face-cache", face_cache, *QUICK]
    first = cli("train", *common, "--epochs", "1", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("epoch 1/1  loss ")
    assert "1 identity has a single image (alex_lacamoire): used only as negatives" in first.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "backbone.pt",
        "backbone.pt.xxh128",
        "checkpoint.pt",
        "checkpoint.pt.xxh128",
        "loss.png",
        "metrics.jsonl",
    ]
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["settings"]["batch_size"] == 4
    trained = torch.load(out / "backbone.pt", weights_only=True)
    seeded = torch.load(seeded_weights, weights_only=True)
    assert {k: v.shape for k, v in trained.items()} == {k: v.shape for k, v in seeded.items()}
    assert not torch.equal(trained["last_linear.weight"], seeded["last_linear.weight"])

    with pytest.raises(FacerecError, match="holds a run already; pass --resume"):
        train(settings(seeded_weights), out)
    with pytest.raises(UsageError, match=r"--lr 0\.1 differs from the run.s 0\.05"):
        train(settings(seeded_weights, lr=0.1, epochs=2), out, resume=True, given={"lr"})

    resumed = cli(
        "train", KNN_TRAIN, "--out", out, "--face-cache", face_cache, "--epochs", "2", "--resume", env=env
    )
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith("epoch 2/2  loss ") and "epoch 1/" not in resumed.stdout
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(m["loss"] > 0 and 0 <= m["active"] <= 1 for m in metrics)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 2

    embedded = cli(
        "embed",
        ALIGNED / "angelina_jolie" / "1.png",
        "--weights",
        out / "backbone.pt",
        "--detector",
        "none",
        "--json",
    )
    assert embedded.returncode == 0, embedded.stderr
    vector = torch.tensor(json.loads(embedded.stdout)["faces"][0]["embedding"])
    assert vector.shape == (512,) and vector.norm().item() == pytest.approx(1.0, abs=1e-5)
    gallery = tmp_path / "gallery"
    indexed = cli(
        "index", ALIGNED, "--weights", out / "backbone.pt", "--detector", "none", "--gallery", gallery
    )
    assert indexed.returncode == 0, indexed.stderr

    damaged = Path(shutil.copytree(out, tmp_path / "damaged"))
    for name in ("checkpoint.pt", "backbone.pt"):
        overwrite_middle(damaged / name, 1024)
    resumed = cli(
        "train", KNN_TRAIN, "--out", damaged, "--face-cache", face_cache, "--epochs", "3", "--resume", env=env
    )
    assert resumed.returncode == 1 and resumed.stdout == ""
    assert resumed.stderr.splitlines() == [
        f"Error: {damaged / 'checkpoint.pt'}: damaged: it does not match the checksum recorded in "
        "checkpoint.pt.xxh128 when it was written; it cannot be resumed (start a new --out)"
    ]
    garbled = Path(shutil.copytree(out, tmp_path / "garbled"))
    log = garbled / "metrics.jsonl"
    log.write_text(log.read_text().replace('"loss": ', '"loss": [', 1))  # line 1 no longer parses
    before = {p.name: p.read_bytes() for p in garbled.iterdir()}
    resumed = cli(
        "train", KNN_TRAIN, "--out", garbled, "--face-cache", face_cache, "--epochs", "3", "--resume", env=env
    )
    assert resumed.returncode == 1 and resumed.stdout == ""  # stopped before training an epoch
    assert resumed.stderr.splitlines() == [
        f"Error: {log}, line 1: not an epoch's record (an epoch number and a finite loss); mend or remove it"
    ]
    assert {p.name: p.read_bytes() for p in garbled.iterdir()} == before

    face = ALIGNED / "angelina_jolie" / "1.png"
    refused = cli("embed", face, "--weights", damaged / "backbone.pt", "--detector", "none")
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        f"Error: {damaged / 'backbone.pt'}: damaged: it does not match the checksum recorded in "
        "backbone.pt.xxh128 when it was written"
    ]


def test_dry_run_runs_one_step_and_writes_nothing(cli, env, seeded_weights, face_cache, tmp_path):
    out = tmp_path / "run"
    result = cli(
        "train",
        KNN_TRAIN,
        "--dry-run",
        "--weights",
        seeded_weights,
        "--out",
        out,
        "--face-cache",
        face_cache,
        *QUICK,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "data: 9 faces of 5 identities"
    assert lines[1] == "step: batch of 4, 12 faces embedded, 4 triplets mined"
    assert lines[2].startswith("loss: ") and "gradients finite, weights updated" in lines[2]
    assert not out.exists()


def test_bad_data_is_one_clear_line(cli, tmp_path):
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "face.png").write_bytes((ALIGNED / "paul_rudd" / "1.png").read_bytes())
    result = cli(
        "train", tmp_path, "--pretrained", "none", "--detector", "none", "--face-cache", tmp_path / "c"
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {tmp_path}: triplets need at least two identities with faces"
    ]
    with pytest.raises(FacerecError, match="no checkpoint"):
        RunFolder(tmp_path / "nowhere").load_checkpoint()


def test_unknown_miner_is_a_usage_error(tmp_path):
    with pytest.raises(
        UsageError, match=r"unknown miner 'hardest' \(available: batch-hard, dict, semi-hard\)"
    ):
        train(TrainSettings(data=str(KNN_TRAIN), miner="hardest"), tmp_path / "run", device="cpu")


def test_train_the_classifier_head_resume_and_identify(cli, seeded_weights, tmp_path):
    gallery, out = tmp_path / "gallery", tmp_path / "run"
    common = ["train", ALIGNED, "--head", "classifier", "--gallery", gallery, "--out", out, "--device", "cpu"]
    model = ["--weights", seeded_weights, "--detector", "none"]
    first = cli(*common, *model, "--lr", "0.001", "--batch-size", "16", "--epochs", "2")
    assert first.returncode == 0, first.stderr
    assert [line.split("  ")[0] for line in first.stdout.splitlines()] == ["epoch 1/2", "epoch 2/2"]
    misuse = cli(*common, "--epochs", "4", "--resume", "--miner", "batch-hard")
    assert misuse.returncode == 2 and "--miner: not used when training a head" in misuse.stderr
    resumed = cli(*common, "--epochs", "4", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert [line.split("  ")[0] for line in resumed.stdout.splitlines()] == ["epoch 3/4", "epoch 4/4"]

    snapshot = store.read(gallery)
    vectors = torch.from_numpy(np.array(snapshot.vectors()))
    labels = [entry.identity for entry in snapshot.entries()]
    assert snapshot.head_name == "classifier"
    assert {k: snapshot.head_options[k] for k in ("lr", "batch_size", "epochs")} == {
        "lr": 0.001,
        "batch_size": 16,
        "epochs": 4,
    }
    snapshot.close()
    uninterrupted = []
    head = registry().create("head", "classifier", lr=0.001, batch_size=16, epochs=4)
    head.fit_epochs(vectors, labels, None, lambda epoch, loss, state: uninterrupted.append(loss))
    logged = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == pytest.approx(uninterrupted, rel=1e-6)
    assert logged[-1] < logged[0]

    found = cli("identify", ALIGNED / "paul_rudd" / "1.png", "--gallery", gallery, "--json")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["faces"][0]["candidates"][0]["identity"] == "paul_rudd"


@pytest.fixture(scope="module")
def two_people(tmp_path_factory) -> Path:
    """biden and obama, two photos each, shrunk: one step of four anchors per epoch at --batch-size 4."""
    folder = tmp_path_factory.mktemp("two-people")
    for person in ("biden", "obama"):
        for photo in sorted((KNN_TRAIN / person).iterdir()):
            shrink(photo, folder / person / photo.name)
    return folder


def two_people_run(two_people: Path, weights: Path, out: Path, anchors: int) -> list:
    """`facerec train` on the two people (four anchors an epoch), `anchors` a step, on the CPU."""
    cache = two_people.parent / "face-cache"
    return [
        "train",
        two_people,
        "--weights",
        weights,
        "--out",
        out,
        "--face-cache",
        cache,
        "--device",
        "cpu",
        "--batch-size",
        str(anchors),
    ]


def strict_json_lines(path: Path) -> list[dict]:
    """The lines of a metrics.jsonl; NaN or Infinity in them (not JSON) fail the test."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"{path}: {constant} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_the_default_optimizer_trains_without_diverging(cli, env, seeded_weights, two_people, tmp_path):
    """The seed's command at its rate, AdaGrad 0.05: the second step's loss was NaN (PyTorch's AdaGrad
    moved every weight by 0.05 in the first step), and metrics.jsonl held a bare NaN."""
    out = tmp_path / "run"
    result = cli(*two_people_run(two_people, seeded_weights, out, anchors=2), "--epochs", "1", env=env)
    assert result.returncode == 0, result.stderr
    metrics = strict_json_lines(out / "metrics.jsonl")
    assert [(m["epoch"], m["steps"]) for m in metrics] == [(1, 2)]
    assert all(math.isfinite(m["loss"]) and m["loss"] > 0 for m in metrics), metrics
    trained = torch.load(out / "backbone.pt", weights_only=True)
    assert all(torch.isfinite(value).all() for value in trained.values())


def test_adagrads_first_step_follows_the_gradient_not_its_sign():
    weight = torch.nn.Parameter(torch.zeros(3))
    optimizer = make_optimizer("adagrad", [weight], lr=0.05)
    weight.grad = torch.tensor([1e-6, 1e-3, 1.0])
    optimizer.step()
    step = -weight.detach()
    assert step[0] < 1e-6 and step[1] < 1e-3, step  # from an accumulator of 0, each moved by 0.05
    assert step[2].item() == pytest.approx(0.05 / math.sqrt(1.1), rel=1e-5)


def test_a_diverging_run_stops_in_one_line_and_keeps_the_last_good_epoch(
    cli, env, seeded_weights, two_people, tmp_path
):
    out = tmp_path / "run"
    diverging = ["--optimizer", "sgd", "--lr", "1e6", "--freeze", "mixed_6a", "--epochs", "3"]
    result = cli(*two_people_run(two_people, seeded_weights, out, anchors=4), *diverging, env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: training diverged at epoch 2, step 1 of 1 (the loss is nan); {out} keeps the files of "
        "epoch 1; try a lower --lr than 1e+06 in a new --out"
    ]
    assert [m["epoch"] for m in strict_json_lines(out / "metrics.jsonl")] == [1]
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(value).all() for value in checkpoint["model"].values())
    assert (out / "loss.png").read_bytes().startswith(b"\x89PNG")


def test_weights_an_epoch_leaves_not_finite_never_reach_backbone_pt(
    seeded_weights, face_cache, tmp_path, monkeypatch
):
    """An update can overflow the weights from finite gradients; after an epoch's last step no later
    loss says so, and the weights went into backbone.pt and checkpoint.pt as they were."""
    finished = Trainer.epoch

    def overflowing(self, epoch, progress):
        record = finished(self, epoch, progress)
        with torch.no_grad():
            self.network.last_linear.weight[0, 0] = math.inf  # what an overflowing last update leaves
        return record

    monkeypatch.setattr(Trainer, "epoch", overflowing)
    out = tmp_path / "run"
    with pytest.raises(FacerecError) as raised:
        train(
            settings(seeded_weights, epochs=1),
            out,
            device="cpu",
            cache_root=face_cache,
            report=lambda _: None,
        )
    assert str(raised.value) == (
        "training diverged at epoch 1, step 2 of 2 (its update left last_linear.weight not finite); nothing "
        f"was written to {out}; try a lower --lr than 0.05 in a new --out"
    )
    assert not out.exists()


def test_run_files_never_hold_tensors_that_are_not_finite(tmp_path):
    run = RunFolder(tmp_path)
    with pytest.raises(
        FacerecError, match=r"checkpoint\.pt: not written: tensor model/w holds NaN or infinity"
    ):
        run.save_checkpoint({"epoch": 1, "model": {"w": torch.tensor([0.0, math.nan])}})
    assert list(tmp_path.iterdir()) == []
    torch.save({"format": 1, "model": {"w": torch.tensor([math.inf])}}, run.checkpoint)  # from elsewhere
    with pytest.raises(FacerecError, match=r"tensor model/w holds NaN or infinity; it cannot be resumed"):
        run.load_checkpoint()


def test_a_run_diverging_in_its_first_epoch_writes_nothing(seeded_weights, face_cache, tmp_path):
    out = tmp_path / "run"
    diverging = settings(seeded_weights, optimizer="sgd", lr=1e6, freeze="mixed_6a", epochs=1)
    with pytest.raises(FacerecError) as raised:
        train(diverging, out, device="cpu", cache_root=face_cache, report=lambda _: None)
    assert str(raised.value) == (
        f"training diverged at epoch 1, step 2 of 2 (the loss is nan); nothing was written to {out}; "
        "try a lower --lr than 1e+06 in a new --out"
    )
    assert not out.exists()


def test_gradients_that_are_not_finite_are_found():
    """A step with a finite loss but infinite gradients must not reach the weights either."""
    network = torch.nn.Linear(2, 1)
    assert finite_gradients(network)  # no gradients yet
    network(torch.ones(1, 2)).sum().backward()
    assert finite_gradients(network)
    network.weight.grad[0, 1] = math.inf
    assert not finite_gradients(network)


def test_a_statistic_that_is_not_finite_is_logged_as_null(tmp_path):
    steps = [
        StepResult(0.5, {"active": math.nan}, 12, {"step": 1.0}),
        StepResult(0.3, {"active": 1.0}, 12, {"step": 1.0}),
    ]
    record = epoch_record(1, steps, 0.05)
    assert record["loss"] == pytest.approx(0.4) and record["active"] is None
    RunFolder(tmp_path).add_metrics(record)
    assert strict_json_lines(tmp_path / "metrics.jsonl")[0]["active"] is None


def test_a_diverging_head_stops_in_one_line_and_keeps_the_last_good_epoch(cli, seeded_weights, tmp_path):
    gallery, out = tmp_path / "gallery", tmp_path / "run"
    common = ["train", ALIGNED, "--head", "classifier", "--gallery", gallery, "--out", out, "--device", "cpu"]
    model = ["--weights", seeded_weights, "--detector", "none"]
    result = cli(*common, *model, "--lr", "1e30", "--epochs", "6")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: training diverged at epoch "), result.stderr
    diverged = int(last.split()[5])
    assert last == (  # its loss was still finite: the epoch whose update overflowed is not kept either
        f"Error: training diverged at epoch {diverged} (its update left weight not finite); {out} keeps the "
        f"files of epoch {diverged - 1}; try a lower --lr than 1e+30 in a new --out"
    )
    assert [m["epoch"] for m in strict_json_lines(out / "metrics.jsonl")] == list(range(1, diverged))
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == diverged - 1 and first_not_finite(checkpoint) is None
