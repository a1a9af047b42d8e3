"""Everything a plugin author imports, from one place: `from facerec.plugin import hookimpl, ...`.

A plugin module implements `register_*` hooks (facerec.contract.hookspecs) with `hookimpl` and names
itself in the `facerec` entry-point group of its distribution; the built-in plugins (facerec_plugins)
are written exactly so and import nothing else of facerec. What each kind of part must provide is in
its protocol below (facerec.contract.parts); docs/plugins.md walks through a complete plugin.
"""

from __future__ import annotations

from facerec.atomic import write_atomically
from facerec.contract.faces import Face, Point, largest_first
from facerec.contract.hookspecs import Register, hookimpl
from facerec.contract.parts import (
    Aligner,
    Backbone,
    DatasetMiner,
    Detector,
    GalleryState,
    Head,
    InputRecipe,
    Loss,
    LossResult,
    Miner,
    Store,
    Triplets,
)
from facerec.errors import FacerecError, GalleryBusy, UsageError
from facerec.gallery.local.store import LocalStore
from facerec.gallery.provenance import Provenance
from facerec.gallery.records import Change, Entry, Skipped, now
from facerec.gallery.stores import without_password
from facerec.pipeline.statedict import StateDictMismatch, check_fits, require_state_dict
from facerec.pipeline.weights import WeightFile, cache_dir, fetch, load_state_dict
from facerec.training.mining import BaseMiner, Candidates

__all__ = [
    "Aligner",
    "Backbone",
    "BaseMiner",
    "Candidates",
    "Change",
    "DatasetMiner",
    "Detector",
    "Entry",
    "Face",
    "FacerecError",
    "GalleryBusy",
    "GalleryState",
    "Head",
    "InputRecipe",
    "LocalStore",
    "Loss",
    "LossResult",
    "Miner",
    "Point",
    "Provenance",
    "Register",
    "Skipped",
    "StateDictMismatch",
    "Store",
    "Triplets",
    "UsageError",
    "WeightFile",
    "cache_dir",
    "check_fits",
    "fetch",
    "hookimpl",
    "largest_first",
    "load_state_dict",
    "now",
    "require_state_dict",
    "without_password",
    "write_atomically",
]
