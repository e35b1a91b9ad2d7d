"""Writers: Secondary Capture, VL Photographic, Encapsulated PDF, derived images, corrections."""

from dicomlake.write._common import WriteReport, WrittenFile
from dicomlake.write.capture import PatientStudy, WrapOptions, wrap_file, wrap_paths
from dicomlake.write.codes import CaptureIOD, ConversionType, ModificationReason, SourceKind
from dicomlake.write.correct import Correction, apply_correction, correct_file, read_correction_csv
from dicomlake.write.derive import Derivation, derive_files, derive_image

__all__ = [
    "CaptureIOD",
    "ConversionType",
    "Correction",
    "Derivation",
    "ModificationReason",
    "PatientStudy",
    "SourceKind",
    "WrapOptions",
    "WriteReport",
    "WrittenFile",
    "apply_correction",
    "correct_file",
    "derive_files",
    "derive_image",
    "read_correction_csv",
    "wrap_file",
    "wrap_paths",
]
