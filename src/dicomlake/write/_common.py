"""Shared pieces of the writers: identity, timestamps, file meta, strict atomic writes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pydicom
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, generate_uid

from dicomlake import __version__
from dicomlake.errors import WriteError

MANUFACTURER = "dicomlake"
"""Manufacturer (0008,0070) of the equipment that writes our objects."""
IMPLEMENTATION_VERSION_NAME = f"DICOMLAKE_{__version__}"[:16]
"""Implementation Version Name (0002,0013), at most 16 characters."""
MODIFYING_SYSTEM = "dicomlake"
"""Modifying System (0400,0563) of corrections."""


def new_uid() -> UID:
    """A new UID under pydicom's root (``1.2.826.0.1.3680043.8.498.``)."""
    return generate_uid()


def now() -> datetime:
    """Local time with its UTC offset, to the microsecond."""
    return datetime.now().astimezone()


def da(moment: datetime) -> str:
    """DICOM DA (YYYYMMDD)."""
    return moment.strftime("%Y%m%d")


def tm(moment: datetime) -> str:
    """DICOM TM (HHMMSS.FFFFFF)."""
    return moment.strftime("%H%M%S.%f")


def dt(moment: datetime) -> str:
    """DICOM DT with the UTC offset when the time is aware (YYYYMMDDHHMMSS.FFFFFF&ZZXX)."""
    text = moment.strftime("%Y%m%d%H%M%S.%f")
    if moment.utcoffset() is not None:
        text += moment.strftime("%z")
    return text


def tz_offset(moment: datetime) -> str | None:
    """Timezone Offset From UTC (0008,0201) as ``&ZZXX`` or ``None`` for naive times."""
    return moment.strftime("%z") or None


def needs_unicode(values: Iterable[object]) -> bool:
    """``True`` when any text value falls outside the default repertoire (ASCII)."""
    return any(isinstance(value, str) and not value.isascii() for value in values)


def set_file_meta(ds: Dataset, transfer_syntax_uid: str) -> None:
    """Give *ds* a fresh File Meta Information group (PS3.10 7.1) for *transfer_syntax_uid*."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax_uid)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta


@dataclass(frozen=True)
class WrittenFile:
    """One DICOM file a writer produced."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    source: Path | None = None
    """The input it came from (``None`` for objects built in memory)."""
    notes: tuple[str, ...] = ()
    """What the writer decided on the user's behalf (conversions, assumptions)."""


@dataclass
class WriteReport:
    """What a batch write did: files written and inputs that failed with the reason."""

    written: list[WrittenFile] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    """``(input, message)`` pairs."""

    @property
    def exit_code(self) -> int:
        """0 when everything was written, 1 when any input failed."""
        return 1 if self.failed else 0


_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}


def _strict_dataset_check(ds: Dataset, where: str) -> None:
    """Re-validate every top-level value against its VR (pydicom RAISE mode)."""
    problems: list[str] = []
    with _validation(pydicom_config.RAISE):
        for elem in ds.iterall():
            if elem.VR in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN") or elem.value is None:
                continue
            try:
                values = (
                    elem.value if isinstance(elem.value, (list, tuple, pydicom.multival.MultiValue)) else [elem.value]
                )
                for value in values:
                    if elem.VR in ("IS", "DS", "PN") or (elem.VR in _TEXT_VRS and not isinstance(value, (str, bytes))):
                        value = str(value)
                    pydicom.valuerep.validate_value(elem.VR, value, pydicom_config.RAISE)
            except (ValueError, TypeError) as exc:
                problems.append(f"{elem.keyword or elem.tag} {elem.VR} {elem.value!r}: {exc}")
    if problems:
        raise WriteError(f"{where}: refusing to write invalid values: " + "; ".join(problems))


@contextlib.contextmanager
def _validation(mode: int):  # type: ignore[no-untyped-def]
    old_read, old_write = (
        pydicom_config.settings.reading_validation_mode,
        pydicom_config.settings.writing_validation_mode,
    )
    pydicom_config.settings.writing_validation_mode = mode
    try:
        yield
    finally:
        pydicom_config.settings.reading_validation_mode = old_read
        pydicom_config.settings.writing_validation_mode = old_write


def encode(ds: Dataset, where: str) -> bytes:
    """Encode *ds* as a Part 10 file in memory, validating values strictly."""
    import io

    _strict_dataset_check(ds, where)
    buf = io.BytesIO()
    with _validation(pydicom_config.RAISE):
        try:
            ds.save_as(buf, enforce_file_format=True)
        except Exception as exc:  # pydicom raises ValueError/TypeError/struct.error
            raise WriteError(f"{where}: could not encode the dataset: {exc}") from exc
    return buf.getvalue()


def write_atomically(targets: Sequence[tuple[Path, bytes]], *, overwrite: bool = False) -> None:
    """Write all *targets* or none: temp files in the target directory, then ``os.replace``.

    Raises :class:`WriteError` when a target exists and *overwrite* is false; nothing is
    written then.
    """
    if not overwrite:
        existing = [str(p) for p, _ in targets if p.exists()]
        if existing:
            raise WriteError(
                f"{', '.join(existing)} already exist(s); choose another --out directory or pass --overwrite"
            )
    temps: list[tuple[Path, Path]] = []
    try:
        for path, data in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temps.append((Path(tmp_name), path))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        for tmp, path in temps:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise
