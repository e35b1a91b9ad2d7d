"""A parsed header as a pydicom Dataset without parsing the bytes a second time.

The reader has already split the header into elements; pydicom's own reader would walk
the same bytes again in Python (for an RDSR of 20,000 content items that is most of the
cost of extracting its dose). Raw elements are handed to pydicom as ``RawDataElement``s,
which pydicom converts lazily, only when an attribute is read.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from dicomlake.dicom.reader import Element, Header


def _new_dataset(template: dict[str, object]) -> Dataset:
    """A Dataset made from a template's attributes: pydicom's ``__init__`` routes a dozen
    attributes through its ``__setattr__``, which costs more than the rest of an SR item."""
    ds = Dataset.__new__(Dataset)
    d = ds.__dict__
    d.update(template)
    d["_dict"] = {}
    d["_private_blocks"] = {}
    d["_pixel_array_opts"] = {"use_pdh": False}
    d["_pixel_id"] = {}
    return ds


def _dataset(elements: Seq[Element], template: dict[str, object], implicit: bool, little: bool) -> Dataset:
    ds = _new_dataset(template)
    raw = ds._dict  # pydicom's own store; RawDataElements are converted on first access
    for tag, vr, value, length in elements:
        if vr == "SQ":
            items = [_dataset(item, template, implicit, little) for item in (value or [])]
            raw[tag] = DataElement(tag, "SQ", Sequence(items))  # type: ignore[assignment]
        elif value is None:
            continue  # bulk data that was not read
        else:
            raw[tag] = RawDataElement(tag, vr, length, value, 0, implicit, little)  # type: ignore[assignment]
    return ds


def to_pydicom(header: Header, omit: frozenset[int] = frozenset()) -> Dataset:
    """The header's dataset (file meta attached) as a pydicom Dataset; bulk data left out,
    and the top-level elements whose tags are in ``omit`` (an SR's Content Sequence, when
    its tree is read from the elements themselves)."""
    charset = None
    for tag, _vr, value, _len in header.elements:
        if tag == 0x00080005 and isinstance(value, bytes):
            text = value.decode("ascii", "replace").strip(" \x00")
            charset = text.split("\\") if "\\" in text else text
            break
        if tag > 0x00080005:
            break
    try:
        encodings = convert_encodings(charset or "ISO_IR 6")
    except Exception:
        encodings = ["latin_1"]
    implicit, little = not header.explicit, header.little_endian
    proto = Dataset(parent_encoding=encodings)  # nested items inherit the top-level character set
    proto.set_original_encoding(implicit, little, charset)
    elements = [e for e in header.elements if e[0] not in omit] if omit else header.elements
    ds = _dataset(elements, dict(proto.__dict__), implicit, little)
    if header.meta:
        meta = FileMetaDataset()
        for tag, vr, value, length in header.meta:
            if isinstance(value, bytes):
                meta._dict[tag] = RawDataElement(tag, vr, length, value, 0, False, True)  # type: ignore[assignment]
        ds.file_meta = meta
    return ds
