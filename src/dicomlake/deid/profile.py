"""De-identification profiles: small TOML files naming PS3.15 options and dicomlake choices."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any

from pydicom.datadict import tag_for_keyword

from dicomlake.deid.table import RetainOption, StandardTables, standard_tables
from dicomlake.errors import DeidError


class BurnedInPolicy(Enum):
    """What to do with instances that may carry identifying text burned into the pixels."""

    EXCLUDE = "exclude"
    """Drop instances with Burned In Annotation YES and those of SOP classes known to carry it
    (Secondary Capture screenshots, ultrasound), unless they declare Burned In Annotation NO."""
    EXCLUDE_ALL_RISKY = "exclude-all-risky"
    """Drop Burned In Annotation YES and every instance of a risky SOP class, whatever it declares."""
    EXCLUDE_DECLARED = "exclude-declared"
    """Drop only instances that declare Burned In Annotation YES."""
    FLAG = "flag"
    """Keep everything; report flagged instances."""


GENERALISERS = ("postcode-district", "postcode-area", "zip3", "year", "remove")

_KNOWN_KEYS = {
    "description",
    "options",
    "burned_in",
    "keep_weekday",
    "date_shift_days",
    "age_band_years",
    "pseudonymize",
    "keep",
    "remove",
    "generalize",
    "scrub_free_text",
    "patient_id_prefix",
    "keep_references",
}


@dataclass(frozen=True)
class DeidProfile:
    """A de-identification profile: PS3.15 options plus keyed-pseudonym and generalisation choices."""

    name: str
    description: str = ""
    options: frozenset[RetainOption] = frozenset()
    burned_in: BurnedInPolicy = BurnedInPolicy.EXCLUDE
    keep_weekday: bool = True
    """Date offsets are whole weeks, so weekdays survive (room-utilisation audits need them)."""
    date_shift_days: tuple[int, int] = (-3650, -30)
    """Range of the per-patient keyed date offset, in days."""
    age_band_years: int = 0
    """0 keeps Patient's Age as is; N generalises it to N-year bands (90 and over in one band)."""
    pseudonymize: tuple[str, ...] = ()
    """Keywords whose values are replaced by keyed pseudonyms (Patient ID and name always are)."""
    keep: tuple[str, ...] = ()
    """Keywords kept unchanged whatever the table says (the profile author takes responsibility)."""
    remove: tuple[str, ...] = ()
    """Keywords removed whatever the table says."""
    generalize: dict[str, str] = field(default_factory=dict)
    """Keyword → generaliser (postcode-district, postcode-area, zip3, year, remove, module:function)."""
    scrub_free_text: bool = True
    """Remove this instance's identifying values (names, IDs, dates) from every retained text."""
    patient_id_prefix: str = "DL"
    keep_references: bool = True
    """X/Z/U* sequences (Referenced Image, Source Image, …) keep their items with the contained
    UIDs remapped (U) even where the IOD would allow removal, so references inside an exported
    set stay resolvable (IHE TCE: references within the set are updated)."""
    source: str = ""

    def deviations(self, tables: StandardTables | None = None) -> list[str]:
        """Where this profile departs from PS3.15 Table E.1-1 under its options: attributes the
        table removes or blanks (X, Z, or a compound with them) that the profile pseudonymises,
        generalises or keeps. Named in De-identification Method, its Code Sequence and
        ``deid profiles``."""
        tables = tables or standard_tables()
        out = []
        for what, keywords in (
            ("keyed pseudonym", {k: "" for k in self.pseudonymize}),
            ("generalised", self.generalize),
            ("kept", {k: "" for k in self.keep}),
        ):
            for kw, how in keywords.items():
                tag = tag_for_keyword(kw)
                row = tables.by_tag.get(int(tag)) if tag is not None else None
                if row is None:
                    continue
                action, _ = row.action(self.options)
                if "X" in action.value or "Z" in action.value or (what == "kept" and action.value != "K"):
                    label = f"{what} {how}".strip() if how else what
                    out.append(f"{kw} {label} (E.1-1 {action.value})")
        return out

    def summary(self) -> str:
        """One line on what the profile keeps."""
        keeps = sorted(o.name.lower().replace("_", "-") for o in self.options)
        extra = []
        if self.pseudonymize:
            extra.append("pseudonyms for " + ", ".join(self.pseudonymize))
        if self.age_band_years:
            extra.append(f"ages in {self.age_band_years}-year bands")
        if self.generalize:
            extra.append("generalises " + ", ".join(f"{k}→{v}" for k, v in self.generalize.items()))
        return "; ".join([", ".join(keeps) or "basic profile only", *extra])


