"""dicomlake: DICOM metadata out of PACS archives into a queryable, auditable, shareable lake."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from dicomlake.query.lake import Lake


def open(path: str | Any = None, **kwargs: Any) -> Lake:
    """Open a lake folder (default: the configured lake) for querying from Python.

    >>> import dicomlake, tempfile
    >>> lake = dicomlake.open(tempfile.mkdtemp())
    >>> lake.sql("SELECT count(*) AS n FROM instances")["n"][0]
    0
    """
    from dicomlake.query.lake import Lake

    return Lake.open(path, **kwargs)


__all__ = ["__version__", "open"]
