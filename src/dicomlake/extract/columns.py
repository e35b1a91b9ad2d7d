"""Moved to :mod:`dicomlake.lakeschema` (issue 16: one schema module below extract/ and store/).

Kept only so that imports written before the move keep working; import from
:mod:`dicomlake.lakeschema`.
"""

from __future__ import annotations

from dicomlake.lakeschema import (
    ARROW_TYPES,
    DERIVED,
    SQL_TYPES,
    InstanceColumns,
    instance_columns,
    kind_for_keyword,
)

__all__ = ["ARROW_TYPES", "DERIVED", "SQL_TYPES", "InstanceColumns", "instance_columns", "kind_for_keyword"]
