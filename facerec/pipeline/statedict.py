"""Checking that a state dict fits a network, for backbones' `build`: one short reason, not torch's list."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch


class StateDictMismatch(ValueError):
    """A state dict that does not fit a network; the message names a few keys at fault."""


def _listed(keys: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def require_state_dict(state_dict: object) -> None:
    """Raise StateDictMismatch unless `state_dict` is a mapping of names to tensors."""
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state_dict.values()
    ):
        raise StateDictMismatch("weights are not a state dict (a mapping of names to tensors)")


def check_fits(
    state_dict: object,
    expected: Mapping[str, torch.Size],
    network: str,
    may_lack: Callable[[str], bool] = lambda key: False,
) -> None:
    """Raise StateDictMismatch unless `state_dict` maps exactly the `expected` names to tensors of their
    shapes (names for which `may_lack` is true may be missing)."""
    require_state_dict(state_dict)
    missing = [key for key in expected if key not in state_dict and not may_lack(key)]
    unexpected = [key for key in state_dict if key not in expected]
    wrong = [
        f"{key} {list(value.shape)} (expected {list(expected[key])})"
        for key, value in state_dict.items()
        if key in expected and value.shape != expected[key]
    ]
    problems = []
    if missing:
        problems.append(f"missing {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected {_listed(unexpected)}")
    if wrong:
        problems.append(f"wrong shape {_listed(wrong, 2)}")
    if problems:
        raise StateDictMismatch(f"weights do not fit {network}: " + "; ".join(problems))
