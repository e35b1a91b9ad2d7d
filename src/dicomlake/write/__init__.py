"""Writers: Secondary Capture, VL Photographic, Encapsulated PDF, derived images, corrections.

The names below are loaded on first use (PEP 562), so importing one writer — or the CLI —
does not pull in Pillow and highdicom for the others.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "WriteReport": "_common",
    "WrittenFile": "_common",
    "PatientStudy": "capture",
    "WrapOptions": "capture",
    "wrap_file": "capture",
    "wrap_paths": "capture",
    "CaptureIOD": "codes",
    "ConversionType": "codes",
    "ModificationReason": "codes",
    "SourceKind": "codes",
    "Correction": "correct",
    "apply_correction": "correct",
    "correct_file": "correct",
    "read_correction_csv": "correct",
    "Derivation": "derive",
    "derive_files": "derive",
    "derive_image": "derive",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dicomlake.write' has no attribute {name!r}")
    return getattr(importlib.import_module(f"dicomlake.write.{module}"), name)
