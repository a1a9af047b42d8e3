"""The hooks a facerec plugin implements: one `register_*` hook per kind of part, plus commands.

Each hook receives a `register(name, factory)` callable; `factory(**options)` builds the part.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
import pluggy

hookspec = pluggy.HookspecMarker("facerec")
hookimpl = pluggy.HookimplMarker("facerec")

Register = Callable[[str, Callable[..., Any]], None]


@hookspec
def register_backbones(register: Register) -> None:
    """Register recognition networks (see facerec.contract.parts.Backbone)."""


@hookspec
def register_detectors(register: Register) -> None:
    """Register face detectors (see facerec.contract.parts.Detector)."""


@hookspec
def register_losses(register: Register) -> None:
    """Register metric-learning losses (see facerec.contract.parts.Loss)."""


@hookspec
def register_miners(register: Register) -> None:
    """Register triplet miners (see facerec.contract.parts.Miner)."""


@hookspec
def register_heads(register: Register) -> None:
    """Register identity heads (see facerec.contract.parts.Head)."""


@hookspec
def register_aligners(register: Register) -> None:
    """Register face aligners: detected face -> the backbone's input picture (see facerec.contract.parts.Aligner)."""


@hookspec
def register_stores(register: Register) -> None:
    """Register gallery stores, each under the URI scheme `--gallery NAME:...` names (see
    facerec.contract.parts.Store); the factory takes `location`, the text after `NAME:`."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the `facerec` command group."""
