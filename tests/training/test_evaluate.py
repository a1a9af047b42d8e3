"""Evaluation: the metrics on hand-made distances, and `facerec evaluate` on real faces (folder and pairs)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from facerec.errors import FacerecError
from facerec.training import evaluation, plots
from support import KNN_TRAIN

T, F = True, False


def test_roc_of_a_perfect_separation():
    curve = evaluation.roc(np.array([0.1, 0.2, 0.3, 0.4]), np.array([T, T, F, F]))
    assert curve.tar.tolist() == [0, 0.5, 1, 1, 1]
    assert curve.far.tolist() == [0, 0, 0, 0.5, 1]
    assert curve.auc == 1.0


def test_auc_is_the_chance_a_genuine_pair_is_nearer_than_an_impostor_pair():
    # genuine 0.1, 0.35; impostor 0.3, 0.5: 3 of the 4 (genuine, impostor) orderings are right
    assert evaluation.roc(np.array([0.1, 0.3, 0.35, 0.5]), np.array([T, F, T, F])).auc == pytest.approx(0.75)
    assert evaluation.roc(np.array([0.2, 0.2]), np.array([T, F])).auc == pytest.approx(0.5)  # a tie
    with pytest.raises(ValueError, match="both genuine and impostor"):
        evaluation.roc(np.array([0.1, 0.2]), np.array([T, T]))


def test_best_threshold_lies_between_the_classes():
    threshold, accuracy = evaluation.best_threshold(np.array([0.1, 0.2, 0.3, 0.4]), np.array([T, T, F, F]))
    assert threshold == pytest.approx(0.25) and accuracy == 1.0


def test_cross_validation_chooses_each_folds_threshold_on_the_others():
    # fold 1: genuine 0.1, impostor 0.5; fold 2: genuine 0.6, impostor 0.9. The best threshold over all
    # pairs is right 3 times in 4, but a threshold learnt on one fold is right once on the other.
    folds = evaluation.kfold_accuracy(np.array([0.1, 0.5, 0.6, 0.9]), np.array([T, F, T, F]), folds=2)
    assert folds.accuracies == [0.5, 0.5]
    assert folds.thresholds == [pytest.approx(0.75), pytest.approx(0.3)]
    distances = np.stack(
        [np.linspace(0, 0.4, 10), np.linspace(0.6, 1, 10)], 1
    ).flatten()  # genuine, impostor, ...
    separable = evaluation.kfold_accuracy(distances, np.arange(20) % 2 == 0, folds=10)
    assert separable.mean == 1.0 and separable.std == 0.0


def test_tar_at_far():
    impostors = np.linspace(0.5, 1.5, 1000)
    genuine = np.array([0.4, 0.6, 0.9])
    distances = np.concatenate([genuine, impostors])
    same = np.arange(len(distances)) < 3
    at = evaluation.tar_at_far(distances, same, far=1e-3)  # one false accept allowed: 0.5 passes, 0.501 not
    assert at.tar == pytest.approx(1 / 3) and at.far == pytest.approx(1e-3) and at.impostor_pairs == 1000
    few = evaluation.tar_at_far(np.array([0.1, 0.3, 0.2]), np.array([T, T, F]), far=1e-3)
    assert few.far == 0 and few.tar == 0.5  # too few impostor pairs: the rate at zero false accepts


def test_identification_uses_the_first_image_of_each_identity_as_gallery():
    vectors = np.array([[1, 0], [0, 1], [-1, 0], [0.9, 0.1], [0.6, 0.8], [-0.9, 0.2]], dtype=float)
    labels = np.array([0, 1, 2, 0, 0, 2])
    found = evaluation.identification(vectors, labels)
    assert (found.probes, found.gallery) == (3, 3)
    assert found.accuracy == pytest.approx(2 / 3)  # (0.6, 0.8) is nearer identity 1's (0, 1)
    with pytest.raises(ValueError, match="at least two images"):
        evaluation.identification(vectors[:3], labels[:3])


def test_label_pairs_keep_every_genuine_pair_and_sample_impostors():
    labels = np.array([0, 0, 0, 1, 1, 2])
    first, second, same = evaluation.label_pairs(labels, impostors=5, seed=1)
    assert same.sum() == 4 and (~same).sum() == 5
    assert ((labels[first] == labels[second]) == same).all()
    again = evaluation.label_pairs(labels, impostors=5, seed=1)
    assert all((a == b).all() for a, b in zip((first, second, same), again, strict=True))


@pytest.fixture
def lfw(tmp_path):
    """The knn images in LFW's layout (NAME/NAME_NNNN.jpg, links) and a pairs file with two folds."""
    for name, images in (("obama", ["obama.jpg", "obama2.jpg"]), ("biden", ["biden.jpg", "biden2.jpg"])):
        (tmp_path / name).mkdir()
        for number, image in enumerate(images, start=1):
            (tmp_path / name / f"{name}_{number:04d}.jpg").symlink_to(KNN_TRAIN / name / image)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("2\t1\nobama\t1\t2\nobama\t1\tbiden\t1\nbiden\t1\t2\nbiden\t2\tobama\t2\n")
    return tmp_path, pairs


