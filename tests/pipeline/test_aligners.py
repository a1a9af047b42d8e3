"""The built-in aligners `box` and `landmarks`, and how the core applies a backbone's input recipe."""

from __future__ import annotations

import numpy as np
from PIL import Image

from facerec_plugins.aligners.landmarks import ARCFACE_TEMPLATE_112, align_by_landmarks, similarity_transform


def test_similarity_transform_recovers_rotation_scale_and_shift():
    angle = np.deg2rad(25)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = 1.7 * ARCFACE_TEMPLATE_112 @ rotation.T + [12.0, -3.0]
    transform = similarity_transform(ARCFACE_TEMPLATE_112, moved)
    np.testing.assert_allclose(transform, np.hstack([1.7 * rotation, [[12.0], [-3.0]]]), atol=1e-9)


def test_alignment_moves_the_landmarks_onto_the_template():
    """Five coloured dots placed as a tilted, shifted, enlarged face's landmarks end up on the template."""
    template = ARCFACE_TEMPLATE_112 * 160 / 112
    angle = np.deg2rad(-20)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = 1.4 * template @ rotation.T + [90.0, 60.0]
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    canvas = np.zeros((360, 420, 3), dtype=np.uint8)
    for (x, y), colour in zip(landmarks.round().astype(int), colours, strict=True):
        canvas[y - 2 : y + 3, x - 2 : x + 3] = colour
    aligned = np.asarray(align_by_landmarks(Image.fromarray(canvas), landmarks, 160)).astype(int)
    assert aligned.shape == (160, 160, 3)
    for target, colour in zip(template, colours, strict=True):
        ys, xs = np.nonzero(np.abs(aligned - colour).sum(2) < 120)  # the pixels of this dot
        centre = np.array([xs.mean(), ys.mean()])
        assert np.abs(centre - target).max() < 1.5
