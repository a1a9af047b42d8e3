"""Face crops detected once per image and kept on disk, so training epochs never run the detector.

A crop is stored as a PNG named by the SHA-256 of the image file's bytes, in a folder named by a hash of
the detector's name and settings and the backbone's input recipe (aligner, size and the rest): an edited image or other detector settings make
new crops, a renamed or copied image reuses its crop. An image without a usable face gets a `.none` file
holding the reason, so it is not detected again. Files are written to a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from facerec.atomic import write_atomically
from facerec.pipeline.engine import Pipeline


def default_root() -> Path:
    """`$XDG_CACHE_HOME/facerec/faces` (XDG_CACHE_HOME defaults to ~/.cache)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "facerec" / "faces"


def settings_key(pipeline: Pipeline) -> dict:
    """Everything that decides how an image becomes a crop, and how a crop becomes the network's input."""
    return {
        "detector": pipeline.detector_name,
        "settings": dict(pipeline.detector.settings),
        "recipe": pipeline.recipe.to_json(),
    }


class FaceCache:
    """The crops that `pipeline` (a detector and an aligner, no backbone needed) makes, under `root`."""

    def __init__(self, root: Path, pipeline: Pipeline):
        key = settings_key(pipeline)
        text = json.dumps(key, sort_keys=True)
        self.folder = Path(root) / hashlib.sha256(text.encode()).hexdigest()[:16]
        self.pipeline = pipeline
        self.key = key

    def crops(self, images: Sequence[tuple[str, str]], report: Callable[[str], None]) -> list[Path | None]:
        """The crop file of each (path, SHA-256 of its bytes), detecting the images not seen before; None
        (reported) for an image that cannot be read or shows no face.
        """
        missing = {digest: path for path, digest in images if not self._known(digest)}
        if missing:
            self._detect(missing, report)
        found: list[Path | None] = []
        for path, digest in images:
            crop = self._crop_path(digest)
            if crop.exists():
                found.append(crop)
            else:
                report(f"{path}: {crop.with_suffix('.none').read_text().strip()}, skipped")
                found.append(None)
        return found

    def _crop_path(self, digest: str) -> Path:
        return self.folder / digest[:2] / f"{digest}.png"

    def _known(self, digest: str) -> bool:
        """Whether the image's crop (or why it has none) is stored; a crop that no longer decodes (a
        damaged disk, a file cut short) is removed, so that it is made again instead of failing every run."""
        crop = self._crop_path(digest)
        if crop.exists():
            if _decodes(crop):
                return True
            crop.unlink()
            return False
        return crop.with_suffix(".none").exists()

    def _detect(self, missing: dict[str, str], report: Callable[[str], None]) -> None:
        """Detect the images of `missing` (SHA-256 to path) and store their crops."""
        self.folder.mkdir(parents=True, exist_ok=True)
        settings = self.folder / "settings.json"
        if not settings.exists():
            write_atomically(settings, lambda f: f.write(json.dumps(self.key, indent=2).encode()))
        for digest, result in zip(missing, self.pipeline.run(missing.values()), strict=True):
            target = self._crop_path(digest)
            target.parent.mkdir(exist_ok=True)
            if result.error is not None or not result.crops:
                reason = result.error or "no face found"
                write_atomically(target.with_suffix(".none"), lambda f, r=reason: f.write(r.encode()))
                continue
            if len(result.crops) > 1:
                report(f"{result.path}: {len(result.crops)} faces, training on the largest")
            write_atomically(
                target, lambda f, crop=result.crops[0]: crop.save(f, format="PNG", icc_profile=None)
            )


def _decodes(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError):  # PIL's errors for a damaged file
        return False
    return True