def test_read_pairs_in_lfw_format(lfw):
    root, pairs = lfw
    read = evaluation.read_pairs(pairs, root)
    assert read.folds == 2 and read.same.tolist() == [T, F, T, F]
    assert (
        read.first[1] == root / "obama" / "obama_0001.jpg"
        and read.second[1] == root / "biden" / "biden_0001.jpg"
    )
    broken = root / "broken.txt"
    broken.write_text("2 1\nobama 1\n")
    with pytest.raises(FacerecError, match=r"broken\.txt: line 2: expected 'NAME N M' or 'NAME1 N NAME2 M'"):
        evaluation.read_pairs(broken, root)
    missing = root / "missing.txt"
    missing.write_text("1 1\nobama 1 7\n")
    with pytest.raises(FacerecError, match=r"line 2: no image .*obama_0007\.jpg"):
        evaluation.read_pairs(missing, root)


def test_evaluate_a_folder(cli, seeded_weights, face_cache, torch_home, tmp_path):
    out = tmp_path / "evaluation"
    result = cli(
        "evaluate",
        KNN_TRAIN,
        "--weights",
        seeded_weights,
        "--face-cache",
        face_cache,
        "--out",
        out,
        "--json",
        env={"TORCH_HOME": str(torch_home)},
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads(result.stdout) == metrics
    assert (metrics["images"], metrics["identities"]) == (9, 5)
    assert metrics["identification"]["probes"] == 4 and metrics["identification"]["gallery"] == 5
    verification = metrics["verification"]
    assert (verification["pairs"], verification["genuine"], verification["folds"]) == (36, 4, 10)
    assert 0 <= verification["auc"] <= 1 and 0 <= verification["accuracy"] <= 1
    assert verification["tar_at_far"]["impostor_pairs"] == 32
    assert metrics["model"]["weights_sha256"]
    assert (out / "roc.png").read_bytes().startswith(b"\x89PNG")


def test_evaluate_an_lfw_pairs_file(cli, seeded_weights, face_cache, torch_home, lfw, tmp_path):
    root, pairs = lfw
    out = tmp_path / "evaluation"
    result = cli(
        "evaluate",
        root,
        "--pairs",
        pairs,
        "--weights",
        seeded_weights,
        "--face-cache",
        face_cache,
        "--out",
        out,
        env={"TORCH_HOME": str(torch_home)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("verification: 4 pairs (2 genuine), AUC ")
    assert "(2-fold, threshold" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert "identification" not in metrics and metrics["verification"]["folds"] == 2


def test_roc_chart_has_a_log_far_axis_and_marks_tar_at_far(tmp_path):
    """roc.png as the field reads it: FAR on a log axis from the smallest resolvable rate, TAR at FAR 1e-3
    marked where the metrics put it."""
    distances = np.linspace(0.1, 2.0, 4000)
    same = np.arange(4000) < 1000  # the closest quarter are genuine pairs, with some overlap below
    same[990:1010] = ~same[990:1010]
    curve = evaluation.roc(distances, same)
    at = evaluation.tar_at_far(distances, same, 1e-3)
    figure = plots.roc_figure(curve.far, curve.tar, curve.auc, (1e-3, at.tar))
    (axes,) = figure.axes
    assert axes.get_xscale() == "log"
    low, high = axes.get_xlim()
    assert low == pytest.approx(1 / 3000) and high == 1.0  # one impostor pair of 3000
    marker = [line for line in axes.get_lines() if line.get_marker() == "o"]
    assert [(x, y) for line in marker for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True)] == [
        (1e-3, at.tar)
    ]
    assert f"TAR {at.tar:.3f} at FAR 0.001" in [text.get_text() for text in axes.get_legend().get_texts()]
    plots.roc_curve(tmp_path / "roc.png", curve.far, curve.tar, curve.auc, (1e-3, at.tar))
    with Image.open(tmp_path / "roc.png") as png:
        assert png.format == "PNG" and png.size == (640, 480)


def test_a_damaged_crop_in_the_face_cache_is_made_again(face_cache, torch_home, tmp_path, monkeypatch):
    from facerec.pipeline.engine import build_pipeline
    from facerec.pipeline.weights import sha256_file
    from facerec.training.facecache import FaceCache

    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    cache = FaceCache(shutil.copytree(face_cache, tmp_path / "cache"), build_pipeline(embed=False))
    images = {sha256_file(path): path for path in sorted(KNN_TRAIN.glob("*/*"))}
    crop = next(path for path in sorted(cache.folder.rglob("*.png")) if path.stem in images)
    pixels = np.asarray(Image.open(crop))
    whole = crop.read_bytes()
    crop.write_bytes(whole[: len(whole) // 2])  # a file cut short
    reports = []
    assert cache.crops([(str(images[crop.stem]), crop.stem)], reports.append) == [crop]
    assert np.array_equal(np.asarray(Image.open(crop)), pixels)
    assert all("skipped" not in report for report in reports)
