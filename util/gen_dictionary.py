"""Generate src/dicomlake/_standard/dictionary.json (the PS3.6 data dictionary) and
private_dictionary.json (the VRs of vendors' private elements) as compact JSON.

Source: pydicom's ``_dicom_dict`` (itself generated from the standard's PS3.6 DocBook by
pydicom's ``util/generate_dict``), and ``_private_dict`` for the private elements (pydicom's
collection from vendors' conformance statements, GDCM and dcmtk). The header row names this generator, pydicom's version
and so the edition it carries. The reader loads this file instead of importing pydicom,
which alone costs ~45 MiB per worker process.

Run: .venv/bin/python util/gen_dictionary.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
from pydicom._dicom_dict import DicomDictionary, RepeatersDictionary
from pydicom._private_dict import private_dictionaries

OUT = Path(__file__).resolve().parents[1] / "src" / "dicomlake" / "_standard" / "dictionary.json"
OUT_PRIVATE = OUT.with_name("private_dictionary.json")


def main() -> None:
    doc = {
        "_generated_by": f"util/gen_dictionary.py from pydicom {pydicom.__version__} _dicom_dict (PS3.6)",
        "public": {f"{tag:08X}": [e[0], e[1], e[4]] for tag, e in sorted(DicomDictionary.items())},
        "repeaters": {mask: [e[0], e[1], e[4]] for mask, e in sorted(RepeatersDictionary.items())},
    }
    OUT.write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({len(doc['public'])} public, {len(doc['repeaters'])} repeating)")
    # {creator: {key: VR}}; keys as pydicom's: "ggggxxee" (any block), "ggggeeee", "ggxxxxee"
    private = {
        creator: {key: entry[0] for key, entry in sorted(block.items())}
        for creator, block in sorted(private_dictionaries.items())
    }
    pdoc = {
        "_generated_by": f"util/gen_dictionary.py from pydicom {pydicom.__version__} _private_dict",
        "private": private,
    }
    OUT_PRIVATE.write_text(json.dumps(pdoc, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {OUT_PRIVATE} ({len(private)} creators, {sum(len(b) for b in private.values())} elements)")


if __name__ == "__main__":
    main()
