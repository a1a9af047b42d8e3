"""The contract of facerec/contract/parts.py, checked on every registered part of every kind (as timm runs one set of
tests over every model it lists).

The cases are made from the registry when the tests are collected, so a part a plugin registers later is
checked too, and a new kind of part fails `test_every_kind_has_a_contract` until its contract is here.
Each case is small: random tensors for networks, a 160 x 120 photo for detectors and aligners.
"""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facerec.contract.faces import Face
from facerec.contract.parts import Backbone, DatasetMiner, GalleryState, InputRecipe, LossResult, Miner, Store
from facerec.contract.registry import KINDS, registry
from facerec.errors import GalleryBusy
from facerec.gallery.provenance import Provenance
from facerec.gallery.records import Change, Entry, Skipped, now
from facerec.gallery.stores import open_store
from support import SHARED
from support.gallery import shrink, weights_cache

PHOTO = SHARED / "faces" / "photos" / "obama_small.jpg"
# MTCNN's face in PHOTO shrunk to 160 x 120 (box and five landmarks, rounded): what aligners get.
FACE = Face(
    box=(56.3, 24.1, 106.8, 94.5),
    score=0.9999,
    landmarks=((69.3, 48.9), (93.6, 48.4), (81.2, 63.7), (68.4, 73.5), (94.9, 72.8)),
)
OFF_THE_EDGE = Face(  # the same face 60 px to the left: partly outside the photo
    box=(-3.7, 24.1, 46.8, 94.5),
    score=0.9999,
    landmarks=((9.3, 48.9), (33.6, 48.4), (21.2, 63.7), (8.4, 73.5), (34.9, 72.8)),
)
PICTURE_SIZES = (160, 97)  # an odd size too: a part must not assume the recipe's
IDENTITIES = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 4])  # 3 and 4 have one image each


def parts(kind: str) -> list:
    """One case per registered part of `kind`, named after it."""
    return [pytest.param(name, id=name) for name in registry().names(kind)]


def options_of(kind: str, name: str) -> set[str]:
    return set(inspect.signature(registry().factory(kind, name)).parameters)


