"""``wrap``/``send`` usage errors and value parsing that need no peer (the peers are in
tests/integration/test_worklist.py): every mistake is one line naming the option, exit 2."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dicomlake.errors import WriteError
from dicomlake.write.send import Peer, _auth_header
from dicomlake.write.worklist import WorklistItem, WorklistQuery, choose
from tests import factories_write as fw


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    """The command in-process (typer's runner): usage errors happen before any network or file."""
    from typer.testing import CliRunner

    from dicomlake.cli.main import app

    result = CliRunner().invoke(app, list(args))
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PACS@127.0.0.1:104", Peer("PACS", "127.0.0.1", 104)),
        ("MY AE@pacs.example:11112", Peer("MY AE", "pacs.example", 11112)),
        ("RIS@[::1]:4242", Peer("RIS", "::1", 4242)),
    ],
)
def test_peer_parses_ae_host_port(text: str, expected: Peer) -> None:
    assert Peer.parse(text) == expected


@pytest.mark.parametrize(
    "text", ["PACS", "PACS@host", "@host:104", "A" * 17 + "@h:104", "PA\\CS@h:104", "PACS@h:0", "PACS@h:70000"]
)
def test_peer_rejects_malformed_values(text: str) -> None:
    with pytest.raises(WriteError, match="--send"):
        Peer.parse(text)


def test_query_identifier_has_the_matching_keys_and_every_return_key() -> None:
    ds = WorklistQuery(accession_number="A1", scheduled_date="20260101-20260131", modality="xc").identifier()
    assert ds.AccessionNumber == "A1" and ds.PatientID == "" and ds.StudyInstanceUID == ""
    sps = ds.ScheduledProcedureStepSequence[0]
    assert (sps.Modality, sps.ScheduledProcedureStepStartDate, sps.ScheduledStationAETitle) == (
        "XC",
        "20260101-20260131",
        "",
    )
    with pytest.raises(WriteError, match="--scheduled-date"):
        WorklistQuery(scheduled_date="Jan 1").identifier()


def test_choose_needs_exactly_one_or_a_valid_number() -> None:
    query = WorklistQuery(patient_id="P1")
    with pytest.raises(WriteError, match="no scheduled procedure step matches patient ID P1"):
        choose([], query, None)
    items = ["a", "b"]
    with pytest.raises(WriteError, match=r"2 scheduled procedure steps match.*--choose N"):
        choose(items, query, None)  # type: ignore[arg-type]
    with pytest.raises(WriteError, match="--choose 3: there are 2"):
        choose(items, query, 3)  # type: ignore[arg-type]
    assert choose(items, query, 2) == "b"  # type: ignore[arg-type]


def test_stow_auth_values() -> None:
    assert _auth_header("bearer:abc") == {"Authorization": "Bearer abc"}
    assert _auth_header("basic:u:p") == {"Authorization": "Basic dTpw"}
    with pytest.raises(WriteError, match="--stow-auth"):
        _auth_header("token")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--choose", "2"], "--scheduled-*/--choose query a worklist"),
        (["--send", "PACS"], "--send 'PACS': write AE@HOST:PORT"),
        (["--send", "A@h:1", "--stow", "http://h/dicom-web"], "give --send or --stow, not both"),
        (["--worklist", "RIS@h:104", "--patient-name", "X^Y"], "--patient-name with --worklist"),
        (["--worklist", "RIS"], "--worklist 'RIS': write AE@HOST:PORT"),
    ],
)
def test_wrap_usage_errors_exit_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    photo = fw.phone_photo_jpeg(tmp_path)
    proc = _run("wrap", str(photo), "--out", str(tmp_path / "out"), *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_send_usage_errors(tmp_path: Path) -> None:
    proc = _run("send", str(tmp_path / "missing.dcm"), "--to", "PACS@127.0.0.1:104")
    assert proc.returncode == 2 and "no such file" in proc.stderr
    proc = _run("send", str(tmp_path / "missing.dcm"))
    assert proc.returncode == 2 and "give one of --to" in proc.stderr


def _item(**values: str) -> WorklistItem:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.StudyInstanceUID = "Doe^Jane", "P1", "1.2.3.4"
    ds.AccessionNumber, ds.RequestedProcedureID = "A1", "RP1"
    sps = Dataset()
    sps.ScheduledProcedureStepID, sps.Modality = "SPS1", "XC"
    ds.ScheduledProcedureStepSequence = Sequence([sps])
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return WorklistItem.from_dataset(ds)


def test_summary_escapes_control_characters_from_the_provider() -> None:
    line = _item(AccessionNumber="A1\x1b[2J", PatientID="P\r1").summary()
    assert "\x1b" not in line and "\r" not in line
    assert "A1\\x1b[2J" in line and "P\\r1" in line


@pytest.mark.filterwarnings("ignore:The value length:UserWarning")  # the provider's over-long value
def test_a_long_requested_procedure_description_still_makes_a_valid_study_description() -> None:
    study = _item(RequestedProcedureDescription="x" * 100).patient_study()
    assert study.study_description == "x" * 64
    assert study.template is not None
    assert study.template.RequestAttributesSequence[0].RequestedProcedureDescription == "x" * 64


def test_worklist_identity_flags_nothing_when_the_provider_is_down() -> None:
    import socket

    from dicomlake.curate.rules import Check, Severity
    from dicomlake.curate.worklist import find_mismatches

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    check = Check("worklist-identity", True, Severity.ERROR, {"provider": f"RIS@127.0.0.1:{port}"})
    notes: list[str] = []
    rows = [{"SOPInstanceUID": "1.2.3", "AccessionNumber": "A1", "PatientID": "P9"}]
    assert find_mismatches(rows, check, notes) == []
    assert len(notes) == 1 and "cannot connect" in notes[0] and "nothing flagged" in notes[0]
