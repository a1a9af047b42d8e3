"""facerec: a face recognition engine built on FaceNet, composed from plugins."""

from facerec.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]
