"""The errors of the data modules: a data set on disk that does not fit its expected layout.

Both are :class:`cama.errors.InputError` s: ``train.py`` ends with their message and exit status 2.
"""

from __future__ import annotations

from cama.errors import InputError

__all__ = ["DatasetLayoutError", "UnreadableImageError"]


class DatasetLayoutError(InputError, ValueError):
    """A data set folder does not have the expected layout (root, sub-folders, file names)."""


class UnreadableImageError(DatasetLayoutError):
    """An image file could not be decoded."""
