"""facerec: a face recognition engine built on FaceNet, composed from plugins.

import facerec

gallery = facerec.open_gallery(".facerec/gallery")
gallery.index("datasets/custom_images")
faces = gallery.identify("photo.jpg")

Plugin authors import from facerec.plugin.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Gallery", "__version__", "open_gallery"]


def __getattr__(name: str) -> Any:
    """The gallery API loads on first use, so `facerec --version` and plugins stay light."""
    if name in ("Gallery", "open_gallery"):
        from facerec import api

        return getattr(api, name)
    raise AttributeError(f"module 'facerec' has no attribute {name!r}")
