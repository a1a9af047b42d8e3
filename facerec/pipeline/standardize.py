"""Applying a backbone's input recipe: aligned face pictures to the tensor the network takes.

The aligner (a plugin) cuts each face; this turns the pictures into numbers as the recipe says
(channel order, per-channel mean and std on 0-255 pixels), so no backbone normalizes inside `forward`
and the face cache, `--save-crops` and galleries all see the same pictures.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from facerec.contract.parts import InputRecipe


def standardize(faces: np.ndarray, recipe: InputRecipe) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB faces to the network's (N, 3, H, W) float32 input.

    In numpy, not torch: for a few faces, torch's threads take longer to start than the work.
    """
    if recipe.channels == "BGR":
        faces = faces[..., ::-1]
    elif recipe.channels != "RGB":
        raise ValueError(f"unknown channel order '{recipe.channels}' (RGB or BGR)")
    mean = np.asarray(recipe.mean, dtype=np.float32)
    std = np.asarray(recipe.std, dtype=np.float32)
    standardized = (faces.astype(np.float32) - mean) / std
    return torch.from_numpy(np.ascontiguousarray(standardized.transpose(0, 3, 1, 2)))


def standardize_pictures(pictures: Sequence[Image.Image], recipe: InputRecipe) -> torch.Tensor:
    """The network's input for RGB face pictures of the recipe's size."""
    return standardize(np.stack([np.asarray(picture.convert("RGB")) for picture in pictures]), recipe)
