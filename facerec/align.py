"""Turning a detected face into the network's input tensor.

The default crop is facenet-pytorch's `extract_face`: the box (widened by `margin` pixels of the output,
as facenet-pytorch does) truncated to int, cropped from the RGB image, resized with PIL bilinear, then
standardized as `(pixel - 127.5) / 128`. Matching it exactly keeps embeddings equal to facenet-pytorch's.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from facerec.faces import Face


def standardize(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 tensor of `(pixel - 127.5) / 128` from an RGB image."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
    return ((pixels - 127.5) / 128.0).permute(2, 0, 1).contiguous()


def crop_box(image: Image.Image, face: Face, size: int, margin: float = 0) -> tuple[int, int, int, int]:
    """The integer crop box facenet-pytorch uses for `face` at output `size` with `margin`."""
    x1, y1, x2, y2 = face.box
    grow_x = margin * (x2 - x1) / (size - margin)
    grow_y = margin * (y2 - y1) / (size - margin)
    width, height = image.size
    return (
        int(max(x1 - grow_x / 2, 0)),
        int(max(y1 - grow_y / 2, 0)),
        int(min(x2 + grow_x / 2, width)),
        int(min(y2 + grow_y / 2, height)),
    )


def crop_face(image: Image.Image, face: Face, size: int = 160, margin: float = 0) -> Image.Image:
    """The face cropped and resized to `size` x `size`, as facenet-pytorch's MTCNN extracts it."""
    return image.crop(crop_box(image, face, size, margin)).resize((size, size), Image.BILINEAR)


# Where the five landmarks (eyes, nose, mouth corners) of a frontal face sit in ArcFace's 112x112 crop.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 rotation-scale-translation best mapping `source` points (N, 2) onto `target` (Umeyama 1991)."""
    source_mean, target_mean = source.mean(0), target.mean(0)
    source_centred, target_centred = source - source_mean, target - target_mean
    u, singular, vt = np.linalg.svd(target_centred.T @ source_centred / len(source))
    reflect = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ reflect @ vt
    scale = np.trace(np.diag(singular) @ reflect) / source_centred.var(0).sum()
    shift = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, shift[:, None]])


def align_by_landmarks(image: Image.Image, landmarks, size: int = 160) -> Image.Image:
    """The face warped so its five landmarks land on ArcFace's template scaled to `size` x `size`.

    An alternative to the default box crop: rotation, scale and position are normalized, so a tilted
    head comes out upright. Embeddings then differ from facenet-pytorch's, which crops boxes.
    """
    template = ARCFACE_TEMPLATE_112 * (size / 112.0)
    to_image = similarity_transform(template, np.asarray(landmarks, dtype=np.float64))
    return image.transform((size, size), Image.AFFINE, tuple(to_image.flatten()), Image.BILINEAR)
