"""Weight downloads through a real HTTP mirror on loopback: cache, mirror, verification, atomicity."""

from __future__ import annotations

import io
import math

import pytest
import torch

from facerec import integrity
from facerec.errors import FacerecError
from facerec.integrity import first_not_finite, read_checked, write_checked
from facerec.pipeline.weights import (
    RECORD_NAME,
    WeightFile,
    cache_dir,
    fetch,
    load_state_dict,
    mirrored,
    recorded_sums,
)
from support import SHARED
from support.mirror import MTCNN_URL_PATH

PNET = SHARED / "weights" / "mtcnn" / "pnet.pt"
PNET_SHA = "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f"
PNET_URL = "https://github.com" + MTCNN_URL_PATH.format("pnet")


def test_cache_dir_follows_torch_home_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert cache_dir() == tmp_path / "th" / "checkpoints"
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "torch" / "checkpoints"


def test_mirror_replaces_scheme_and_host_only(monkeypatch):
    monkeypatch.setenv("FACEREC_MIRROR", "http://127.0.0.1:8000/")
    assert mirrored("https://github.com/a/b.pt?x=1") == "http://127.0.0.1:8000/a/b.pt?x=1"
    monkeypatch.delenv("FACEREC_MIRROR")
    assert mirrored("https://github.com/a/b.pt") == "https://github.com/a/b.pt"


def test_pinned_download_lands_in_cache_and_is_reused(mirror):
    mirror.serve(MTCNN_URL_PATH.format("pnet"), PNET)
    path, digest = fetch(WeightFile(PNET_URL, "pnet.pt", PNET_SHA))
    assert path == cache_dir() / "pnet.pt" and digest == PNET_SHA
    assert path.read_bytes() == PNET.read_bytes()
    fetch(WeightFile(PNET_URL, "pnet.pt", PNET_SHA))
    assert mirror.requests == [MTCNN_URL_PATH.format("pnet")]  # the second fetch came from the cache


def test_pinned_mismatch_is_refused_and_nothing_is_left(mirror):
    mirror.serve(MTCNN_URL_PATH.format("pnet"), PNET)
    with pytest.raises(FacerecError, match="SHA-256"):
        fetch(WeightFile(PNET_URL, "pnet.pt", "0" * 64))
    assert list(cache_dir().iterdir()) == []


def test_unpinned_sha_is_recorded_then_checked_on_every_load(mirror):
    mirror.serve(MTCNN_URL_PATH.format("pnet"), PNET)
    weight = WeightFile(PNET_URL, "pnet.pt")
    path, digest = fetch(weight)
    assert recorded_sums(cache_dir()) == {"pnet.pt": digest}
    path.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(FacerecError, match="expected"):
        fetch(weight)


def test_user_pin_in_record_file_is_honoured(mirror):
    mirror.serve(MTCNN_URL_PATH.format("pnet"), PNET)
    cache_dir().mkdir(parents=True)
    (cache_dir() / RECORD_NAME).write_text(f"{'1' * 64}  pnet.pt\n")
    with pytest.raises(FacerecError, match="expected 1111"):
        fetch(WeightFile(PNET_URL, "pnet.pt"))


def test_connection_dropped_midway_leaves_no_file(mirror):
    mirror.serve(MTCNN_URL_PATH.format("pnet"), PNET)
    mirror.cut_short.add(MTCNN_URL_PATH.format("pnet"))
    with pytest.raises(FacerecError, match="cannot download"):
        fetch(WeightFile(PNET_URL, "pnet.pt"))
    assert not any(cache_dir().iterdir())


def test_offline_error_names_url_and_the_ways_out(offline):
    with pytest.raises(FacerecError) as caught:
        fetch(WeightFile(PNET_URL, "pnet.pt"))
    message = str(caught.value)
    assert "http://127.0.0.1:9/timesler/facenet-pytorch/raw/master/data/pnet.pt" in message
    assert "--weights" in message and "FACEREC_MIRROR" in message
    assert "\n" not in message


def test_missing_on_mirror_is_http_404(mirror):
    with pytest.raises(FacerecError, match="HTTP 404"):
        fetch(WeightFile(PNET_URL, "pnet.pt"))


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_state_dicts_load_without_unpickling_code(tmp_path):
    tensors = tmp_path / "ok.pt"
    torch.save({"w": torch.ones(2)}, tensors)
    assert torch.equal(load_state_dict(tensors)["w"], torch.ones(2))
    evil = tmp_path / "evil.pt"
    torch.save({"w": Payload()}, evil)
    with pytest.raises(FacerecError, match="loads safely"):
        load_state_dict(evil)
    not_a_dict = tmp_path / "list.pt"
    torch.save([torch.ones(1)], not_a_dict)
    with pytest.raises(FacerecError, match="not a state dict"):
        load_state_dict(not_a_dict)