def _parse(name: str, doc: dict[str, Any], source: str) -> DeidProfile:
    problems: list[str] = []
    unknown = set(doc) - _KNOWN_KEYS
    if unknown:
        problems.append(f"unknown keys {sorted(unknown)} (known: {sorted(_KNOWN_KEYS)})")
    options: set[RetainOption] = set()
    for opt in doc.get("options", []):
        try:
            options.add(RetainOption.parse(opt))
        except ValueError as exc:
            problems.append(str(exc))
    if {RetainOption.RETAIN_LONGITUDINAL_FULL_DATES, RetainOption.RETAIN_LONGITUDINAL_MODIFIED_DATES} <= options:
        problems.append("choose one of retain-longitudinal-full-dates and -modified-dates")
    try:
        burned = BurnedInPolicy(doc.get("burned_in", "exclude"))
    except ValueError:
        problems.append(f"burned_in={doc.get('burned_in')!r}; choose from {[p.value for p in BurnedInPolicy]}")
        burned = BurnedInPolicy.EXCLUDE
    for key in ("pseudonymize", "keep", "remove"):
        for kw in doc.get(key, []):
            if tag_for_keyword(kw) is None:
                problems.append(f"{key}: {kw!r} is not a DICOM keyword")
    generalize = dict(doc.get("generalize", {}))
    for kw, how in generalize.items():
        if tag_for_keyword(kw) is None:
            problems.append(f"generalize: {kw!r} is not a DICOM keyword")
        if how not in GENERALISERS and ":" not in how:
            problems.append(f"generalize.{kw}={how!r}; choose from {GENERALISERS} or module:function")
    shift = tuple(doc.get("date_shift_days", (-3650, -30)))
    if len(shift) != 2 or shift[0] > shift[1]:
        problems.append(f"date_shift_days={list(shift)} must be [low, high] with low <= high")
        shift = (-3650, -30)
    if problems:
        raise DeidError(f"profile {name} ({source}): " + "; ".join(problems))
    return DeidProfile(
        name=name,
        description=str(doc.get("description", "")),
        options=frozenset(options),
        burned_in=burned,
        keep_weekday=bool(doc.get("keep_weekday", True)),
        date_shift_days=(int(shift[0]), int(shift[1])),
        age_band_years=int(doc.get("age_band_years", 0)),
        pseudonymize=tuple(doc.get("pseudonymize", ())),
        keep=tuple(doc.get("keep", ())),
        remove=tuple(doc.get("remove", ())),
        generalize=generalize,
        scrub_free_text=bool(doc.get("scrub_free_text", True)),
        patient_id_prefix=str(doc.get("patient_id_prefix", "DL")),
        keep_references=bool(doc.get("keep_references", True)),
        source=source,
    )


def builtin_profiles() -> Iterator[DeidProfile]:
    """The profiles shipped in ``dicomlake/deid/profiles``."""
    folder = resources.files("dicomlake.deid").joinpath("profiles")
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            yield _parse(entry.name[:-5], tomllib.loads(entry.read_text("utf-8")), f"built-in {entry.name}")


def load_profile(name_or_path: str | Path) -> DeidProfile:
    """Load a built-in profile by name (``basic``, ``research``, ``dose-audit``) or a TOML file.

    Parameters
    ----------
    name_or_path
        Name of a built-in profile, or the path of a TOML file shaped like the built-ins
        (copy one with ``dicomlake deid profiles --show NAME``).
    """
    text = str(name_or_path)
    path = Path(text)
    if text.endswith(".toml") or path.exists():
        if not path.is_file():
            raise DeidError(f"profile file {path} not found; pass a built-in name or a TOML file")
        try:
            doc = tomllib.loads(path.read_text("utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise DeidError(f"profile file {path} is not valid TOML: {exc}") from exc
        return _parse(path.stem, doc, str(path))
    folder = resources.files("dicomlake.deid").joinpath("profiles")
    entry = folder.joinpath(f"{text}.toml")
    if not entry.is_file():
        names = ", ".join(p.name for p in builtin_profiles())
        raise DeidError(f"no de-identification profile {text!r}; built-ins are {names}, or give a .toml path")
    return _parse(text, tomllib.loads(entry.read_text("utf-8")), f"built-in {text}.toml")


def profile_text(name: str) -> str:
    """The TOML text of a built-in profile, for users to copy and edit."""
    return resources.files("dicomlake.deid").joinpath("profiles", f"{name}.toml").read_text("utf-8")
