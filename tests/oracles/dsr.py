"""An outside reading of Radiation Dose SRs: dcmtk's ``dsr2xml`` parsed with ``xml.etree``.

This oracle shares no code with :mod:`dicomlake.extract` (no pydicom, no dose_codes.toml):
dcmtk decodes the file, and the small walker below finds irradiation event containers
and accumulated containers by concept code value and collects every NUM under them with
its unit. Unit conversion uses its own tiny UCUM reader (prefix × atom[^exponent] joined
by "."), not dicomlake's table.

``dsr2xml`` flags used (dcmtk 3.6.x):

- ``-Er -Ev -Ec -Ee -Ei``: accept unknown relationships and invalid values, ignore
  relationship constraints and item errors, skip only the invalid items themselves;
  vendor SRs need all of these (Eurocolumbus omits RelationshipType, Spectrum Dynamics
  writes a "PERSON NAME" value type).
- ``+Ca latin-1``: read text as Latin-1 when Specific Character Set is absent
  (Siemens_Flash-QA-DS has non-ASCII bytes and no declaration).
- ``+Ec +Er +Ev``: write code value/scheme, relationship and value type as attributes.

Known limit: dsr2xml writes only the first value of a multi-valued NumericValue (a
violation of the standard that Eurocolumbus commits for per-pulse kVp and mA); it says
so with the warning "NumericValue (0040,a30a) VM != 1", which :attr:`DsrReport.truncated`
records so that a test does not compare those values.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

DSR2XML_FLAGS = ("-Er", "-Ev", "-Ec", "-Ee", "-Ei", "+Ca", "latin-1", "+Ec", "+Er", "+Ev")

EVENT_CONTAINERS = {"113706", "113819", "113502"}
"""Irradiation Event X-Ray Data, CT Acquisition, Radiopharmaceutical Administration."""
ACCUMULATED_CONTAINERS = {"113702", "113811"}
"""Accumulated X-Ray Dose Data, CT Accumulated Dose Data."""


@dataclass
class Num:
    """One NUM content item: its concept code value, values and unit code."""

    code: str
    scheme: str
    value: float
    unit: str
    laterality: str | None = None


@dataclass
class Container:
    """An event or accumulated container with every NUM below it (any depth)."""

    code: str
    uid: str | None
    nums: list[Num] = field(default_factory=list)

    def values(self, code: str) -> list[Num]:
        return [n for n in self.nums if n.code == code]


@dataclass
class DsrReport:
    """What dsr2xml made of one file."""

    path: Path
    root: str | None
    events: list[Container]
    accumulated: list[Container]
    truncated: bool
    """dsr2xml warned that a NumericValue had VM > 1 and kept only its first value."""
    stderr: str


def find_dsr2xml() -> str | None:
    """Path of ``dsr2xml`` or ``None`` when dcmtk is not installed."""
    return shutil.which("dsr2xml")


def read(path: Path, exe: str = "dsr2xml") -> DsrReport:
    """Run dsr2xml on ``path`` and walk its XML."""
    proc = subprocess.run([exe, *DSR2XML_FLAGS, str(path)], capture_output=True, timeout=120, check=False)
    stderr = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise RuntimeError(f"dsr2xml failed on {path} ({proc.returncode}): {stderr[-2000:]}")
    doc = ET.fromstring(proc.stdout)
    content = doc.find("document/content")
    root_item = content.find("item") if content is not None else None
    if root_item is None:  # dsr2xml puts the root under <template> with +Wt only
        root_item = doc.find(".//item")
    events: list[Container] = []
    accumulated: list[Container] = []
    root_code = _concept(root_item)[0] if root_item is not None else None
    if root_item is not None:
        _collect(root_item, events, accumulated)
        if root_code == "C-10":  # Siemens Radiation Summary: the root holds the totals
            accumulated.append(_container(root_item))
    return DsrReport(
        path=path,
        root=root_code,
        events=events,
        accumulated=accumulated,
        truncated="VM != 1 in MeasuredValueSequence" in stderr,
        stderr=stderr,
    )


def _concept(item: ET.Element) -> tuple[str | None, str | None]:
    concept = item.find("concept")
    if concept is None:
        return None, None
    return concept.get("codValue"), concept.get("codScheme")


def _collect(item: ET.Element, events: list[Container], accumulated: list[Container]) -> None:
    for child in item.findall("item"):
        code, scheme = _concept(child)
        if scheme == "DCM" and code in EVENT_CONTAINERS:
            events.append(_container(child))
        elif scheme == "DCM" and code in ACCUMULATED_CONTAINERS:
            accumulated.append(_container(child))
        else:
            _collect(child, events, accumulated)


def _container(item: ET.Element) -> Container:
    code, _ = _concept(item)
    box = Container(code=code or "", uid=None)
    for element in item.iter("item"):
        if element is item:
            continue
        c, scheme = _concept(element)
        if element.get("valType") == "UIDREF" and c in ("113769", "113503") and box.uid is None:
            box.uid = (element.findtext("value") or "").strip() or None
        if element.get("valType") != "NUM":
            continue
        text = (element.findtext("value") or "").strip()
        try:
            number = float(text)
        except ValueError:
            continue
        unit = element.find("unit")
        laterality = None
        for modifier in element.findall("item"):
            if _concept(modifier)[0] in ("G-C171", "272741003"):
                laterality = (modifier.findtext("value") or "").strip()
        box.nums.append(
            Num(
                code=c or "",
                scheme=scheme or "",
                value=number,
                unit=unit.get("codValue", "") if unit is not None else "",
                laterality=laterality,
            )
        )
    return box


# --- a small UCUM reader -----------------------------------------------------------------
_PREFIX = {"": 1.0, "u": 1e-6, "m": 1e-3, "c": 1e-2, "d": 1e-1, "k": 1e3, "M": 1e6, "G": 1e9}
_ATOMS = ("Gy", "Sv", "Bq", "Ci", "s", "A", "V", "N", "m")
_NON_UCUM = {"Gym2": "Gy.m2", "mGycm": "mGy.cm", "uAs": "uA.s", "mAs": "mA.s"}
_FACTOR = re.compile(r"^(u|m|c|d|k|M|G)?(Gy|Sv|Bq|Ci|s|A|V|N|m)(\d)?$")


def ucum(unit: str) -> tuple[tuple[tuple[str, int], ...], float]:
    """``(dimension, factor to SI)`` of a UCUM unit such as ``dGy.cm2``; raises on others."""
    text = unit.strip().replace("^", "").replace("*", ".")
    text = _NON_UCUM.get(text, text)
    if text in ("1", "") or text.startswith("{"):
        return (), 1.0
    dims: dict[str, int] = {}
    factor = 1.0
    for part in text.split("."):
        match = _FACTOR.match(part)
        if match is None:
            # "m" alone is metre, but "min"/"mm" are handled by the regex; refuse the rest
            raise ValueError(f"oracle cannot read unit {unit!r}")
        prefix, atom, exponent = match.groups()
        power = int(exponent or 1)
        dims[atom] = dims.get(atom, 0) + power
        factor *= _PREFIX[prefix or ""] ** power
    return tuple(sorted(dims.items())), factor


def to_unit(value: float, unit: str, target: str) -> float:
    """Convert ``value`` from ``unit`` to ``target`` (both UCUM); raise when incompatible."""
    dim, factor = ucum(unit)
    target_dim, target_factor = ucum(target)
    if dim != target_dim:
        raise ValueError(f"{unit!r} and {target!r} measure different things")
    return value * factor / target_factor


def close(a: float | None, b: float | None, rel: float = 1e-6) -> bool:
    """Both absent, or equal within ``rel`` (relative) / 1e-12 (absolute)."""
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)