def test_every_kind_has_a_contract():
    covered = {"backbone", "detector", "aligner", "loss", "miner", "head", "store"}
    assert set(KINDS) == covered, f"add the contract of {sorted(set(KINDS) - covered)} to this file"


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Image.Image:
    return Image.open(shrink(PHOTO, tmp_path_factory.mktemp("photo") / "small.jpg", 160)).convert("RGB")


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """Detectors find their weights where a first download leaves them (MTCNN's: in TORCH_HOME)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(weights_cache(tmp_path_factory.mktemp("torch-home"))))
        yield


def unit_rows(count: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(count, size, generator=generator), dim=1)


# Backbones.


@pytest.mark.parametrize("name", parts("backbone"))
def test_backbone(name):
    plugin = registry().create("backbone", name)
    assert isinstance(plugin, Backbone)
    recipe = plugin.recipe
    assert isinstance(recipe, InputRecipe) and recipe.size > 0 and recipe.channels in ("RGB", "BGR")
    assert recipe.aligner in registry().names("aligner")
    assert set(plugin.thresholds) <= set(plugin.pretrained)
    assert plugin.default_pretrained is None or plugin.default_pretrained in plugin.pretrained

    torch.manual_seed(0)
    network = plugin.build().eval()
    faces = torch.randn(2, 3, recipe.size, recipe.size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        embeddings = network(faces)
        assert embeddings.shape == (2, plugin.embedding_size)
        assert torch.allclose(embeddings.norm(dim=1), torch.ones(2), atol=1e-5)
        fast = plugin.for_inference(copy.deepcopy(network))
        assert (fast(faces) - embeddings).abs().max().item() < 1e-4
        again = plugin.build(network.state_dict()).eval()
        assert torch.equal(again(faces), embeddings)
    broken = dict(network.state_dict())
    broken.pop(next(iter(broken)))
    with pytest.raises(ValueError):
        plugin.build(broken)


# Detectors.


@pytest.mark.parametrize("name", parts("detector"))
def test_detector(name, photo, torch_home):
    detector = registry().create("detector", name)
    settings = dict(detector.settings)
    assert json.loads(json.dumps(settings)) == settings
    recorded = {key: value for key, value in settings.items() if key != "name"}
    assert set(recorded) <= options_of("detector", name)
    assert registry().create("detector", name, **recorded).settings == detector.settings  # as identify does

    found = detector.detect([photo, photo])
    assert len(found) == 2 and found[0] == found[1]
    assert found[0], f"{name} finds no face in {PHOTO.name}"
    for face in found[0]:
        assert isinstance(face, Face)
        x1, y1, x2, y2 = face.box
        assert -photo.width < x1 < x2 < 2 * photo.width and -photo.height < y1 < y2 < 2 * photo.height
        assert face.landmarks is None or len(face.landmarks) == 5
    assert [face.area for face in found[0]] == sorted((face.area for face in found[0]), reverse=True)
    assert detector.detect([]) == []


# Aligners.


@pytest.mark.parametrize("name", parts("aligner"))
@pytest.mark.parametrize("size", PICTURE_SIZES)
def test_aligner(name, size, photo):
    aligner = registry().create("aligner", name)
    settings = dict(aligner.settings)
    assert json.loads(json.dumps(settings)) == settings
    assert set(settings) - {"name"} <= options_of("aligner", name)

    pictures = aligner.align(photo, [FACE, OFF_THE_EDGE], size)
    assert len(pictures) == 2
    for picture in pictures:
        assert isinstance(picture, Image.Image) and picture.mode == "RGB" and picture.size == (size, size)
    assert np.asarray(pictures[0]).std() > 10  # a face, not a blank
    assert aligner.align(photo, [], size) == []


# Losses.


@pytest.mark.parametrize("name", parts("loss"))
def test_loss(name):
    loss = registry().create("loss", name)
    embeddings = unit_rows(6, 16).requires_grad_()
    labels = IDENTITIES[:6]
    triplets = (torch.tensor([0, 1, 3]), torch.tensor([1, 2, 4]), torch.tensor([3, 4, 0]))
    result = loss(embeddings, labels, triplets)
    assert isinstance(result, LossResult)
    assert result.loss.dim() == 0 and torch.isfinite(result.loss)
    assert all(value.dim() == 0 and not value.requires_grad for value in result.stats.values())
    result.loss.backward()
    assert embeddings.grad is not None and torch.isfinite(embeddings.grad).all()

    untouched = unit_rows(6, 16).requires_grad_()
    empty = torch.empty(0, dtype=torch.long)
    nothing = loss(untouched, labels, (empty, empty, empty))
    assert nothing.loss.item() == 0.0 and set(nothing.stats) == set(result.stats)
    nothing.loss.backward()  # still part of the graph: a step without triplets must not fail
    assert torch.equal(untouched.grad, torch.zeros_like(untouched))


# Miners.


def check_triplets(triplets, labels: torch.Tensor, anchors_below: int) -> int:
    """The Miner protocol's promises about `triplets` into rows labelled `labels`; their number."""
    assert len(triplets) == 3
    assert all(t.dtype == torch.long and t.dim() == 1 for t in triplets)
    anchors, positives, negatives = triplets
    assert len(anchors) == len(positives) == len(negatives)
    if len(anchors):
        assert anchors.max() < anchors_below and max(positives.max(), negatives.max()) < len(labels)
        assert (labels[anchors] == labels[positives]).all() and (anchors != positives).all()
        assert (labels[anchors] != labels[negatives]).all()
    return len(anchors)


@pytest.mark.parametrize("name", parts("miner"))
def test_miner(name):
    miner = registry().create("miner", name)
    assert isinstance(miner, Miner)
    embeddings = unit_rows(len(IDENTITIES), 16)
    torch.manual_seed(0)
    assert check_triplets(miner(embeddings, IDENTITIES), IDENTITIES, len(IDENTITIES)) > 0

    batch, references = embeddings[:5], embeddings[5:]
    found = miner(batch, IDENTITIES[:5], references, IDENTITIES[5:])
    assert check_triplets(found, IDENTITIES, 5) > 0

    nothing = miner(torch.empty(0, 16), torch.empty(0, dtype=torch.long))
    assert check_triplets(nothing, IDENTITIES, 0) == 0
    strangers = miner(unit_rows(3, 16), torch.tensor([0, 1, 2]))  # no positives: no triplets
    assert check_triplets(strangers, torch.tensor([0, 1, 2]), 3) == 0

    if isinstance(miner, DatasetMiner):
        index = {int(label): (label == IDENTITIES).nonzero().flatten() for label in IDENTITIES.unique()}
        rows = torch.tensor([0, 3, 8])
        drawn = miner.companions(rows, IDENTITIES[rows], index)
        assert drawn.dtype == torch.long and drawn.dim() == 1
        assert ((drawn >= 0) & (drawn < len(IDENTITIES))).all()
        none = miner.companions(torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), index)
        assert none.dtype == torch.long and none.shape == (0,)


# Heads.


