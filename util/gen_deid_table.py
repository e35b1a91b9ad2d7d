"""Generate src/dicomlake/_standard/ps315_e1_1.json from the standard's published tables.

Inputs (all read, none typed by hand):

* DICOM PS3.15 Table E.1-1 (Application Level Confidentiality Profile Attributes), edition 2024b,
  as JSON (``ps3.15-e1-1-2024b.json`` in the folder given by ``--data``; innolitics/dicom-standard).
* The IOD → module → attribute tables of PS3.3 as shipped by highdicom (``highdicom/_standard``,
  themselves generated from innolitics/dicom-standard): used to resolve the compound actions
  (X/Z, X/D, Z/D, X/Z/D, X/Z/U* decide on the attribute's Type in the IOD) and to whitelist
  attributes that are neither in Table E.1-1 nor in the IOD.
* PS3.16 CID 7050 (De-identification Method) as shipped by pydicom (``pydicom.sr.codedict``).
* The TCIA Private Tag Knowledge Base (``tcia-private-tag-kb-2024-02-01.csv`` in the same folder), the
  basis of the Retain Safe Private Option.

Usage::

    python util/gen_deid_table.py [--data DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from importlib import resources
from importlib.metadata import version
from pathlib import Path

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.sr.codedict import codes

REPO = Path(__file__).resolve().parent.parent
EDITION = "2024b"
TABLE_FILE = f"ps3.15-e1-1-{EDITION}.json"
KB_FILE = "tcia-private-tag-kb-2024-02-01.csv"
OUT = REPO / "src" / "dicomlake" / "_standard" / "ps315_e1_1.json"

OPTION_KEYS = {
    # Table E.1-1 column key → CID 7050 keyword (PS3.16) of the option it stands for.
    "rtnSafePrivOpt": "RetainSafePrivateOption",
    "rtnUIDsOpt": "RetainUidsOption",
    "rtnDevIdOpt": "RetainDeviceIdentityOption",
    "rtnInstIdOpt": "RetainInstitutionIdentityOption",
    "rtnPatCharsOpt": "RetainPatientCharacteristicsOption",
    "rtnLongFullDatesOpt": "RetainLongitudinalTemporalInformationFullDatesOption",
    "rtnLongModifDatesOpt": "RetainLongitudinalTemporalInformationModifiedDatesOption",
    "cleanDescOpt": "CleanDescriptorsOption",
    "cleanStructContOpt": "CleanStructuredContentOption",
    "cleanGraphOpt": "CleanGraphicsOption",
}
TYPE_RANK = {"1": 4, "1C": 3, "2": 2, "2C": 1, "3": 0}

_COMPONENT = re.compile(r'\(([0-9A-Fa-f]{4}),(?:"?(.*?)"?,([0-9A-Fa-f]{2})|([0-9A-Fa-f]{4}))\)')


def _tag_of(text: str) -> str:
    """'(0008,0050)' → '00080050'; patterns keep their x: '(50XX,XXXX)' → '50xxxxxx'."""
    if text.startswith("(GGGG,EEEE)"):
        return "private"
    return (text[1:5] + text[6:10]).lower()


def table_rows(data: Path) -> list[dict[str, object]]:
    """Rows of Table E.1-1 in the standard's order, with keyword and per-option actions."""
    raw = json.loads((data / TABLE_FILE).read_text(encoding="utf-8"))
    rows: list[dict[str, object]] = []
    for r in raw:
        tag = _tag_of(r["tag"])
        keyword = ""
        if "x" not in tag and tag != "private":
            keyword = keyword_for_tag(int(tag, 16)) or ""
        rows.append(
            {
                "tag": tag,
                "name": r["name"],
                "keyword": keyword,
                "in_std_iod": r["stdCompIOD"] == "Y",
                "basic": r["basicProfile"],
                "options": {OPTION_KEYS[k]: v for k, v in r.items() if k in OPTION_KEYS},
            }
        )
    if len(rows) != 621:
        raise SystemExit(f"{TABLE_FILE}: expected 621 rows of Table E.1-1, found {len(rows)}")
    return rows


def _hd_json(name: str) -> object:
    return json.loads(resources.files("highdicom").joinpath("_standard", name).read_text())


