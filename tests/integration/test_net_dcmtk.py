"""`dicomlake serve` against dcmtk: storescu, echoscu, refused AE titles, TLS, reading while receiving."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.integration.netpeers import Served, acknowledged, dicomlake, free_port, lake_uids, make_instances

pytestmark = [pytest.mark.integration]


def _storescu(
    port: int, files: list[str], *extra: str, aet: str = "STORESCU", aec: str = "DICOMLAKE", timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["storescu", "-v", "-nh", "-aet", aet, "-aec", aec, *extra, "127.0.0.1", str(port), *files],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TCP_NODELAY": "1"},
    )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    require_tool("storescu")
    with Served(tmp_path / "lake", free_port(), "--allow-aet", "STORESCU", "--allow-aet", "ECHOSCU") as s:
        yield s


def test_storescu_sends_the_corpus_and_every_acknowledged_instance_is_in_the_lake(
    served: Served, sample_sources: list[Path]
) -> None:
    import pydicom

    from tests.integration.orthanc import _storescu_ts_option

    groups: dict[str, list[str]] = {}
    for src in sample_sources:
        for dirpath, _, names in os.walk(src):
            for name in names:
                p = os.path.join(dirpath, name)
                with open(p, "rb") as fh:
                    if fh.read(132)[128:132] != b"DICM":
                        continue
                try:
                    groups.setdefault(_storescu_ts_option(p), []).append(p)
                except Exception:
                    continue
    acked: list[str] = []
    for option, files in groups.items():
        proc = _storescu(served.port, files, *([option] if option else []))
        ok, _bad = acknowledged(proc.stdout + proc.stderr)
        acked += ok
    assert len(acked) > 150
    uids = set()
    for p in acked:
        try:
            uids.add(str(pydicom.dcmread(p, stop_before_pixels=True, force=True).SOPInstanceUID))
        except Exception:
            continue
    # reading while receiving: the service answers for the lake it holds
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = dicomlake("sql", "SELECT SOPInstanceUID FROM instances", "--lake", str(served.lake), "--format", "csv")
        assert out.returncode == 0, out.stderr
        got = set(out.stdout.split()[1:])
        if uids <= got:
            break
        time.sleep(0.5)
    assert uids <= got, sorted(uids - got)[:5]
    assert served.stop() == 0
    assert not (served.lake / "service.json").exists()
    in_lake = lake_uids(served.lake)
    assert len(in_lake) == len(set(in_lake))
    print(f"storescu: {len(acked)} files acknowledged, {len(uids)} distinct SOP Instance UIDs, all in the lake")


def test_echoscu_succeeds(served: Served) -> None:
    require_tool("echoscu")
    proc = subprocess.run(
        ["echoscu", "-aet", "ECHOSCU", "-aec", "DICOMLAKE", "127.0.0.1", str(served.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr


def test_store_scp_rejects_unknown_calling_aet(served: Served) -> None:
    require_tool("echoscu")
    proc = subprocess.run(
        ["echoscu", "-v", "-aet", "STRANGER", "-aec", "DICOMLAKE", "127.0.0.1", str(served.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "Rejected Permanent" in text and "Calling AE Title Not Recognized" in text, text


def test_store_scp_rejects_wrong_called_aet(served: Served) -> None:
    proc = subprocess.run(
        ["echoscu", "-v", "-aet", "ECHOSCU", "-aec", "NOTUS", "127.0.0.1", str(served.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0 and "Called AE Title Not Recognized" in proc.stdout + proc.stderr


def test_reading_while_receiving_sees_new_instances_within_seconds(tmp_path: Path) -> None:
    files = [str(p) for p in make_instances(tmp_path / "in", 40)]
    with Served(tmp_path / "lake", free_port()) as s:
        before = dicomlake("sql", "SELECT count(*) AS n FROM instances", "--lake", str(s.lake), "--format", "csv")
        assert before.returncode == 0 and before.stdout.split()[1] == "0"
        t0 = time.monotonic()
        proc = _storescu(s.port, files)
        assert proc.returncode == 0
        while True:
            q = dicomlake("query", "--where", "Modality = CT", "--lake", str(s.lake), "--format", "csv")
            assert q.returncode == 0, q.stderr
            if len(q.stdout.strip().splitlines()) - 1 == 40:
                break
            assert time.monotonic() - t0 < 15, "instances not visible within 15 s"
            time.sleep(0.2)
        audited = dicomlake("audit", "quality", "--out", str(tmp_path / "q.html"), "--lake", str(s.lake), timeout=120)
        assert audited.returncode in (0, 1), audited.stderr[-2000:]
        assert (tmp_path / "q.html").exists()
        exported = dicomlake("export", "--out", str(tmp_path / "x"), "--lake", str(s.lake))
        assert exported.returncode == 0, exported.stderr
        assert (tmp_path / "x" / "instances.parquet").exists()


def _tls_files(folder: Path) -> tuple[Path, Path, Path, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (cryptography)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("test CA"))
        .issuer_name(name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, serial: int) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        return (
            cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )

    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    scert, skey = leaf("dicomlake", 2)
    ccert, ckey = leaf("storescu", 3)
    for n, b in (("server.pem", scert), ("server.key", skey), ("client.pem", ccert), ("client.key", ckey)):
        (folder / n).write_bytes(b)
    return folder / "ca.pem", folder / "server.pem", folder / "server.key", folder / "client.pem"


def test_tls_association_works_and_plain_one_to_the_tls_port_fails(tmp_path: Path) -> None:
    require_tool("echoscu")
    ca, cert, key, client = _tls_files(tmp_path / "tls")
    with Served(
        tmp_path / "lake",
        free_port(),
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--tls-ca",
        str(ca),
        "--require-client-cert",
    ) as s:
        tls = subprocess.run(
            [
                "echoscu",
                "+tls",
                str(tmp_path / "tls" / "client.key"),
                str(client),
                "+cf",
                str(ca),
                "-aec",
                "DICOMLAKE",
                "127.0.0.1",
                str(s.port),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert tls.returncode == 0, tls.stdout + tls.stderr
        files = [str(p) for p in make_instances(tmp_path / "in", 3)]
        sent = _storescu(s.port, files, "+tls", str(tmp_path / "tls" / "client.key"), str(client), "+cf", str(ca))
        assert sent.returncode == 0 and len(acknowledged(sent.stdout + sent.stderr)[0]) == 3
        plain = subprocess.run(
            ["echoscu", "-aec", "DICOMLAKE", "127.0.0.1", str(s.port)], capture_output=True, text=True, timeout=30
        )
        assert plain.returncode != 0
        anonymous = subprocess.run(
            ["echoscu", "+tla", "+cf", str(ca), "-aec", "DICOMLAKE", "127.0.0.1", str(s.port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert anonymous.returncode != 0, "a TLS client without a certificate must be refused"
