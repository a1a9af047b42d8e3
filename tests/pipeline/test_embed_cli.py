"""`facerec embed` as a user runs it: a real subprocess, real aligned faces, seeded weights, a real mirror."""

from __future__ import annotations

import json

import numpy as np
import pytest

from support import SHARED
from support.mirror import VGGFACE2_URL_PATH

REFERENCE = json.loads((SHARED / "reference" / "inception_resnet_v1.salt0.json").read_text())
ALIGNED = [SHARED / image for image in REFERENCE["images"]]


def _records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_embed_aligned_faces_equals_facenet_pytorch(cli, seeded_weights):
    result = cli("embed", *ALIGNED, "--weights", seeded_weights, "--detector", "none", "--json")
    assert result.returncode == 0, result.stderr
    records = _records(result.stdout)
    assert [r["image"] for r in records] == [str(p) for p in ALIGNED]
    for record, expected in zip(records, REFERENCE["embeddings"], strict=True):
        (face,) = record["faces"]
        assert face["box"] == [0.0, 0.0, 160.0, 160.0]
        assert face["score"] is None and face["landmarks"] is None
        assert np.abs(np.array(face["embedding"]) - np.array(expected)).max() < 1e-4


def test_bad_images_are_named_and_the_batch_goes_on(cli, seeded_weights, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    paths = [ALIGNED[0], empty, tmp_path / "missing.jpg", tmp_path, text, ALIGNED[1]]
    result = cli("embed", *paths, "--weights", seeded_weights, "--detector", "none", "--json")
    assert result.returncode == 1
    records = _records(result.stdout)
    assert [r["image"] for r in records] == [str(p) for p in paths]
    assert [("error" in r) for r in records] == [False, True, True, True, True, False]
    assert records[1]["error"] == "cannot decode image: empty file"
    assert records[4]["error"] == "cannot decode image: not an image file"
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 4 and all(line.startswith(str(tmp_path)) for line in errors)


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (
            ["--pretrained", "imagenet"],
            2,
            "--pretrained: backbone 'inception-resnet' has no weights 'imagenet'",
        ),
        (["--weights", "{tmp}/nothing.pt"], 1, "nothing.pt: no such weights file"),
        (["--weights", "{tmp}/garbage.pt"], 1, "garbage.pt: not a weights file that loads safely"),
        (["--weights", "{tmp}/small.pt"], 1, "small.pt: does not fit backbone 'inception-resnet'"),
        (["--device", "toaster"], 2, "--device: unknown device 'toaster'"),
        (["--detector", "none", "-D", "oops"], 2, "--detector-option: expected KEY=VALUE"),
        (["--bogus"], 2, "No such option '--bogus'"),
    ],
)
def test_bad_options_get_one_clear_line(cli, offline, tmp_path, args, status, message):
    import torch

    (tmp_path / "garbage.pt").write_bytes(b"\x00" * 100)
    torch.save({"conv.weight": torch.ones(1)}, tmp_path / "small.pt")
    args = [a.format(tmp=tmp_path) for a in args]
    result = cli("embed", ALIGNED[0], "--detector", "none", *args)
    assert result.returncode == status
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_pretrained_vggface2_downloads_through_the_mirror_once(cli, mirror, seeded_weights):
    mirror.serve(VGGFACE2_URL_PATH, seeded_weights)
    first = cli("embed", ALIGNED[0], "--detector", "none", "--json")
    assert first.returncode == 0, first.stderr
    second = cli("embed", ALIGNED[0], "--detector", "none", "--json")
    assert second.returncode == 0 and second.stdout == first.stdout
    assert mirror.requests == [VGGFACE2_URL_PATH]
    vector = _records(first.stdout)[0]["faces"][0]["embedding"]
    assert np.abs(np.array(vector) - np.array(REFERENCE["embeddings"][0])).max() < 1e-4


def test_offline_names_the_url_and_what_to_do(cli, offline):
    result = cli("embed", ALIGNED[0], "--detector", "none")
    assert result.returncode == 1
    assert "http://127.0.0.1:9" + VGGFACE2_URL_PATH in result.stderr
    assert "--weights" in result.stderr and "FACEREC_MIRROR" in result.stderr


def test_every_command_has_help(cli):
    """The top level runs as a real process; each command's --help is Click's, checked in-process."""
    from click.testing import CliRunner

    from facerec.cli import cli as group

    top = cli("--help")
    assert top.returncode == 0
    commands = [line.split()[0] for line in top.stdout.split("Commands:")[1].strip().splitlines()]
    assert {"detect", "embed", "index", "identify", "train", "evaluate", "plugins"} <= set(commands)
    for command in commands:
        result = CliRunner().invoke(group, [command, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, command


def test_weights_that_give_no_unit_embedding_are_refused_in_one_line(cli, seeded_weights, tmp_path):
    """Weights whose last batch norm outputs zeros (as broken or random weights can): every embedding is
    all zeros, which normalizing cannot make unit length; refused, not printed as a face."""
    import torch

    state = torch.load(seeded_weights, weights_only=True)
    state["last_bn.weight"].zero_()
    state["last_bn.bias"].zero_()
    broken = tmp_path / "broken.pt"
    torch.save(state, broken)
    result = cli("embed", ALIGNED[0], "--weights", broken, "--detector", "none", "--json")
    assert result.returncode == 1 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert "backbone 'inception-resnet' with the --weights file" in line
    assert "gave an embedding of length 0, not 1: these weights do not work" in line
