"""A real Orthanc PACS for tests: temporary config and storage, reachable from loopback only.

Orthanc cannot bind its DICOM port to 127.0.0.1 alone, so it runs inside its own
network namespace, where the only interface is ``lo``. Nothing outside the namespace can
reach it; clients join the namespace:

- subprocesses (``storescu``, ``findscu``, ``movescu``, ``curl``) through
  :meth:`Orthanc.run` / :meth:`Orthanc.command`, which prefix ``nsenter --net=...``;
- Python code through :meth:`Orthanc.in_netns`, a context manager that moves the
  *calling thread* into the namespace (``setns(2)``) and back. Sockets keep the
  namespace they were created in, so a pynetdicom AE or SCP started inside the block
  stays reachable to Orthanc (for C-MOVE destinations) after the block ends;
- HTTP (REST, DICOMweb) through :meth:`Orthanc.get` / :meth:`post` / :meth:`delete`.

Usage::

    from tests.integration.orthanc import Orthanc, require_orthanc

    @pytest.fixture
    def orthanc(tmp_path):
        require_orthanc()
        with Orthanc(tmp_path / "orthanc", aet="PACS", dicomweb=True,
                     modalities={"LAKE": ("LAKE", "127.0.0.1", 11113)}) as pacs:
            yield pacs

    pacs.store(["a.dcm"])            # C-STORE with dcmtk storescu
    pacs.get("/instances")           # REST oracle
    pacs.get(f"/instances/{i}/tags?simplify")

Needs root (``unshare -n`` and ``setns``). Without root it falls back to a user
namespace (``unshare -r -n``); then subprocess clients and HTTP work, but
:meth:`in_netns` raises (an unprivileged process cannot join another user's namespace).
When Orthanc or the namespace tools are missing, :func:`require_orthanc` skips the test,
and fails it when ``CI=true``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

ORTHANC_CANDIDATES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc", "Orthanc")
"""Where Debian's ``orthanc`` package puts the server. Default: ``/usr/sbin/Orthanc``."""
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
"""Debian ``orthanc-dicomweb`` plugin library."""
WORKLISTS_PLUGIN = "/usr/share/orthanc/plugins/libModalityWorklists.so"
"""Sample ModalityWorklists plugin shipped by Debian ``orthanc``: serves the ``*.wl`` files of a folder."""
CLONE_NEWNET = 0x40000000

T = TypeVar("T")


def find_orthanc() -> str | None:
    """Return the Orthanc executable or ``None`` when it is not installed."""
    for candidate in ORTHANC_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def _missing() -> list[str]:
    missing = []
    if find_orthanc() is None:
        missing.append("Orthanc (Debian package orthanc)")
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (Debian packages util-linux / iproute2)")
    return missing


def require_orthanc(*, dicomweb: bool = False, tools: Sequence[str] = ()) -> str:
    """Return the Orthanc executable; skip the test (fail when ``CI=true``) if anything is missing.

    Parameters
    ----------
    dicomweb
        Also require the DICOMweb plugin (Debian ``orthanc-dicomweb``).
    tools
        Further client executables the test runs, e.g. ``("storescu",)``.
    """
    missing = _missing()
    if dicomweb and not Path(DICOMWEB_PLUGIN).exists():
        missing.append(f"{DICOMWEB_PLUGIN} (Debian package orthanc-dicomweb)")
    missing += [f"{tool} (dcmtk)" for tool in tools if shutil.which(tool) is None]
    if missing:
        message = "cannot start Orthanc: missing " + ", ".join(missing) + " (run make deb)"
        missing(message)
    exe = find_orthanc()
    assert exe is not None
    return exe


# Transfer Syntax UID → the storescu option proposing it (dcmtk 3.6.7 storescu --help).
_STORESCU_TS = {
    "1.2.840.10008.1.2": "",
    "1.2.840.10008.1.2.1": "",
    "1.2.840.10008.1.2.2": "",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.1.99": "-xd",
}


def _storescu_ts_option(path: str | os.PathLike[str]) -> str:
    import pydicom

    meta = pydicom.filereader.read_file_meta_info(path)
    uid = str(meta.TransferSyntaxUID)
    if uid not in _STORESCU_TS:
        raise OrthancError(f"{path}: storescu cannot propose transfer syntax {uid}; send it another way")
    return _STORESCU_TS[uid]


