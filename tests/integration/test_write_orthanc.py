"""Every object wrap, derive and correct write is accepted by a real Orthanc over C-STORE.

Orthanc (Debian ``orthanc``) runs on loopback in its own network namespace (see
``tests/integration/orthanc.py``); dcmtk ``storescu`` sends each file with its own
transfer syntax; Orthanc's REST API is the oracle: the instance is listed, its tags read
back as we wrote them, and the stored file is byte-identical to ours.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicomlake.write.capture import PatientStudy, WrapOptions, wrap_paths
from dicomlake.write.correct import correct_file
from dicomlake.write.derive import Derivation, derive_files
from tests import factories_write as fw
from tests.dciodvfy import run_dciodvfy
from tests.integration.orthanc import Orthanc, require_orthanc

pytestmark = pytest.mark.integration


def _data_set_bytes(part10: bytes) -> bytes:
    """The data set of a Part 10 file: after the preamble, DICM and the group 0002 elements."""
    assert part10[128:132] == b"DICM" and part10[132:136] == b"\x02\x00\x00\x00"
    group_length = int.from_bytes(part10[140:144], "little")
    return part10[144 + group_length :]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("field")
    inputs = [
        fw.phone_photo_jpeg(d),
        fw.photo_jpeg_444(d),
        fw.grayscale_jpeg(d),
        fw.skewed_scan_tiff(d),
        fw.screenshot_png(d),
        fw.png_16bit(d),
        fw.bmp_rgb(d),
        fw.tiff_rgb(d),
        fw.three_page_pdf(d),
        fw.cmyk_jpeg(d),
        fw.progressive_jpeg(d),
    ]
    out = d / "dcm"
    report = wrap_paths(
        inputs,
        out,
        patient=PatientStudy(patient_id="ORTHANC-1", patient_name="Doe^Jane"),
        options=WrapOptions(convert=True),
    )
    assert report.failed == []
    files = [w.path for w in report.written]
    derived = derive_files(
        [Path(get_testdata_file("CT_small.dcm")), files[0], files[5]],
        d / "derived",
        Derivation.of("113088", "Gaussian blur sigma 1.5"),
    )
    assert derived.failed == []
    files += [w.path for w in derived.written]
    correct_file(files[-1], {"PatientID": "CORRECTED-1"}, reason="CORRECT", source_of_previous_values="test")
    return files


def test_every_written_object_has_zero_dciodvfy_errors(written: list[Path]) -> None:
    errors = {p.name: run_dciodvfy(p).errors for p in written}
    assert len(written) >= 15
    assert {name: errs for name, errs in errors.items() if errs} == {}


def test_orthanc_accepts_every_written_object_over_c_store(written: list[Path], tmp_path: Path) -> None:
    require_orthanc(tools=("storescu",))
    with Orthanc(tmp_path / "orthanc", aet="PACS") as pacs:
        assert pacs.echo()
        proc = pacs.store(written)
        assert proc.returncode == 0, proc.stderr + pacs.log_tail()
        assert len(pacs.instances()) == len(written)
        for path in written:
            ds = pydicom.dcmread(path)
            orthanc_id = pacs.find_instance(str(ds.SOPInstanceUID))
            assert orthanc_id is not None, path.name
            tags = pacs.instance_tags(orthanc_id)
            assert tags["SOPClassUID"] == ds.SOPClassUID
            assert tags["PatientID"] == ds.PatientID
            assert tags["SeriesInstanceUID"] == ds.SeriesInstanceUID
            # Orthanc stores the data set it received byte for byte (it writes its own
            # File Meta Information header, which is not part of what was sent).
            stored = pacs.get_bytes(f"/instances/{orthanc_id}/file")
            assert _data_set_bytes(stored) == _data_set_bytes(path.read_bytes()), path.name
        corrected = pydicom.dcmread(written[-1])
        tags = pacs.instance_tags(pacs.find_instance(str(corrected.SOPInstanceUID)) or "")
        assert tags["PatientID"] == "CORRECTED-1"
        history = tags["OriginalAttributesSequence"][-1]
        assert history["ReasonForTheAttributeModification"] == "CORRECT"
        assert history["ModifiedAttributesSequence"][0]["PatientID"] == "ORTHANC-1"
