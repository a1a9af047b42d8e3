"""The shapes of the parts plugins register. The engine relies on these and on nothing else.

Each kind is registered under a name with a factory: a class or any callable that takes keyword options
and returns the part. The core never imports a concrete part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from PIL import Image

from facerec.contract.faces import Face

if TYPE_CHECKING:
    from facerec.pipeline.weights import WeightFile


@dataclass(frozen=True)
class InputRecipe:
    """How a detected face becomes a backbone's input, declared by the backbone (as timm's pretrained_cfg).

    The aligner `aligner` (built with `aligner_options`) cuts a `size` x `size` RGB picture of the face;
    the core then orders its channels as `channels` says and standardizes every channel c of the 0-255
    pixels as `(pixel - mean[c]) / std[c]` (mean and std listed in `channels` order). Galleries, face
    caches and training runs record the recipe whole, since any change makes other vectors.
    """

    size: int
    aligner: str = "box"
    aligner_options: Mapping[str, Any] = field(default_factory=dict)
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    channels: str = "RGB"  # or "BGR"

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "aligner": self.aligner,
            "aligner_options": dict(self.aligner_options),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "channels": self.channels,
        }

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> InputRecipe:
        return cls(
            size=int(record["size"]),
            aligner=record.get("aligner", "box"),
            aligner_options=dict(record.get("aligner_options", {})),
            mean=tuple(float(v) for v in record.get("mean", (127.5,) * 3)),
            std=tuple(float(v) for v in record.get("std", (128.0,) * 3)),
            channels=record.get("channels", "RGB"),
        )


@runtime_checkable
class Backbone(Protocol):
    """A recognition network: aligned face tensors (N, 3, S, S), standardized, to unit embeddings.

    `recipe` says how faces become its input. `default_pretrained` names the weights used when the user
    names none (None: untrained). `thresholds` gives, for named pretrained weights, the Euclidean
    distance between unit embeddings up to which two faces are the same person; weights not named there
    (a fine-tuned file, say) use the threshold of `default_pretrained`.

    A backbone that supports `--precision int8` also offers `for_quantization(module)`: a float network,
    traceable by torch.fx, that computes the unit embeddings of `module` in eval mode with the operations
    static int8 quantization knows (modules or out-of-place functions, residual sums as `+`, no in-place
    ops or shape-dependent branches); an attribute `float_modules` on it may name submodules to keep in
    FP32, where int8 costs more accuracy than it saves time. facerec.pipeline.precision calibrates, quantizes and
    caches it. Without that method the backbone runs in FP32 only (checked with `hasattr`, not part of
    this protocol, so backbones written before it still conform).
    """

    recipe: InputRecipe
    embedding_size: int
    pretrained: Mapping[str, WeightFile]
    default_pretrained: str | None
    thresholds: Mapping[str, float]

    def build(self, state_dict: Mapping[str, torch.Tensor] | None = None) -> torch.nn.Module:
        """A trainable network (forward returns unit embeddings) loaded from `state_dict` when given.

        Raises ValueError when the state dict does not fit this network.
        """
        ...

    def for_inference(self, module: torch.nn.Module) -> torch.nn.Module:
        """A module for inference only (it may fold batch norm, change memory layout), same outputs."""
        ...


@runtime_checkable
class Aligner(Protocol):
    """Cuts the backbone's input picture of each detected face out of an image.

    Built by its factory from keyword options (`-A KEY=VALUE`, or a recipe's `aligner_options`);
    `settings` names everything that changes the output, as those options.

    `align_all(items, size)` (optional) aligns several images at once, `items` being (image, faces)
    pairs, and returns `align`'s list for each: the pipeline gives it the images of a batch together,
    for an aligner whose cost is per call rather than per face (dlib-5point's landmarks: 0.9 ms a face
    eight photos at a time, 1.4 photo by photo). Absent, the pipeline calls `align` image by image.
    """

    settings: Mapping[str, Any]

    def align(self, image: Image.Image, faces: Sequence[Face], size: int) -> list[Image.Image]:
        """One RGB `size` x `size` picture per face of the RGB `image`, in the order given."""
        ...


@runtime_checkable
class Detector(Protocol):
    """Finds faces in RGB images.

    A detector whose faces are already aligned pictures (the `none` detector: the image is the face)
    sets the class attribute `aligned = True`; the pipeline then resizes the picture to the backbone's
    input size instead of running the aligner. Absent, it is False.

    `max_pixels` (attribute or property, optional) is the largest image the detector looks at: the
    pipeline scales larger ones down for detection and maps the faces back to the original's pixels, so
    memory stays bounded for any photo (None: no bound; absent: facerec.defaults.DETECTION_PIXELS).

    `recorded_before` (class attribute, optional) maps options added to the detector after galleries
    recorded its settings to the value that detects as those galleries did: a gallery whose record
    lacks such an option is read as having it at that value (centerface's `min_face_size`: None).
    """

    settings: Mapping[str, Any]  # JSON-able; recorded in galleries so identify detects the same way

    def detect(self, images: Sequence[Image.Image]) -> list[list[Face]]:
        """The faces of each image, largest first."""
        ...


Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(anchor, positive, negative) row indices: three 1-D int64 tensors of one length, possibly empty."""


@runtime_checkable
class Miner(Protocol):
    """Chooses (anchor, positive, negative) index triplets from a batch of embeddings.

    As in pytorch-metric-learning, anchors are rows of `embeddings`, and positives and negatives are rows
    of `embeddings` followed by `ref_embeddings` when those are given (the companions a DatasetMiner asked
    for); the loss then sees the two concatenated. A miner draws any randomness from torch's global RNG,
    which the trainer seeds per step, so every process of a distributed run mines the same triplets.
    """

    def __call__(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
    ) -> Triplets: ...


@runtime_checkable
class DatasetMiner(Miner, Protocol):
    """A miner that draws positives and negatives from the whole dataset, not only from the batch.

    Before each step the trainer calls `companions` with the batch's dataset indices, their labels and
    the dataset's dictionary from each label to the dataset indices of its images. It loads and embeds the
    images at the returned indices with the batch and passes them to the miner as `ref_embeddings` and
    `ref_labels`, in the order returned.
    """

    def companions(
        self, batch: torch.Tensor, labels: torch.Tensor, index: Mapping[int, torch.Tensor]
    ) -> torch.Tensor:
        """Dataset indices (1-D int64) of the images to embed alongside the batch."""
        ...


@dataclass(frozen=True)
class LossResult:
    """What a loss returns: the value to minimize and statistics worth logging.

    `stats` holds detached scalar tensors by name (the `triplet` loss: `active`, the fraction of triplets
    with a non-zero loss); the trainer averages each over an epoch into `metrics.jsonl`.
    """

    loss: torch.Tensor
    stats: Mapping[str, torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class Loss(Protocol):
    """A metric-learning loss over embeddings, labels and mined index tuples into them."""

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor, triplets: Triplets) -> LossResult: ...


@runtime_checkable
class Head(Protocol):
    """Maps embeddings to identities; fitted on a gallery's vectors and saved inside the gallery.

    The factory takes JSON-able options, which a gallery records (`options`) to build the same head again
    before `load`. Distances are "smaller is nearer" in the head's own measure (the `faiss` head: Euclidean
    distance between unit vectors); `default_threshold` is the distance up to which the nearest identity
    is accepted, or None for a head whose distance is the embeddings' own: the gallery then takes the
    threshold the backbone declares for its weights. Heads store only plain arrays and JSON, never pickle. A head may also offer
    `add(vectors, labels)`, extending a fitted head with more faces; galleries that only grew use it
    instead of fitting again. And `remove(rows) -> bool`, forgetting the faces at rows `rows` (0-based
    positions among the faces it holds, in the order fitted then added; the others close up, in order, and
    `search` never returns a removed face); it returns False, changing nothing, when the head would rather
    be fitted again on the faces left. Callers check `hasattr(head, "add")` / `hasattr(head, "remove")`.
    """

    options: Mapping[str, Any]
    default_threshold: float | None

    def fit(self, vectors: torch.Tensor, labels: Sequence[str]) -> None:
        """Learn the gallery: `vectors` (N, D) unit embeddings, `labels[i]` the identity of row i."""
        ...

    def search(self, queries: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        """For each query, up to k distinct identities as (identity, distance) pairs, nearest first."""
        ...

    def save(self, folder: Path) -> None:
        """Write the fitted state into the existing, empty `folder`."""
        ...

    def load(self, folder: Path) -> None:
        """Read back what `save` wrote."""
        ...


@runtime_checkable
class GalleryState(Protocol):
    """One committed state of a gallery, read-only: what `identify`, `gallery` and `serve` read.

    Rows are numbered 0..N-1 in a stable order: `entries()[i]` is row i, `vectors()[i]` its embedding.
    `damage` maps the parts a store found untrustworthy (`vectors`, `head`) to why; a store that cannot be
    damaged that way leaves it empty. `load_head()` returns what searches the gallery: the fitted head for
    a store that keeps one (`Store.fits_heads`), else the store's own search (`search` and
    `default_threshold` as a Head's).
    """

    version: str
    provenance: Any  # facerec.gallery.provenance.Provenance
    head_name: str
    head_options: Mapping[str, Any]
    written_at: str | None
    damage: Mapping[str, str]

    def __len__(self) -> int: ...

    def entries(self) -> list[Any]:
        """Every enrolled face (facerec.gallery.records.Entry), in row order."""
        ...

    def skipped(self) -> list[Any]:
        """The images that enrolled nothing (facerec.gallery.records.Skipped)."""
        ...

    def identities(self) -> dict[str, int]:
        """Enrolled faces per identity, by name."""
        ...

    def vectors(self, rows: Sequence[int] | None = None) -> Any:
        """The (N, D) float32 unit embeddings (numpy), or those of `rows` in the order given."""
        ...

    def load_head(self) -> Head:
        """What searches this state (see the class docstring)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Store(Protocol):
    """Where a gallery lives: a folder (`local`), a vector database (`milvus`), or a plugin's own.

    The factory takes the text of `--gallery` after `NAME:` (the whole text for a plain folder path).
    Every store keeps facerec's gallery rules, which the core applies through this interface: the
    provenance of the vectors, incremental indexing by content hash (entries carry each photo's SHA-256),
    one writer at a time, and commits that readers see whole or not at all. `location` names the gallery
    in messages. `fits_heads` says whether the store keeps a head fitted by facerec (`faiss`,
    `classifier`); a store that searches by itself records its own search as the head.
    """

    location: str
    fits_heads: bool

    def read(self) -> GalleryState | None:
        """The current committed state, checked; None when nothing was ever written here."""
        ...

    def current(self) -> str | None:
        """The current state's version name, cheaply (a reader compares it with the one it holds)."""
        ...

    def locked(self) -> Any:
        """A context manager holding the one-writer lock (facerec.errors.GalleryBusy when another holds it)."""
        ...

    def recover(self, full: bool = False) -> tuple[GalleryState | None, str | None]:
        """For a writer: the newest usable state and what was wrong (None when intact); `full` checks
        everything (SHA-256 of every file, say). (None, None) for a gallery never written."""
        ...

    def commit(self, base: GalleryState | None, change: Any) -> str:
        """Apply `change` (facerec.gallery.records.Change) to `base` (what `recover` returned) as the new current
        state, all at once for readers; returns its version name. Call inside `locked()`."""
        ...
