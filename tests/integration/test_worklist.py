"""``wrap --worklist/--send/--stow`` and the worklist-identity curation check, against real peers.

Two Modality Worklist providers are started here, both serving ``*.wl`` files that dcmtk
``dump2dcm`` makes from the dumps below: dcmtk ``wlmscpfs`` and Orthanc with its
ModalityWorklists plugin. Orthanc is also the destination PACS (C-STORE and STOW-RS).
Everything runs in Orthanc's private network namespace (``tests/integration/orthanc.py``),
so ``wlmscpfs`` (which cannot bind to loopback only) is reachable from nowhere else.

Oracles: dcmtk ``dcmdump`` for what was written, ``dciodvfy`` for conformance, Orthanc's
REST API for what the PACS holds, and the worklist dumps (the answer key) for the values.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import pydicom
import pytest

from dicomlake.config import reset_settings_cache
from tests import factories_write as fw
from tests.conftest import require_tool
from tests.dciodvfy import dcmdump_top_level, run_dciodvfy
from tests.integration.netpeers import acknowledged
from tests.integration.orthanc import WORKLISTS_PLUGIN, Orthanc, require_orthanc
from tests.support import missing

pytestmark = pytest.mark.integration

DICOMLAKE = [sys.executable, "-m", "dicomlake.cli.main"]
WLM_PORT = 11110
TODAY = date.today().strftime("%Y%m%d")

# The answer key: what the RIS scheduled (one dict per worklist file).
ITEMS = [
    {
        "accession": "ACC-1001", "patient_id": "P-0001", "name": "Doe^Jane", "birth": "19700102", "sex": "F",
        "study": "1.2.826.0.1.3680043.8.498.22001", "rp_id": "RP-1001", "rp_desc": "Photo of wound, left hand",
        "referring": "Who^Referred", "modality": "XC", "station_ae": "CAM1", "station": "WARD3CAM",
        "sps_id": "SPS-1001", "sps_desc": "Clinical photograph",
        "rp_code": "PHOTO-HAND|99RIS|Clinical photo of the hand", "protocol_code": "P-WOUND|99RIS|Wound photo",
    },
    {
        "accession": "ACC-1002", "patient_id": "P-0001", "name": "Doe^Jane", "birth": "19700102", "sex": "F",
        "study": "1.2.826.0.1.3680043.8.498.22002", "rp_id": "RP-1002", "rp_desc": "Scanned consent form",
        "referring": "Who^Referred", "modality": "OT", "station_ae": "SCAN1", "station": "SCANNER",
        "sps_id": "SPS-1002", "sps_desc": "Document scan",
    },
    {
        "accession": "ACC-2001", "patient_id": "P-0002", "name": "Roe^Richard", "birth": "19551231", "sex": "M",
        "study": "1.2.826.0.1.3680043.8.498.22003", "rp_id": "RP-2001", "rp_desc": "Photo of skin lesion",
        "referring": "Other^Doctor", "modality": "XC", "station_ae": "CAM1", "station": "WARD3CAM",
        "sps_id": "SPS-2001", "sps_desc": "Dermatology photograph",
    },
    {
        "accession": "ACC-4001", "patient_id": "P-0400", "name": "Müller^Jürgen", "birth": "19440229", "sex": "M",
        "study": "1.2.826.0.1.3680043.8.498.22004", "rp_id": "RP-4001", "rp_desc": "Fußfoto links, Druckstelle",
        "referring": "Groß^Renée", "modality": "XC", "station_ae": "CAM2", "station": "AMBULANZ",
        "sps_id": "SPS-4001", "sps_desc": "Wundfoto",
    },
]  # fmt: skip


def _code_sequence(tag: str, code: str | None) -> str:
    """A one-item code sequence in dump form from ``VALUE|SCHEME|MEANING``, or nothing."""
    if not code:
        return ""
    value, scheme, meaning = code.split("|")
    return (
        f"{tag} SQ (Sequence with undefined length #=1)\n  (fffe,e000) na (Item with undefined length #=3)\n"
        f"    (0008,0100) SH [{value}]\n    (0008,0102) SH [{scheme}]\n    (0008,0104) LO [{meaning}]\n"
        "  (fffe,e00d) na (ItemDelimitationItem)\n(fffe,e0dd) na (SequenceDelimitationItem)\n"
    )


def _dump(item: dict[str, str]) -> str:
    """A worklist file in dcmdump's text form (dump2dcm's input)."""
    return f"""(0008,0005) CS [ISO_IR 100]