class OrthancError(RuntimeError):
    """Orthanc did not start, or a REST call failed; the message holds the log tail."""


class Orthanc:
    """One Orthanc process in a private network namespace with its own config and storage.

    Parameters
    ----------
    workdir
        Empty or new directory for ``orthanc.json``, the storage, the index and the log.
    aet
        Orthanc's DICOM AE title (``DicomAet``).
    dicom_port, http_port
        Ports inside the namespace; defaults are free since the namespace is private.
    dicomweb
        Load the DICOMweb plugin, served under ``/dicom-web/``.
    modalities
        Known DICOM peers: name → ``(AE title, host, port)`` (``DicomModalities``),
        e.g. a test SCP as a C-MOVE destination.
    check_called_aet
        Refuse associations whose called AE title is not ``aet``.
    http_headers
        Headers sent with every REST call of this helper, e.g. ``Authorization`` when
        ``extra_config`` turns on Orthanc's HTTP authentication.
    worklists
        A folder of ``*.wl`` worklist files: load the ModalityWorklists plugin, which
        answers Modality Worklist C-FIND from them (``None``: no worklist service).
    extra_config
        More Orthanc configuration keys, merged last.
    startup_timeout
        Seconds to wait for the REST API to answer.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        aet: str = "ORTHANC",
        dicom_port: int = 4242,
        http_port: int = 8042,
        dicomweb: bool = False,
        modalities: Mapping[str, tuple[str, str, int]] | None = None,
        check_called_aet: bool = True,
        extra_config: Mapping[str, Any] | None = None,
        startup_timeout: float = 30.0,
        worklists: str | os.PathLike[str] | None = None,
        http_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.aet = aet
        self.dicom_port = dicom_port
        self.http_port = http_port
        self.dicomweb = dicomweb
        self.modalities = dict(modalities or {})
        self.check_called_aet = check_called_aet
        self.extra_config = dict(extra_config or {})
        self.worklists = Path(worklists) if worklists is not None else None
        self.http_headers = dict(http_headers or {})
        self.startup_timeout = startup_timeout
        self.host = "127.0.0.1"
        self.process: subprocess.Popen[bytes] | None = None
        self.rootless = os.geteuid() != 0
        self._log_file: Any = None

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        """The generated ``orthanc.json``."""
        return self.workdir / "orthanc.json"

    @property
    def log_path(self) -> Path:
        """Orthanc's stdout and stderr."""
        return self.workdir / "orthanc.log"

    @property
    def base_url(self) -> str:
        """REST root, valid inside the namespace."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """DICOMweb root (with ``dicomweb=True``)."""
        return f"{self.base_url}/dicom-web"

    def config(self) -> dict[str, Any]:
        """The Orthanc configuration this instance is started with."""
        cfg: dict[str, Any] = {
            "Name": f"dicomlake-test-{self.aet}",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": self.check_called_aet,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "StorageCompression": False,
            "StableAge": 1,
            "Plugins": [DICOMWEB_PLUGIN] if self.dicomweb else [],
        }
        if self.dicomweb:
            cfg["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "Host": self.host}
        if self.worklists is not None:
            cfg["Plugins"] = [*cfg["Plugins"], WORKLISTS_PLUGIN]
            cfg["Worklists"] = {"Enable": True, "Database": str(self.worklists), "FilterIssuerAet": False}
        cfg.update(self.extra_config)
        return cfg

    def start(self) -> Orthanc:
        """Write the config, start Orthanc in a new network namespace, wait until it answers."""
        exe = require_orthanc(dicomweb=self.dicomweb)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        unshare = ["unshare", "-r", "-n"] if self.rootless else ["unshare", "-n"]
        # `exec` keeps one PID: the namespace is /proc/<pid>/ns/net of Orthanc itself.
        script = f'ip link set lo up && exec "{exe}" "{self.config_path}"'
        self._log_file = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [*unshare, "sh", "-c", script],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise OrthancError(f"Orthanc exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system", timeout=1.0)
                return self
            except (OSError, OrthancError):
                time.sleep(0.2)
        self.stop()
        raise OrthancError(f"Orthanc did not answer within {self.startup_timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL after 10 s); the namespace goes with it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of Orthanc's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- the namespace -----------------------------------------------------------------

    @property
    def pid(self) -> int:
        """PID of the Orthanc process (owner of the namespace)."""
        if self.process is None:
            raise OrthancError("Orthanc is not running; call start() or use it as a context manager")
        return self.process.pid

    @property
    def netns_path(self) -> str:
        """``/proc/<pid>/ns/net``: pass to ``nsenter --net=`` or ``setns``."""
        return f"/proc/{self.pid}/ns/net"

    def command(self, argv: Sequence[str]) -> list[str]:
        """Return *argv* prefixed so that it runs inside Orthanc's network namespace."""
        if self.rootless:
            return ["nsenter", "-t", str(self.pid), "-U", "-n", "--preserve-credentials", *argv]
        return ["nsenter", f"--net={self.netns_path}", *argv]

    def run(
        self, argv: Sequence[str], *, timeout: float = 120.0, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run a client program inside the namespace and return its result (text output)."""
        return subprocess.run(self.command(argv), capture_output=True, text=True, timeout=timeout, check=check)

    @contextlib.contextmanager
    def in_netns(self) -> Iterator[None]:
        """Move the calling thread into Orthanc's network namespace for the ``with`` block.

        Sockets created inside stay in the namespace afterwards. Needs root.
        """
        if self.rootless:
            raise OrthancError("in_netns() needs root; use run() with a subprocess client instead")
        libc = ctypes.CDLL(None, use_errno=True)
        with open("/proc/thread-self/ns/net", "rb") as home, open(self.netns_path, "rb") as target:
            if libc.setns(target.fileno(), CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OrthancError(f"setns into {self.netns_path} failed: {os.strerror(err)}")
            try:
                yield
            finally:
                if libc.setns(home.fileno(), CLONE_NEWNET) != 0:  # pragma: no cover
                    err = ctypes.get_errno()
                    raise OrthancError(f"setns back to the test's namespace failed: {os.strerror(err)}")

    def call_in_netns(self, fn: Callable[[], T]) -> T:
        """Run *fn* in a fresh thread inside the namespace and return its result."""
        result: list[T] = []
        error: list[BaseException] = []

        def target() -> None:
            try:
                with self.in_netns():
                    result.append(fn())
            except BaseException as exc:
                error.append(exc)

        thread = threading.Thread(target=target, name="orthanc-netns")
        thread.start()
        thread.join()
        if error:
            raise error[0]
        return result[0]

    # -- HTTP --------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, bytes]:
        """Send an HTTP request to Orthanc inside the namespace; return ``(status, body)``."""
        url = self.base_url + path
        headers = {**self.http_headers, **(headers or {})}

        def send() -> tuple[int, bytes]:
            req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
            try:
                with urllib.request.urlopen(req, timeout=timeout) as resp:
                    return resp.status, resp.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()

        if not self.rootless:
            return self.call_in_netns(send)
        return self._request_via_subprocess(method, url, body, headers or {}, timeout)

    def _request_via_subprocess(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str], timeout: float
    ) -> tuple[int, bytes]:
        code = (
            "import sys,json,urllib.request,urllib.error\n"
            "a=json.loads(sys.argv[1]);d=sys.stdin.buffer.read() or None\n"
            "r=urllib.request.Request(a['url'],data=d,method=a['method'],headers=a['headers'])\n"
            "try:\n s=urllib.request.urlopen(r,timeout=a['timeout']);c,b=s.status,s.read()\n"
            "except urllib.error.HTTPError as e:\n c,b=e.code,e.read()\n"
            "sys.stdout.buffer.write(str(c).encode()+b'\\n'+b)\n"
        )
        args = json.dumps({"url": url, "method": method, "headers": dict(headers), "timeout": timeout})
        proc = subprocess.run(
            self.command(["python3", "-c", code, args]),
            input=body or b"",
            capture_output=True,
            timeout=timeout + 10,
            check=False,
        )
        if proc.returncode != 0:
            raise OSError(proc.stderr.decode(errors="replace"))
        status, _, payload = proc.stdout.partition(b"\n")
        return int(status), payload

    def get(self, path: str, *, timeout: float = 30.0) -> Any:
        """GET a REST path and return the decoded JSON; raise :class:`OrthancError` if not 2xx."""
        status, payload = self.request("GET", path, timeout=timeout)
        if not 200 <= status < 300:
            raise OrthancError(f"GET {path} → HTTP {status}: {payload[:500]!r}")
        return json.loads(payload) if payload else None

    def get_bytes(self, path: str, *, accept: str | None = None) -> bytes:
        """GET a REST path and return the raw body (e.g. ``/instances/{id}/file``)."""
        status, payload = self.request("GET", path, headers={"Accept": accept} if accept else None)
        if not 200 <= status < 300:
            raise OrthancError(f"GET {path} → HTTP {status}: {payload[:500]!r}")
        return payload

    def post(self, path: str, body: bytes | str | Any = b"", *, content_type: str | None = None) -> Any:
        """POST to a REST path (dicts are sent as JSON) and return the decoded JSON answer."""
        if isinstance(body, (dict, list)):
            data, content_type = json.dumps(body).encode(), content_type or "application/json"
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = body
        headers = {"Content-Type": content_type} if content_type else None
        status, payload = self.request("POST", path, data, headers=headers)
        if not 200 <= status < 300:
            raise OrthancError(f"POST {path} → HTTP {status}: {payload[:500]!r}")
        try:
            return json.loads(payload) if payload else None
        except ValueError:
            return payload

    def delete(self, path: str) -> None:
        """DELETE a REST resource."""
        status, payload = self.request("DELETE", path)
        if not 200 <= status < 300:
            raise OrthancError(f"DELETE {path} → HTTP {status}: {payload[:500]!r}")

    # -- DICOM conveniences --------------------------------------------------------------

    def instances(self) -> list[str]:
        """Orthanc IDs of every stored instance (``GET /instances``)."""
        return list(self.get("/instances"))

    def instance_tags(self, orthanc_id: str) -> dict[str, Any]:
        """``GET /instances/{id}/tags?simplify``: keyword → value."""
        return dict(self.get(f"/instances/{orthanc_id}/tags?simplify"))

    def find_instance(self, sop_instance_uid: str) -> str | None:
        """Orthanc ID of the instance with this SOP Instance UID, or ``None``."""
        found = self.post("/tools/lookup", sop_instance_uid, content_type="text/plain")
        for item in found or []:
            if item.get("Type") == "Instance":
                return str(item["ID"])
        return None

    def store(
        self,
        files: Sequence[str | os.PathLike[str]],
        *,
        calling_aet: str = "DICOMLAKE",
        extra_args: Sequence[str] = (),
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """C-STORE *files* to Orthanc with dcmtk ``storescu`` run inside the namespace.

        ``storescu`` proposes one family of transfer syntaxes per run, so files are sent
        in groups by their own transfer syntax (``-xy`` for JPEG baseline, ``-xs`` for
        JPEG lossless SV1, …); compressed objects go over the wire as they are. The
        result merges the runs: ``returncode`` is the first non-zero one.
        """
        groups: dict[str, list[str]] = {}
        for f in files:
            groups.setdefault(_storescu_ts_option(f), []).append(os.fspath(f))
        returncode, stdout, stderr = 0, "", ""
        for option, group in groups.items():
            argv = [
                "storescu",
                "-aet",
                calling_aet,
                "-aec",
                self.aet,
                *([option] if option else []),
                *extra_args,
                self.host,
                str(self.dicom_port),
                *group,
            ]
            proc = self.run(argv, timeout=timeout)
            returncode = returncode or proc.returncode
            stdout += proc.stdout
            stderr += proc.stderr
        return subprocess.CompletedProcess(["storescu"], returncode, stdout, stderr)

    def echo(self, *, calling_aet: str = "DICOMLAKE") -> bool:
        """C-ECHO with dcmtk ``echoscu``; ``True`` when Orthanc answered with Success."""
        proc = self.run(["echoscu", "-aet", calling_aet, "-aec", self.aet, self.host, str(self.dicom_port)])
        return proc.returncode == 0


@contextlib.contextmanager
def running_orthanc(workdir: str | os.PathLike[str], **kwargs: Any) -> Iterator[Orthanc]:
    """Context manager form of :class:`Orthanc` (requires it, starts it, always stops it)."""
    require_orthanc(dicomweb=bool(kwargs.get("dicomweb")))
    pacs = Orthanc(workdir, **kwargs)
    pacs.start()
    try:
        yield pacs
    finally:
        pacs.stop()