@pytest.mark.parametrize("name", parts("head"))
def test_head(name, tmp_path):
    head = registry().create("head", name)
    assert json.loads(json.dumps(dict(head.options))) == dict(head.options)
    centres = unit_rows(3, 32, seed=1)
    vectors = torch.nn.functional.normalize(centres.repeat_interleave(4, 0) + 0.1 * unit_rows(12, 32), dim=1)
    labels = [identity for identity in ("ada", "bo", "cy") for _ in range(4)]
    head.fit(vectors, labels)
    found = head.search(centres, 2)
    assert [answers[0][0] for answers in found] == ["ada", "bo", "cy"]
    for answers in found:
        assert len(answers) == 2 and len({identity for identity, _ in answers}) == 2
        assert all(
            isinstance(identity, str) and isinstance(distance, float) for identity, distance in answers
        )
        assert answers[0][1] <= answers[1][1]

    head.save(tmp_path)
    for path in tmp_path.rglob("*"):
        assert path.is_file() and not path.is_symlink(), f"{name} saved {path}, not a plain file"
        assert not is_pickle(path), f"{name} saved {path.name} as pickle"
    again = registry().create("head", name, **head.options)
    again.load(tmp_path)
    assert again.search(centres, 2) == found


PROVENANCE = Provenance("inception-resnet", "vggface2", "ab" * 32, None, "mtcnn", {"name": "mtcnn"})


def faces(names: list[str], start: int) -> list[Entry]:
    return [
        Entry(name, f"/photos/{start + i}.jpg", f"{start + i:064x}", (1.0, 2.0, 3.0, 4.0), now())
        for i, name in enumerate(names)
    ]


# Stores that live on a database server cannot be named by a file; their contract is run against a real
# server in tests/gallery (test_postgresql_store.py, test_store_contract.py).
SERVER_STORES = {"postgres", "postgresql"}


@pytest.mark.parametrize("name", [p for p in parts("store") if p.values[0] not in SERVER_STORES])
def test_store(name, tmp_path):
    store = open_store(f"{name}:{tmp_path / 'gallery.db'}")
    assert isinstance(store, Store) and isinstance(store.location, str)
    assert store.read() is None and store.current() is None and store.recover() == (None, None)
    vectors = torch.nn.functional.normalize(unit_rows(6, 512, seed=2), dim=1).numpy()
    head = "faiss" if store.fits_heads else None
    first = Change(
        PROVENANCE, head, {"index": "flat"} if head else {}, [], faces(["ada", "bo", "cy"] * 2, 0), vectors
    )
    first.skipped = [Skipped("/photos/x.jpg", "ff" * 32, "no face found")]
    with store.locked():
        with pytest.raises(GalleryBusy), store.locked():  # one writer at a time
            pass
        version = store.commit(None, first)
    state = store.read()
    assert isinstance(state, GalleryState) and state.version == version == store.current()
    assert state.provenance == PROVENANCE and len(state) == 6 and not state.damage
    assert state.entries() == first.added and state.skipped() == first.skipped
    assert state.identities() == {"ada": 2, "bo": 2, "cy": 2}
    assert np.allclose(state.vectors(), vectors) and np.allclose(state.vectors([4, 1]), vectors[[4, 1]])
    ((nearest, distance), second), *_ = state.load_head().search(torch.from_numpy(vectors[3:4]), 2)
    assert nearest == "ada" and distance < 1e-3 and second[0] != "ada"

    added = torch.nn.functional.normalize(unit_rows(1, 512, seed=3), dim=1).numpy()
    change = Change(
        PROVENANCE,
        state.head_name if head else None,
        dict(state.head_options),
        [1, 2, 4, 5],
        faces(["dee"], 6),
        added,
    )
    with store.locked():
        base, problem = store.recover()
        assert problem is None and base.version == version
        newer = store.commit(base, change)
        base.close()
    state.close()
    state = store.read()
    assert newer != version and store.current() == newer
    assert [e.source for e in state.entries()] == [f"/photos/{i}.jpg" for i in (1, 2, 4, 5, 6)]
    assert state.identities() == {"bo": 2, "cy": 2, "dee": 1} and state.skipped() == []
    found = state.load_head().search(torch.from_numpy(np.concatenate([vectors[:1], added])), 3)
    assert "ada" not in {identity for answers in found for identity, _ in answers}
    assert found[1][0][0] == "dee"
    state.close()


def is_pickle(path: Path) -> bool:
    """A pickle stream (protocol 2 and later start with PROTO), bare or inside torch.save's zip."""
    data = path.read_bytes()
    return data.startswith(b"\x80") or (data.startswith(b"PK") and b"data.pkl" in data)
