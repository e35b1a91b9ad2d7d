"""WADO-RS metadata against pydicom: for every file of the sample corpus, what ``/dicomweb``
serves from the lake equals pydicom's ``Dataset.to_json_dict`` of the original file.

Compared as PS3.18 F.2 defines the model, with bulk data excluded on both sides:

- bulk data: Pixel Data (and Float/Double Float Pixel Data) always, other binary values over
  1,024 bytes (the lake's ``ingest.inline_binary_max``; pydicom's own threshold counts
  base64 characters, so pydicom is asked for everything inline and the same cut is applied);
- group lengths (gggg,0000) and Data Set Trailing Padding (FFFC,FFFC), which the JSON model
  does not carry;
- padding of text values (PS3.5 §6.2: trailing spaces and NULs are not significant) and
  empty values in a multi-valued element, which F.2.5 writes as ``null`` and pydicom as ``""``.

- group 0002 inside sequence items (file meta has no place in a data set).

Elements received as UN are compared with pydicom both ways (``replace_un_with_known_vr``
True and False): the lake decodes UN by the dictionary where the value can be decoded and
keeps it as InlineBinary (PS3.18 F.2.7) otherwise. Files pydicom cannot read and invalid
values the readers treat differently are listed below with the reason.
"""

from __future__ import annotations

import base64
import io
import json
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient

from tests import web_support as ws

PYDICOM_CANNOT = {
    "explicit_VR-UN.dcm": "Specific Character Set value '49' (not a defined term): pydicom raises, the lake falls back to Latin-1",
    "CT-RDSR-Toshiba_MultiValSD.dcm": "DS value '10.50/ 15.00' is not a decimal string: pydicom's to_json_dict raises",
    "DX-Im-Carestream_DR7500-2.dcm": "DS value '1.06,0.206' is not a decimal string: pydicom's to_json_dict raises",
}
KNOWN_DIFFERENCES = {
    (
        "DX-Im-DRGEM.dcm",
        "00181150",
    ): "IS value '161.3' is not an integer string: the lake keeps 161.3, pydicom truncates to 161",
    ("DX-Im-DRGEM.dcm", "00181152"): "IS value '40.196': the lake keeps 40.196, pydicom truncates to 40",
}
"""(file, tag) where the readers legitimately differ on an invalid value."""
"""Files the lake reads and pydicom cannot, with the reason."""

BULK_TAGS = {"7FE00010", "7FE00008", "7FE00009"}


@pytest.fixture
def pydicom_keeps_un() -> Iterator[None]:
    old = pydicom.config.replace_un_with_known_vr
    pydicom.config.replace_un_with_known_vr = False
    yield
    pydicom.config.replace_un_with_known_vr = old


def _norm(v: Any) -> Any:
    if isinstance(v, str):
        v = v.rstrip(" \x00")
        return None if v == "" else v
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items() if _norm(x) is not None}
    return v


def normalise(ds: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tag, el in ds.items():
        if (
            tag in BULK_TAGS
            or tag.endswith("0000")
            or tag == "FFFCFFFC"
            or tag.startswith("0002")
            or "BulkDataURI" in el
        ):
            continue
        if "InlineBinary" in el and len(base64.b64decode(el["InlineBinary"])) > 1024:
            continue
        el = dict(el)
        if el.get("vr") == "SQ":
            el["Value"] = [normalise(item or {}) for item in el.get("Value", [])]
        elif "Value" in el:
            vals = [_norm(x) for x in el["Value"]]
            while vals and vals[-1] is None:
                vals.pop()
            if vals:
                el["Value"] = vals
            else:
                del el["Value"]
        out[tag] = el
    return out


def _read(source_path: str) -> pydicom.Dataset:
    if "!/" in source_path:
        archive, _, member = source_path.partition("!/")
        with zipfile.ZipFile(archive) as z:
            return pydicom.dcmread(io.BytesIO(z.read(member)), force=True)
    return pydicom.dcmread(source_path, force=True)


def test_wado_metadata_equals_pydicom_to_json_dict_for_every_sample_file(
    sample_lake: Path, pydicom_keeps_un: None
) -> None:
    from dicomlake.web.app import create_app

    ws.make_users(sample_lake) if not (sample_lake / "access.db").exists() else None
    app = create_app(sample_lake, ws.settings(access_db=sample_lake.parent / f"{sample_lake.name}-access.db"))
    with TestClient(app) as c:
        app.state.ctx.auth.add_user("ada", "admin", ws.PASSWORDS["ada"])
        c.headers.update(ws.bearer(app, "ada"))
        rows = app.state.ctx.data.rows(
            'SELECT SOPInstanceUID AS sop, "SeriesInstanceUID" AS se, "StudyInstanceUID" AS st, source_path AS p '
            "FROM instances ORDER BY source_path"
        )
        equal = 0
        problems: list[str] = []
        pydicom_failed: list[str] = []
        unaddressable: list[str] = []
        for r in rows:
            if not r["st"] or not r["se"]:
                unaddressable.append(Path(r["p"]).name)
                continue
            url = f"/dicomweb/studies/{r['st']}/series/{r['se']}/instances/{r['sop']}/metadata"
            resp = c.get(url)
            if resp.status_code != 200:
                problems.append(f"{Path(r['p']).name}: HTTP {resp.status_code}")
                continue
            ours = resp.json()
            name = Path(r["p"]).name
            try:
                views = []
                for keep_un in (False, True):
                    pydicom.config.replace_un_with_known_vr = not keep_un
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        views.append(normalise(_read(r["p"]).to_json_dict(bulk_data_threshold=1 << 40)))
            except Exception as exc:
                if name not in PYDICOM_CANNOT:
                    problems.append(f"{name}: pydicom fails ({type(exc).__name__}: {exc}) and the file is not listed")
                pydicom_failed.append(name)
                continue
            a, b = normalise(ours[0]), views[0]
            diff = sorted(
                t
                for t in set(a) | set(b)
                if a.get(t) != b.get(t) and a.get(t) != views[1].get(t) and (name, t) not in KNOWN_DIFFERENCES
            )
            if not diff:
                equal += 1
                continue
            detail = "; ".join(
                f"{t}: {json.dumps(a.get(t))[:80]} vs pydicom {json.dumps(b.get(t))[:80]}" for t in diff[:3]
            )
            problems.append(f"{name}: {len(diff)} element(s) differ: {detail}")
    print(
        f"\nWADO-RS metadata equal to pydicom to_json_dict for {equal} of {len(rows)} instances "
        f"({len(pydicom_failed)} pydicom cannot read: {', '.join(pydicom_failed)}; {len(unaddressable)} without "
        f"Study/Series Instance UID, so without a WADO-RS URL: {', '.join(unaddressable)})"
    )
    assert not problems, "\n".join(problems[:30])
    assert equal > 170