def iod_tables() -> tuple[dict[str, str], dict[str, list[str]], dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """SOP class → IOD, IOD → modules, module → top-level {tag: type}, parent SQ → {tag: type}."""
    sop_iod: dict[str, str] = _hd_json("sop_class_iod_map.json")  # type: ignore[assignment]
    iod_modules_raw: dict[str, list[dict[str, str]]] = _hd_json("iod_module_map.json")  # type: ignore[assignment]
    module_attrs: dict[str, list[dict[str, object]]] = _hd_json("module_attribute_map.json")  # type: ignore[assignment]
    used = {m["key"] for mods in iod_modules_raw.values() for m in mods}
    modules: dict[str, dict[str, str]] = {}
    nested: dict[str, dict[str, str]] = {}

    def hex_of(keyword: str) -> str | None:
        tag = tag_for_keyword(keyword)
        return None if tag is None else f"{tag:08x}"

    def stronger(a: str | None, b: str) -> str:
        return b if a is None or TYPE_RANK.get(b, 0) > TYPE_RANK.get(a, 0) else a

    for key in sorted(used):
        top: dict[str, str] = {}
        for attr in module_attrs.get(key, []):
            tag = hex_of(str(attr["keyword"]))
            if tag is None:
                continue
            path = list(attr["path"])  # type: ignore[call-overload]
            kind = str(attr["type"])
            if not path:
                top[tag] = stronger(top.get(tag), kind)
            else:
                parent = hex_of(str(path[-1]))
                if parent is not None:
                    inner = nested.setdefault(parent, {})
                    inner[tag] = stronger(inner.get(tag), kind)
        modules[key] = top
    iod_modules = {iod: [m["key"] for m in mods] for iod, mods in iod_modules_raw.items()}
    return sop_iod, iod_modules, modules, nested


def safe_private(data: Path) -> dict[str, str]:
    """Private element signature → disposition (k keep, h hash UID, o/oi offset date, d remove).

    Signature: components joined by '/', a private one as 'gggg,CREATOR,ee' (creator upper-case,
    stripped), a standard one as 'ggggeeee'. Items of sequences are not distinguished.
    """
    out: dict[str, str] = {}
    with (data / KB_FILE).open(encoding="utf-8-sig", newline="") as fh:
        for row in csv.DictReader(fh):
            disposition = row["private_disposition"].strip().lower()
            if disposition not in {"k", "h", "o", "oi"}:
                continue
            parts = []
            for piece in re.split(r"\[<\d+>\]", row["element_sig_pattern"]):
                m = _COMPONENT.fullmatch(piece)
                if m is None:
                    raise SystemExit(f"{KB_FILE}: cannot parse signature {row['element_sig_pattern']!r}")
                group, creator, elem, std = m.groups()
                if std is not None:
                    parts.append(f"{group}{std}".lower())
                else:
                    parts.append(f"{group.lower()},{creator.strip().upper()},{elem.lower()}")
            out["/".join(parts)] = disposition
    return out


def cid7050() -> dict[str, list[str]]:
    """CID 7050 keyword → (code value, scheme, meaning), as pydicom ships PS3.16."""
    cid = codes.cid7050
    return {k: [c.value, c.scheme_designator, c.meaning] for k in cid.dir() for c in [getattr(cid, k)]}


def main(argv: list[str] | None = None) -> None:
    """Write the generated JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, required=True, help="folder holding the standard's table and the TCIA knowledge base"
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    sop_iod, iod_modules, modules, nested = iod_tables()
    doc = {
        "_generated": (
            f"Generated by util/gen_deid_table.py from DICOM PS3.15 {EDITION} Table E.1-1, "
            f"PS3.3 IOD tables (highdicom {version('highdicom')}), PS3.16 CID 7050 "
            f"(pydicom {version('pydicom')}) and the TCIA private tag KB 2024-02-01. Do not edit."
        ),
        "edition": EDITION,
        "rows": table_rows(args.data),
        "cid7050": cid7050(),
        "sop_class_iod": sop_iod,
        "iod_modules": iod_modules,
        "module_types": modules,
        "nested_types": nested,
        "safe_private": safe_private(args.data),
    }
    args.out.write_text(json.dumps(doc, separators=(",", ":"), sort_keys=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes, {len(doc['rows'])} rows)")


if __name__ == "__main__":
    main()
