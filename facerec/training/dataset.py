"""A labelled folder of faces, `DIR/<identity>/<image>`, as the network's input tensors.

The folder is read as `facerec index` reads it (`facerec.gallery.enroll.scan`). Images go through the face cache,
so a dataset is detected once; a batch is then only PNG decoding, augmentation and standardization as
the backbone's recipe says.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facerec.contract.parts import InputRecipe
from facerec.gallery.enroll import scan
from facerec.pipeline.standardize import standardize
from facerec.training.augment import FaceAugment
from facerec.training.facecache import FaceCache


@dataclass
class FaceDataset:
    """Face crops with integer labels; `identities[label]` is the identity's name."""

    crops: list[Path]
    labels: torch.Tensor
    identities: list[str]
    recipe: InputRecipe

    @classmethod
    def from_folder(cls, root: Path, cache: FaceCache, report: Callable[[str], None]) -> FaceDataset:
        """The dataset of `root`, detecting faces the cache does not hold yet; unusable images are reported
        and left out.
        """
        found = scan(Path(root), report)
        crops = cache.crops([(image.source, image.sha256) for image in found], report)
        kept = [(crop, image.identity) for crop, image in zip(crops, found, strict=True) if crop is not None]
        identities = sorted({name for _, name in kept})
        label_of = {name: label for label, name in enumerate(identities)}
        return cls(
            crops=[crop for crop, _ in kept],
            labels=torch.tensor([label_of[name] for _, name in kept], dtype=torch.long),
            identities=identities,
            recipe=cache.pipeline.recipe,
        )

    def __len__(self) -> int:
        return len(self.crops)

    def faces(
        self, indices: Sequence[int], augment: FaceAugment | None = None, seeds: Sequence[int] = ()
    ) -> torch.Tensor:
        """The faces at `indices`, as `read_faces` gives them."""
        return read_faces([self.crops[int(index)] for index in indices], self.recipe, augment, seeds)


def read_faces(
    crops: Sequence[Path], recipe: InputRecipe, augment: FaceAugment | None = None, seeds: Sequence[int] = ()
) -> torch.Tensor:
    """Standardized (N, 3, S, S) faces from crop PNGs, as `recipe` says; with `augment`, face i is
    augmented with a generator seeded with `seeds[i]`.
    """
    faces = []
    for position, crop in enumerate(crops):
        with Image.open(crop) as image:
            face = image.convert("RGB")
        if augment is not None:
            face = augment(face, torch.Generator().manual_seed(seeds[position]))
        faces.append(np.asarray(face))
    return standardize(np.stack(faces), recipe)