(0008,0050) SH [{item["accession"]}]
(0008,0090) PN [{item["referring"]}]
(0010,0010) PN [{item["name"]}]
(0010,0020) LO [{item["patient_id"]}]
(0010,0030) DA [{item["birth"]}]
(0010,0040) CS [{item["sex"]}]
(0020,000d) UI [{item["study"]}]
(0032,1032) PN [{item["referring"]}]
(0032,1060) LO [{item["rp_desc"]}]
{_code_sequence("(0032,1064)", item.get("rp_code"))}(0040,0100) SQ (Sequence with undefined length #=1)
  (fffe,e000) na (Item with undefined length #=8)
    (0008,0060) CS [{item["modality"]}]
    (0040,0001) AE [{item["station_ae"]}]
    (0040,0002) DA [{TODAY}]
    (0040,0003) TM [090000]
    (0040,0007) LO [{item["sps_desc"]}]
    (0040,0009) SH [{item["sps_id"]}]
    (0040,0010) SH [{item["station"]}]
    (0040,0011) SH [WARD 3]
    {_code_sequence("(0040,0008)", item.get("protocol_code"))}  (fffe,e00d) na (ItemDelimitationItem)
(fffe,e0dd) na (SequenceDelimitationItem)
(0040,1001) SH [{item["rp_id"]}]
"""


def make_worklist_files(folder: Path) -> Path:
    """``*.wl`` files made by dcmtk ``dump2dcm`` from :data:`ITEMS`."""
    dump2dcm = require_tool("dump2dcm")
    folder.mkdir(parents=True, exist_ok=True)
    for n, item in enumerate(ITEMS, start=1):
        dump = folder / f"item{n}.dump"
        dump.write_bytes(_dump(item).encode("latin-1"))  # the files declare ISO_IR 100
        subprocess.run([dump2dcm, "-q", str(dump), str(folder / f"item{n}.wl")], check=True, timeout=30)
        dump.unlink()
    return folder


class Peers:
    """Orthanc (worklist provider, destination PACS, DICOMweb) and wlmscpfs, in one namespace."""

    def __init__(self, pacs: Orthanc, wlm: subprocess.Popen[bytes], inputs: Path) -> None:
        self.pacs, self.wlm, self.inputs = pacs, wlm, inputs
        self.orthanc_worklist = f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}"
        self.dcmtk_worklist = f"WLM@127.0.0.1:{WLM_PORT}"
        self.destination = f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}"

    def dicomlake(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The command as users run it, inside the peers' namespace."""
        return self.pacs.run([*DICOMLAKE, *args], timeout=timeout)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The same command in this process (typer's runner) on a thread inside the namespace:
        no interpreter start per call (the error paths below make many calls)."""
        from typer.testing import CliRunner

        from dicomlake.cli.main import app

        result = self.pacs.call_in_netns(lambda: CliRunner().invoke(app, list(args)))
        assert not isinstance(result.exception, (AssertionError, TypeError, AttributeError)), result.exception
        return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def _wait_port(pacs: Orthanc, port: int, deadline_s: float = 20.0) -> None:
    def probe() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if pacs.call_in_netns(probe):
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} in Orthanc's namespace")


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    require_orthanc(dicomweb=True, tools=("wlmscpfs", "dump2dcm", "storescu"))
    if not Path(WORKLISTS_PLUGIN).exists():
        message = f"{WORKLISTS_PLUGIN} is missing (Debian package orthanc)"
        missing(message)
    root = tmp_path_factory.mktemp("worklist")
    orthanc_wl = make_worklist_files(root / "orthanc-worklists")
    dcmtk_wl = make_worklist_files(root / "wlmscpfs" / "WLM")
    (dcmtk_wl / "lockfile").touch()
    inputs = root / "inputs"
    inputs.mkdir()
    fw.phone_photo_jpeg(inputs)
    fw.screenshot_png(inputs)
    fw.three_page_pdf(inputs, pages=1)
    # Orthanc answers worklist queries only from modalities it knows (like a RIS would)
    known = {"LAKE": ("DICOMLAKE", "127.0.0.1", 11112)}
    with Orthanc(root / "orthanc", aet="PACS", dicomweb=True, worklists=orthanc_wl, modalities=known) as pacs:
        log = (root / "wlmscpfs.log").open("wb")
        wlm = subprocess.Popen(
            pacs.command(["wlmscpfs", "-dfp", str(root / "wlmscpfs"), str(WLM_PORT)]),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_port(pacs, WLM_PORT)
            yield Peers(pacs, wlm, inputs)
        finally:
            wlm.terminate()
            try:
                wlm.wait(10)
            except subprocess.TimeoutExpired:
                wlm.kill()
                wlm.wait(10)
            log.close()


def _code(seq: Any) -> str:
    """The first item of a code sequence as ``VALUE|SCHEME|MEANING`` (the answer key's form)."""
    return "|".join((seq[0].CodeValue, seq[0].CodingSchemeDesignator, seq[0].CodeMeaning))


def _in_process(*args: str) -> subprocess.CompletedProcess[str]:
    """The command in this process (typer's runner), for peers outside any namespace."""
    from typer.testing import CliRunner

    from dicomlake.cli.main import app

    result = CliRunner().invoke(app, list(args))
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def _written(out: Path) -> list[Path]:
    return sorted(out.glob("*.dcm"))


@pytest.mark.parametrize("provider", ["wlmscpfs", "orthanc"])
def test_wrap_takes_patient_and_study_from_the_worklist_and_orthanc_holds_it(
    peers: Peers, tmp_path: Path, provider: str
) -> None:
    item = ITEMS[0]
    worklist = peers.dcmtk_worklist if provider == "wlmscpfs" else peers.orthanc_worklist
    out = tmp_path / "dcm"
    inputs = [peers.inputs / "phone_photo.jpg", peers.inputs / "screenshot.png", peers.inputs / "report.pdf"]
    proc = peers.dicomlake(
        "wrap", *map(str, inputs), "--out", str(out), "--worklist", worklist, "--accession", item["accession"],
        "--send", peers.destination,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 sent, 0 refused" in proc.stdout
    files = _written(out)
    assert len(files) == 3
    for path in files:
        top = dcmdump_top_level(path)  # dcmtk's reading of what we wrote
        assert top["0020000d"][1] == item["study"]
        assert top["00080050"][1] == item["accession"]
        assert top["00100020"][1] == item["patient_id"]
        assert top["00100010"][1] == item["name"]
        assert top["00100030"][1] == item["birth"]
        assert top["00100040"][1] == item["sex"]
        assert top["00080090"][1] == item["referring"]
        assert top["00081030"][1] == item["rp_desc"]
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        request = ds.RequestAttributesSequence[0]
        assert (request.RequestedProcedureID, request.ScheduledProcedureStepID) == (item["rp_id"], item["sps_id"])
        assert _code(ds.ProcedureCodeSequence) == _code(request.RequestedProcedureCodeSequence) == item["rp_code"]
        assert _code(request.ScheduledProtocolCodeSequence) == item["protocol_code"]
        report = run_dciodvfy(path)
        assert report.errors == [], report.output
        # the destination PACS holds it, with the worklist's identity
        orthanc_id = peers.pacs.find_instance(top["00080018"][1])
        assert orthanc_id is not None, path.name
        tags = peers.pacs.instance_tags(orthanc_id)
        assert tags["StudyInstanceUID"] == item["study"]
        assert tags["AccessionNumber"] == item["accession"]
        assert tags["PatientID"] == item["patient_id"]
        assert tags["StudyDescription"] == item["rp_desc"]


def test_several_matching_items_need_a_choice_and_none_is_an_error(peers: Peers, tmp_path: Path) -> None:
    photo = str(peers.inputs / "phone_photo.jpg")
    several = peers.cli(
        "wrap", photo, "--out", str(tmp_path / "a"), "--worklist", peers.dcmtk_worklist, "--patient-id", "P-0001"
    )
    assert several.returncode == 2, several.stdout + several.stderr
    assert "2 scheduled procedure steps match" in several.stderr and "--choose" in several.stderr
    assert "ACC-1001" in several.stderr and "ACC-1002" in several.stderr  # both shown
    assert not (tmp_path / "a").exists() or _written(tmp_path / "a") == []
    none = peers.cli(
        "wrap", photo, "--out", str(tmp_path / "b"), "--worklist", peers.orthanc_worklist, "--accession", "NOPE-9"
    )
    assert none.returncode == 2 and "no scheduled procedure step matches" in none.stderr, none.stderr
    assert "Traceback" not in none.stderr + several.stderr
    # the second item, chosen by its number in the listing (order as the provider answered it)
    listed = [line for line in several.stderr.splitlines() if line.startswith("worklist [")]
    second = next(n for n, line in enumerate(listed, start=1) if "ACC-1002" in line)
    chosen = peers.cli(
        "wrap", photo, "--out", str(tmp_path / "c"), "--worklist", peers.dcmtk_worklist, "--patient-id", "P-0001",
        "--choose", str(second),
    )  # fmt: skip
    assert chosen.returncode == 0, chosen.stderr
    (path,) = _written(tmp_path / "c")
    assert dcmdump_top_level(path)["00080050"][1] == "ACC-1002"
    # query by scheduled station and date
    station = peers.cli(
        "wrap", photo, "--out", str(tmp_path / "d"), "--worklist", peers.orthanc_worklist,
        "--scheduled-station", "SCAN1", "--scheduled-date", TODAY,
    )  # fmt: skip
    assert station.returncode == 0, station.stderr
    (path,) = _written(tmp_path / "d")
    assert dcmdump_top_level(path)["0020000d"][1] == ITEMS[1]["study"]


def test_refused_send_keeps_the_file_and_names_the_peers_answer(peers: Peers, tmp_path: Path) -> None:
    photo = str(peers.inputs / "phone_photo.jpg")
    before = set(peers.pacs.instances())
    # Orthanc checks the called AE title: an unknown one is rejected
    unknown = peers.cli(
        "wrap", photo, "--out", str(tmp_path / "a"), "--patient-id", "X1", "--send", "NOTPACS@127.0.0.1:4242"
    )
    assert unknown.returncode == 1, unknown.stdout + unknown.stderr
    assert "association rejected" in unknown.stderr and "alled AE title not recognised" in unknown.stderr
    assert len(_written(tmp_path / "a")) == 1
    # nothing listens on the port: the peer is down
    down = peers.cli("wrap", photo, "--out", str(tmp_path / "b"), "--patient-id", "X2", "--send", "PACS@127.0.0.1:4299")
    assert down.returncode == 1 and "cannot connect" in down.stderr, down.stderr
    assert len(_written(tmp_path / "b")) == 1

    # dcmtk storescp: by default it takes uncompressed transfer syntaxes only (not this JPEG);
    # with +xa it takes the association, then aborts it on the C-STORE request
    def storescp(*options: str, out: str) -> subprocess.CompletedProcess[str]:
        peer = subprocess.Popen(
            peers.pacs.command(["storescp", *options, "-od", str(tmp_path), "11115"]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_port(peers.pacs, 11115)
            return peers.cli(
                "wrap", photo, "--out", str(tmp_path / out), "--patient-id", "X3", "--send", "SCP@127.0.0.1:11115"
            )
        finally:
            peer.terminate()
            peer.wait(10)

    no_jpeg = storescp(out="d")
    assert no_jpeg.returncode == 1, no_jpeg.stdout + no_jpeg.stderr
    assert "none of the proposed presentation contexts" in no_jpeg.stderr and "1.2.840.10008.1.2.4.50" in no_jpeg.stderr
    assert len(_written(tmp_path / "d")) == 1
    aborted = storescp("+xa", "--abort-after", out="c")
    assert aborted.returncode == 1 and "aborted the association" in aborted.stderr, aborted.stdout + aborted.stderr
    assert "0 sent, 1 refused" in aborted.stdout
    assert len(_written(tmp_path / "c")) == 1
    assert "Traceback" not in unknown.stderr + down.stderr + aborted.stderr + no_jpeg.stderr
    assert set(peers.pacs.instances()) == before
    # the kept file goes later, with `dicomlake send`
    again = peers.cli("send", str(_written(tmp_path / "b")[0]), "--to", peers.destination)
    assert again.returncode == 0, again.stderr
    uid = dcmdump_top_level(_written(tmp_path / "b")[0])["00080018"][1]
    assert peers.pacs.find_instance(uid) is not None


def test_latin1_worklist_values_are_written_as_utf8(peers: Peers, tmp_path: Path) -> None:
    item = ITEMS[3]
    for provider in (peers.dcmtk_worklist, peers.orthanc_worklist):
        out = tmp_path / provider.split("@")[0]
        proc = peers.cli("wrap", str(peers.inputs / "screenshot.png"), "--out", str(out), "--worklist", provider,
                         "--accession", item["accession"])  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Müller^Jürgen" in proc.stderr  # the listing shows the name as the provider meant it
        (path,) = _written(out)
        top = dcmdump_top_level(path)  # dcmdump +U8: converted from the file's character set
        assert top["00080005"][1] == "ISO_IR 192"
        assert (top["00100010"][1], top["00080090"][1], top["00081030"][1]) == (
            item["name"],
            item["referring"],
            item["rp_desc"],
        )
        assert run_dciodvfy(path).errors == []


def test_native_object_goes_in_the_only_syntax_the_peer_takes(peers: Peers, tmp_path: Path) -> None:
    """storescp +xi accepts Implicit VR Little Endian only: the Explicit VR object is re-encoded."""
    received = tmp_path / "received"
    received.mkdir()
    out = tmp_path / "dcm"
    made = peers.cli("wrap", str(peers.inputs / "screenshot.png"), "--out", str(out), "--patient-id", "X4")
    assert made.returncode == 0, made.stderr
    (path,) = _written(out)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    scp = subprocess.Popen(
        peers.pacs.command(["storescp", "+xi", "-od", str(received), "11116"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(peers.pacs, 11116)
        sent = peers.cli("send", str(path), "--to", "SCP@127.0.0.1:11116")
    finally:
        scp.terminate()
        scp.wait(10)
    assert sent.returncode == 0 and "0x0000" in sent.stdout, sent.stdout + sent.stderr
    (stored,) = list(received.iterdir())
    dump = subprocess.run(["dcmdump", "-M", "+P", "0002,0010", str(stored)], capture_output=True, text=True)
    assert "=LittleEndianImplicit" in dump.stdout, dump.stdout  # storescp writes what it received
    assert pydicom.dcmread(stored).PixelData == pydicom.dcmread(path).PixelData


def test_stow_rs_to_orthanc(peers: Peers, tmp_path: Path) -> None:
    out = tmp_path / "dcm"
    proc = peers.cli(
        "wrap", str(peers.inputs / "screenshot.png"), "--out", str(out), "--worklist", peers.orthanc_worklist,
        "--accession", "ACC-2001", "--stow", f"{peers.pacs.dicomweb_url}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = _written(out)
    tags = peers.pacs.instance_tags(peers.pacs.find_instance(dcmdump_top_level(path)["00080018"][1]) or "")
    assert tags["StudyInstanceUID"] == ITEMS[2]["study"] and tags["PatientName"] == ITEMS[2]["name"]
    refused = peers.cli("send", str(path), "--stow", f"http://127.0.0.1:{peers.pacs.http_port}/nothing-here")
    assert refused.returncode == 1 and "HTTP 404" in refused.stderr, refused.stderr
    assert path.exists()


def _served_in_namespace(pacs: Orthanc, lake: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``dicomlake serve`` as users start it, inside the peers' namespace; returns once it listens."""
    lake.mkdir(parents=True, exist_ok=True)
    log = (lake.parent / "serve.log").open("wb")
    proc = subprocess.Popen(
        pacs.command([*DICOMLAKE, "serve", "-q", "--no-web", "--lake", str(lake), "--port", str(port)]),
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
    )
    log.close()
    deadline = time.monotonic() + 60
    # the banner comes once start() has returned (service.json is written before the end of it)
    while "dicomlake serve:" not in (lake.parent / "serve.log").read_text(errors="replace"):
        assert proc.poll() is None, (lake.parent / "serve.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "dicomlake serve did not start"
        time.sleep(0.1)
    _wait_port(pacs, port)
    return proc


def test_curation_flags_planted_identity_errors_in_instances_sent_to_serve(peers: Peers, tmp_path: Path) -> None:
    from dicomlake.curate.rules import default_rules_text
    from dicomlake.write.capture import PatientStudy, wrap_paths

    item = ITEMS[0]
    # the answer key: what each instance carries, and which attribute is wrong
    planted = {
        "good": (item["patient_id"], item["accession"], None),
        "wrong-patient-id": ("P-0009", item["accession"], "PatientID"),
        "wrong-accession": (item["patient_id"], "ACC-1009", "AccessionNumber"),
    }
    files: dict[str, Path] = {}
    for label, (pid, acc, _) in planted.items():
        patient = PatientStudy(
            patient_id=pid, patient_name=item["name"], patient_birth_date=item["birth"], patient_sex=item["sex"],
            accession_number=acc, study_instance_uid=item["study"],
        )  # fmt: skip
        report = wrap_paths([peers.inputs / "phone_photo.jpg"], tmp_path / label, patient=patient)
        assert report.failed == []
        files[label] = report.written[0].path
    uid_of = {label: str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for label, p in files.items()}
    rules = tmp_path / "rules.toml"
    shipped = default_rules_text()
    marker = "[checks.worklist-identity]\n"
    assert marker in shipped
    head, tail = shipped.split(marker)
    rules.write_text(head + marker + tail.replace("enabled = false", "enabled = true", 1))
    lake, port = tmp_path / "lake", 11114
    proc = _served_in_namespace(
        peers.pacs,
        lake,
        port,
        {"DICOMLAKE_CURATE_RULES": str(rules), "DICOMLAKE_DIMSE__WORKLIST": peers.dcmtk_worklist},
    )
    try:
        sent = peers.pacs.run(
            [
                "storescu",
                "-v",
                "-xy",
                "-aet",
                "CAM1",
                "-aec",
                "DICOMLAKE",
                "127.0.0.1",
                str(port),
                *map(str, files.values()),
            ]
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        ok, _bad = acknowledged(sent.stdout + sent.stderr)
        assert len(ok) == 3, sent.stdout + sent.stderr
    finally:
        proc.terminate()  # serve commits what it acknowledged before it exits
        assert proc.wait(60) == 0, (lake.parent / "serve.log").read_text()[-3000:]
    query = "SELECT SOPInstanceUID, attribute, value, proposed FROM quality_flags WHERE rule = 'worklist-identity'"
    con = duckdb.connect(str(lake / "lake.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM instances").fetchone() == (3,)
        rows = con.execute(query).fetchall()
    finally:
        con.close()
    flagged = {(r[0], r[1]) for r in rows}
    assert flagged == {
        (uid_of["wrong-patient-id"], "PatientID"),
        (uid_of["wrong-accession"], "AccessionNumber"),
    }, rows
    by_uid = {r[0]: r for r in rows}
    assert by_uid[uid_of["wrong-patient-id"]][2:] == ("P-0009", item["patient_id"])  # found, proposed
    # the whole-lake run (the engine, as `dicomlake curate run`) finds the same against the other provider
    from dicomlake.curate.engine import curate
    from dicomlake.curate.rules import load_rules
    from dicomlake.store.duckdb import DuckDBStore

    os.environ["DICOMLAKE_DIMSE__WORKLIST"] = peers.orthanc_worklist
    reset_settings_cache()
    try:
        with DuckDBStore(lake) as store:
            report = peers.pacs.call_in_netns(lambda: curate(store.curation(), None, load_rules(rules)))
    finally:
        del os.environ["DICOMLAKE_DIMSE__WORKLIST"]
        reset_settings_cache()
    assert report.by_rule.get("worklist-identity") == 2, (report.by_rule, report.notes)


# ---- UPS-RS ------------------------------------------------------------------------------------
# No UPS-RS origin can be started here (Orthanc has none; dcm4chee-arc is not packaged), so a tiny
# HTTP server in the test answers the workitems query from hand-written DICOM JSON (PS3.18 F.2):
# it stands in for the peer, and checks the query keys we send.

UPS_ITEM = {
    "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Anna"}]},
    "00100020": {"vr": "LO", "Value": ["P-0300"]},
    "00100030": {"vr": "DA", "Value": ["19800315"]},
    "00100040": {"vr": "CS", "Value": ["F"]},
    "00404005": {"vr": "DT", "Value": [f"{TODAY}101500"]},
    "00741000": {"vr": "CS", "Value": ["SCHEDULED"]},
    "00741204": {"vr": "LO", "Value": ["Wound photograph"]},
    "0040A370": {
        "vr": "SQ",
        "Value": [
            {
                "0020000D": {"vr": "UI", "Value": ["1.2.826.0.1.3680043.8.498.22300"]},
                "00080050": {"vr": "SH", "Value": ["ACC-3001"]},
                "00401001": {"vr": "SH", "Value": ["RP-3001"]},
                "00321060": {"vr": "LO", "Value": ["Photo of pressure ulcer"]},
            }
        ],
    },
}


def test_wrap_takes_patient_and_study_from_a_ups_rs_workitem(tmp_path: Path) -> None:
    import json
    import threading
    import urllib.parse
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    queries: list[dict[str, list[str]]] = []

    class Workitems(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            queries.append(query)
            match = url.path == "/dicom-web/workitems" and query.get("ReferencedRequestSequence.AccessionNumber") == [
                "ACC-3001"
            ]
            if not match:
                self.send_response(204)
                self.end_headers()
                return
            body = json.dumps([UPS_ITEM]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Workitems)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    root = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    inputs = tmp_path / "in"
    inputs.mkdir()
    photo = str(fw.phone_photo_jpeg(inputs))
    try:
        found = _in_process("wrap", photo, "--out", str(tmp_path / "a"), "--ups", root, "--accession", "ACC-3001")
        none = _in_process("wrap", photo, "--out", str(tmp_path / "b"), "--ups", root, "--accession", "ACC-0000")
    finally:
        server.shutdown()
    assert found.returncode == 0, found.stdout + found.stderr
    assert queries[0]["ProcedureStepState"] == ["SCHEDULED"]
    (path,) = _written(tmp_path / "a")
    top = dcmdump_top_level(path)
    assert top["00100010"][1] == "Müller^Anna" and top["00080005"][1] == "ISO_IR 192"
    assert top["0020000d"][1] == "1.2.826.0.1.3680043.8.498.22300"
    assert top["00080050"][1] == "ACC-3001" and top["00100020"][1] == "P-0300"
    assert top["00081030"][1] == "Photo of pressure ulcer"
    assert run_dciodvfy(path).errors == []
    assert none.returncode == 2 and "no scheduled procedure step matches accession ACC-0000" in none.stderr


def test_stow_rs_with_basic_auth_and_a_refused_password(tmp_path: Path) -> None:
    """Orthanc with HTTP authentication: the right user stores, a wrong password is refused (401)."""
    import base64
    import json

    require_orthanc(dicomweb=True)
    inputs = tmp_path / "in"
    inputs.mkdir()
    config = {"AuthenticationEnabled": True, "RegisteredUsers": {"lake": "s3cret pass"}}
    auth = {"Authorization": "Basic " + base64.b64encode(b"lake:s3cret pass").decode()}
    with Orthanc(tmp_path / "orthanc", aet="PACS", dicomweb=True, extra_config=config, http_headers=auth) as pacs:
        peers = Peers(pacs, None, inputs)  # type: ignore[arg-type]
        good = peers.cli(
            "wrap", str(fw.screenshot_png(inputs)), "--out", str(tmp_path / "a"), "--patient-id", "AUTH-1",
            "--stow", pacs.dicomweb_url, "--stow-auth", "basic:lake:s3cret pass",
        )  # fmt: skip
        bad = peers.cli(
            "wrap", str(inputs / "screenshot.png"), "--out", str(tmp_path / "b"), "--patient-id", "AUTH-2",
            "--stow", pacs.dicomweb_url, "--stow-auth", "basic:lake:wrong",
        )  # fmt: skip
        status, body = pacs.request("GET", "/patients?expand")
        anonymous = pacs.request("GET", "/patients", headers={"Authorization": ""})[0]
    assert good.returncode == 0, good.stdout + good.stderr
    assert bad.returncode == 1 and "HTTP 401" in bad.stderr, bad.stdout + bad.stderr
    assert len(_written(tmp_path / "b")) == 1
    assert status == 200 and anonymous == 401
    assert sorted(p["MainDicomTags"]["PatientID"] for p in json.loads(body)) == ["AUTH-1"]


def test_capture_page_wraps_an_upload_with_the_chosen_item_and_sends_it(
    peers: Peers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The web capture page (admin): worklist query, upload, wrap, C-STORE to the PACS."""
    from fastapi.testclient import TestClient

    from dicomlake.web.app import create_app
    from tests import web_support as ws

    item = ITEMS[2]
    lake = tmp_path / "lake"
    lake.mkdir()
    ws.make_users(lake)
    monkeypatch.setenv("DICOMLAKE_DIMSE__WORKLIST", peers.orthanc_worklist)
    monkeypatch.setenv("DICOMLAKE_DIMSE__STORE_TO", peers.destination)
    reset_settings_cache()
    photo = (peers.inputs / "phone_photo.jpg").read_bytes()

    def session() -> dict[str, Any]:
        # the client's threads are started from this one, inside the peers' namespace
        app = create_app(lake, ws.settings())
        with TestClient(app) as client:
            admin, analyst = ws.bearer(app, "ada"), ws.bearer(app, "ann")
            form = {"accession": item["accession"], "study_uid": item["study"]}
            return {
                "page": client.get("/capture", params={"accession": item["accession"]}, headers=admin),
                "denied": client.get("/capture", headers=analyst),
                "posted": client.post(
                    "/capture", headers=admin, data=form, files={"file": ("<b>wound</b>.jpg", photo, "image/jpeg")}
                ),
                "forged": client.post(
                    "/capture",
                    headers=admin,
                    data={**form, "study_uid": "1.2.3.4"},
                    files={"file": ("x.jpg", photo, "image/jpeg")},
                ),
            }

    try:
        answers = peers.pacs.call_in_netns(session)
    finally:
        monkeypatch.delenv("DICOMLAKE_DIMSE__WORKLIST")
        monkeypatch.delenv("DICOMLAKE_DIMSE__STORE_TO")
        reset_settings_cache()
    page = answers["page"]
    assert page.status_code == 200, page.text
    assert item["name"] in page.text and f'data-study="{item["study"]}"' in page.text
    assert answers["denied"].status_code == 403
    posted = answers["posted"]
    assert posted.status_code == 200, posted.text
    result = posted.json()
    assert len(result["sent"]) == 1 and result["refused"] == []
    (kept,) = [Path(w["path"]) for w in result["written"]]
    assert kept.is_file() and kept.parent == lake / "capture" / item["study"]
    tags = peers.pacs.instance_tags(peers.pacs.find_instance(result["written"][0]["sop_instance_uid"]) or "")
    assert (tags["StudyInstanceUID"], tags["PatientID"], tags["AccessionNumber"]) == (
        item["study"], item["patient_id"], item["accession"]
    )  # fmt: skip
    assert answers["forged"].status_code == 409  # the worklist, not the browser, names the study
    assert not (lake / "capture" / "1.2.3.4").exists()


def test_capture_page_in_a_browser(peers: Peers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Headless Chromium (Playwright) logs in, finds the order, drops the photo, sends it: the page's
    script carries the CSRF token, the PACS holds the object. Server and browser run in the peers'
    namespace (started from a thread inside it)."""
    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        message = f"{chromium} missing (apt-get install chromium)"
        missing(message)
    import uvicorn
    from playwright.sync_api import expect, sync_playwright

    from dicomlake.web.app import create_app
    from tests import web_support as ws

    item = ITEMS[1]
    lake = tmp_path / "lake"
    lake.mkdir()
    ws.make_users(lake)
    monkeypatch.setenv("DICOMLAKE_DIMSE__WORKLIST", peers.dcmtk_worklist)
    monkeypatch.setenv("DICOMLAKE_DIMSE__STORE_TO", peers.destination)
    reset_settings_cache()
    photo = peers.inputs / "phone_photo.jpg"

    def browse() -> str:
        app = create_app(lake, ws.settings())
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        errors: list[str] = []
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
                page = browser.new_page()
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.set_default_timeout(30_000)
                page.goto(f"{base}/login")
                page.fill("#username", "ada")
                page.fill("#password", ws.PASSWORDS["ada"])
                page.click("#login")
                page.wait_for_load_state()
                page.goto(f"{base}/capture")
                page.fill("input[name=accession]", item["accession"])
                page.click("form.capture-query button")
                expect(page.locator("#worklist-items tr.item")).to_have_count(1)
                page.set_input_files("input[name=file]", str(photo))
                page.click("#capture button[type=submit]")
                expect(page.locator("#capture-result")).to_contain_text('"sent"')
                result = page.locator("#capture-result").text_content() or ""
                browser.close()
        finally:
            server.should_exit = True
            thread.join(10)
        assert errors == [], errors
        return result

    try:
        shown = peers.pacs.call_in_netns(browse)
    finally:
        monkeypatch.delenv("DICOMLAKE_DIMSE__WORKLIST")
        monkeypatch.delenv("DICOMLAKE_DIMSE__STORE_TO")
        reset_settings_cache()
    answer = json.loads(shown)
    assert len(answer["sent"]) == 1 and answer["refused"] == [], answer
    tags = peers.pacs.instance_tags(peers.pacs.find_instance(answer["written"][0]["sop_instance_uid"]) or "")
    assert (tags["StudyInstanceUID"], tags["PatientID"]) == (item["study"], item["patient_id"])
