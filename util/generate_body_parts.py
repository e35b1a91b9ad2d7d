"""Generate ``src/dicomlake/_standard/body_parts.json``: Body Part Examined defined terms.

PS3.16 Annex L (Table L-1) maps each Body Part Examined (0018,0015) defined term to a code
of CID 4031 "Common Anatomic Regions". pydicom ships CID 4031 (codes and meanings) but not
the defined terms, so this script reads the term → concept table that DCMTK extracted
from PS3.16-2023b Table L-1 (``util/sources/dcmtk_cid4031e_map.txt``, plus two legacy
terms of the earlier edition) and looks each concept up in pydicom's CID 4031 for its
SNOMED CT code and meaning.

Run: ``.venv/bin/python util/generate_body_parts.py``
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydicom.sr.codedict import codes

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "src" / "dicomlake" / "_standard" / "body_parts.json"
SOURCES = [
    (HERE / "sources" / "dcmtk_cid4031e_map.txt", False),
    (HERE / "sources" / "dcmtk_cid4031e_map_2015.txt", True),
]
_ENTRY = re.compile(r'\{\s*"([A-Z0-9]+)"\s*,\s*CID4031_CommonAnatomicRegions?::(\w+)\s*\}')


def main() -> None:
    cid = codes.cid4031
    terms: dict[str, dict[str, object]] = {}
    problems: list[str] = []
    for path, legacy in SOURCES:
        for term, concept in _ENTRY.findall(path.read_text("utf-8")):
            try:
                code = getattr(cid, concept)
            except AttributeError:
                problems.append(f"{path.name}: {concept} is not in pydicom's CID 4031")
                continue
            if term in terms:
                continue
            terms[term] = {
                "scheme": code.scheme_designator,
                "code": code.value,
                "meaning": code.meaning,
                "legacy": legacy,
            }
    if problems:
        raise SystemExit("\n".join(problems))
    import pydicom

    doc = {
        "_generated_by": "util/generate_body_parts.py",
        "_edition": "PS3.16-2023b Table L-1 (via DCMTK cid4031e.cc 5ac67f3); "
        f"codes and meanings from pydicom {pydicom.__version__} CID 4031",
        "terms": dict(sorted(terms.items())),
    }
    OUT.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{OUT}: {len(terms)} defined terms")


if __name__ == "__main__":
    main()