def test_loaded_weights_are_the_process_own_not_the_file_pages(tmp_path):
    """The file is mapped to load it; overwriting it in place later (cp, a download tool) must change
    nothing a running process holds, and older (non-zip) files and empty ones are read as before."""
    weights = tmp_path / "w.pt"
    torch.save({"w": torch.arange(1 << 16, dtype=torch.float32)}, weights)
    loaded = load_state_dict(weights)
    size = weights.stat().st_size
    with open(weights, "r+b") as file:  # in place: the same inode, as cp writes it
        file.write(bytes(size))
    assert torch.equal(loaded["w"], torch.arange(1 << 16, dtype=torch.float32))
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_state_dict(legacy)["w"], torch.ones(3))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(FacerecError, match=f"^{empty}: not a weights file that loads safely"):
        load_state_dict(empty)


def test_weights_holding_nan_or_infinity_are_refused_naming_the_first_such_tensor(tmp_path):
    weights = tmp_path / "diverged.pt"
    torch.save(
        {"conv.weight": torch.ones(2), "bn.bias": torch.tensor([1.0, math.nan]), "fc": torch.ones(1) / 0},
        weights,
    )
    with pytest.raises(FacerecError) as refused:
        load_state_dict(weights)
    assert str(refused.value) == (
        f"{weights}: tensor bn.bias holds NaN or infinity; these weights cannot embed faces"
    )
    counts = tmp_path / "counts.pt"
    torch.save({"steps": torch.tensor([3]), "w": torch.zeros(2)}, counts)  # integers cannot be NaN
    assert set(load_state_dict(counts)) == {"steps", "w"}
    large = tmp_path / "large.pt"  # finite values whose float32 sum overflows to infinity
    torch.save({"w": torch.full((4,), 3e38), "half": torch.full((3,), 60000.0, dtype=torch.float16)}, large)
    assert torch.equal(load_state_dict(large)["w"], torch.full((4,), 3e38))
    assert first_not_finite({"a": {"b": [torch.ones(2), torch.tensor([-math.inf, 1e38, 1e38])]}}) == "a/b/1"


def test_a_weights_file_with_its_checksum_beside_it_is_checked_before_it_loads(tmp_path):
    weights = tmp_path / "backbone.pt"
    buffer = io.BytesIO()
    torch.save({"w": torch.arange(4096, dtype=torch.float32)}, buffer)
    write_checked(weights, buffer.getbuffer())
    assert torch.equal(load_state_dict(weights)["w"], torch.arange(4096, dtype=torch.float32))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 1024] = bytes(1024)  # 1 KiB of zeros in the middle: still loads
    weights.write_bytes(bytes(data))
    with pytest.raises(FacerecError) as refused:
        load_state_dict(weights)
    assert str(refused.value) == (
        f"{weights}: damaged: it does not match the checksum recorded in backbone.pt.xxh128 when it was written"
    )


def test_a_checked_write_killed_at_any_step_leaves_a_file_its_record_accepts(tmp_path, monkeypatch):
    """The record lists the new sum beside the old one before the file is replaced."""
    target = tmp_path / "checkpoint.pt"
    write_checked(target, b"epoch 1")
    real = integrity.write_atomically
    calls = []

    def killed_at_the_file(path, write):
        calls.append(path.name)
        if path == target:
            raise KeyboardInterrupt  # the process dies before the file is replaced
        real(path, write)

    monkeypatch.setattr(integrity, "write_atomically", killed_at_the_file)
    with pytest.raises(KeyboardInterrupt):
        write_checked(target, b"epoch 2")
    assert calls == ["checkpoint.pt.xxh128", "checkpoint.pt"]
    assert read_checked(target)[0] == b"epoch 1"  # the old file, still accepted
    monkeypatch.setattr(integrity, "write_atomically", real)
    write_checked(target, b"epoch 2")
    assert read_checked(target)[0] == b"epoch 2" and len(integrity.recorded(target)) == 1


def test_an_unreadable_record_refuses_its_file(tmp_path):
    target = tmp_path / "backbone.pt"
    write_checked(target, b"weights")
    integrity.record_of(target).write_text("{not json")
    with pytest.raises(FacerecError, match=r"its checksum record backbone\.pt\.xxh128 cannot be read"):
        read_checked(target)
