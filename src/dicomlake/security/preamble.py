"""Executable headers hidden in the 128-byte Part-10 preamble (CVE-2019-11687).

PS3.10 §7.1 leaves the preamble to the application, so a file can be a valid DICOM
instance *and* a Windows PE, Linux ELF or macOS Mach-O program, or a script: a "PE/DICOM
polyglot" that runs when someone double-clicks a ``.dcm``. Dual-purpose TIFF/DICOM files
(whole-slide imaging, PS3.10 §7.5 note) are legitimate and are not flagged.
"""

from __future__ import annotations

# (signature at byte 0, what it is)
EXECUTABLE_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"MZ", "Windows PE/DOS executable ('MZ')"),
    (b"\x7fELF", "ELF executable ('\\x7fELF')"),
    (b"\xfe\xed\xfa\xce", "Mach-O executable (32-bit)"),
    (b"\xfe\xed\xfa\xcf", "Mach-O executable (64-bit)"),
    (b"\xce\xfa\xed\xfe", "Mach-O executable (32-bit, little endian)"),
    (b"\xcf\xfa\xed\xfe", "Mach-O executable (64-bit, little endian)"),
    (b"\xca\xfe\xba\xbe", "Mach-O universal binary / Java class"),
    (b"#!", "script with an interpreter line ('#!')"),
)
"""Executable formats recognised at the start of a preamble."""


def executable_preamble(head: bytes) -> str | None:
    """Say which executable format a Part-10 file's preamble starts with, else None.

    Parameters
    ----------
    head
        The first bytes of the file (at least 132). Files without ``DICM`` at byte 128
        have no preamble and are never flagged.
    """
    if len(head) < 132 or head[128:132] != b"DICM":
        return None
    for sig, what in EXECUTABLE_SIGNATURES:
        if head.startswith(sig):
            return what
    if b"This program cannot be run in DOS mode" in head[:128]:
        return "DOS stub of a Windows PE executable"
    return None
