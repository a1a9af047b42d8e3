"""Every random choice of a run comes from seeds derived from the run's seed and where it is made.

A batch, its augmentations, its companions and its mining are each drawn from a seed made of (run seed,
epoch, step, ...). So a run resumed at epoch N draws what an uninterrupted run draws there, and every
process of a distributed run draws the same batch, companions and triplets, without saving RNG state.
"""

from __future__ import annotations

import hashlib

import torch


def derived_seed(*parts: object) -> int:
    """A 63-bit seed determined by `parts` (their text), the same on every machine and Python."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded from `parts`."""
    return torch.Generator().manual_seed(derived_seed(*parts))


def seed_torch(*parts: object) -> None:
    """Seed torch's global RNGs (CPU and CUDA) from `parts`: dropout and miners draw from these."""
    torch.manual_seed(derived_seed(*parts))
