"""Geometry package: re-exports the shapes and the area helper."""
from .shapes import Circle, Square
from . import area

__all__ = ["Circle", "Square", "area"]
