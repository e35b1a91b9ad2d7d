"""Name standardisation: cluster the variants of institution, station, protocol and
description names into proposals; confirmed mappings become versioned ``*_std`` columns.

The flow a physicist follows::

    dicomlake curate names --propose names.csv      # clusters, one row per variant
    (edit names.csv: fix `standard`, set `status` to confirmed, delete wrong rows)
    dicomlake curate names --confirm names.csv      # a new mapping version in the lake

Audits read names through the Store's ``std_relation`` (store/curation.py), which adds ``institution_std``,
``station_std``, ``protocol_std``, ``study_description_std`` and ``series_description_std``
to ``instances`` from the latest confirmed version (the raw value where none is mapped).
"""

from __future__ import annotations

import csv
import difflib
import re
import tomllib
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path

from dicomlake.curate.lake import NameLake
from dicomlake.errors import ConfigError

# field name → the instances column whose variants it standardises
FIELDS: dict[str, str] = {
    "institution": "InstitutionName",
    "station": "StationName",
    "protocol": "ProtocolName",
    "study_description": "StudyDescription",
    "series_description": "SeriesDescription",
}
CSV_HEADER = ["field", "cluster", "variant", "count", "standard", "similarity", "status"]


@cache
def _vocabulary() -> tuple[dict[str, str], frozenset[str], frozenset[str]]:
    data = tomllib.loads(resources.files("dicomlake.curate").joinpath("name_words.toml").read_text("utf-8"))
    abbrev = {k.lower(): v.lower() for k, v in data.get("abbreviations", {}).items()}
    generic = frozenset(w.lower() for w in data.get("generic", []))
    stop = frozenset(w.lower() for w in data.get("stopwords", []))
    return abbrev, generic, stop


def _ascii(s: str) -> str:
    s = unicodedata.normalize("NFKD", s)
    return "".join(c for c in s if not unicodedata.combining(c))


_B, _E = r"(?<![a-z0-9])", r"(?![a-z0-9])"  # word edges where "_" separates words too
_SPINE = re.compile(_B + r"([lct])[\s\-_/]*spine" + _E)
_XRAY = re.compile(_B + r"x[\s\-_]?rays?" + _E)
_CONTRAST_SUBS = (
    (re.compile(_B + r"(?:w\s*/\s*w\s*/?\s*o|w\s*/?\s*(?:and|&|\+)\s*w\s*/?\s*o|with\s+(?:and|&)\s+without)" + _E),
     " withandwithout "),
    (re.compile(_B + r"(?:w\s*/\s*o|non[\s\-_]*con(?:trast)?|no[\s\-_]+contrast)" + _E + r"|(?<=\s)-\s*c" + _E),
     " without "),
    (re.compile(r"\+\s*c" + _E + "|" + _B + r"c\s*\+"), " with contrast "),
    (re.compile(_B + r"w\s*/(?=\s|$)"), " with "),
)  # fmt: skip


def _normalised(name: str) -> str:
    s = _ascii(name).lower()
    s = _SPINE.sub(lambda m: {"l": " lumbar spine", "c": " cervical spine", "t": " thoracic spine"}[m.group(1)], s)
    s = _XRAY.sub(" xray ", s)
    for pattern, repl in _CONTRAST_SUBS:
        s = pattern.sub(repl, " " + s + " ")
    s = re.sub(r"['’`]s\b", "", s)  # possessive
    s = re.sub(r"['’`]", "", s)  # O'Neil → ONeil
    s = re.sub(r"(?<=[a-z])\.(?=[a-z])", "", s)  # P.A. → PA
    s = re.sub(r"(?<=\d)\.(?=\d)", "DOT", s)  # keep decimals (0.23) whole
    s = re.sub(r"[.]", " ", s)
    s = re.sub(r"(?<=[a-z])(?=\d)|(?<=\d)(?=[a-z])", " ", s)  # CT1 → CT 1, 80kV → 80 kV
    return s.replace("DOT", ".")


def tokens(name: str) -> list[str]:
    """Lower-case words with punctuation, possessives and abbreviations resolved.

    >>> tokens("ST MARYS HOSP"), tokens("St. Mary's Hospital")
    (['saint', 'mary', 'hospital'], ['saint', 'mary', 'hospital'])
    """
    return list(_tokens(name))


@lru_cache(maxsize=65536)
def _tokens(name: str) -> tuple[str, ...]:
    abbrev, _, stop = _vocabulary()
    words = [w for w in re.split(r"[^a-z0-9.]+", _normalised(name)) if w and w != "."]
    out = []
    for w in words:
        w = abbrev.get(w, w)
        for part in w.split():
            if len(part) > 3 and part.endswith("s") and not part.endswith("ss") and not part[0].isdigit():
                part = part[:-1]  # "marys" and "mary's" alike
            if part not in stop:
                out.append(part)
    if "contrast" in out:  # "with contrast" is "with"; "contrast" alone too
        out = [w for w in out if w != "contrast"]
        if "with" not in out and "without" not in out and "withandwithout" not in out:
            out.append("with")
    return tuple(out)


def core_tokens(name: str) -> list[str]:
    """:func:`tokens` without generic words (hospital, trust, NHS), which say nothing of which."""
    return list(_core_tokens(name))


@lru_cache(maxsize=65536)
def _core_tokens(name: str) -> tuple[str, ...]:
    _, generic, _ = _vocabulary()
    t = _tokens(name)
    core = tuple(w for w in t if w not in generic)
    return core or t


@lru_cache(maxsize=65536)
def _initials(name: str) -> frozenset[str]:
    return frozenset(initials(name))


def initials(name: str) -> set[str]:
    """Acronyms a name may be written as: of all words, of the non-generic words, and of
    the words up to each generic word."""
    t = tokens(name)
    c = core_tokens(name)
    _, generic, _ = _vocabulary()
    out = {"".join(w[0] for w in t), "".join(w[0] for w in c)}
    # "Royal Surrey County Hospital NHS Foundation Trust" is RSCH too: up to a generic word
    out |= {"".join(w[0] for w in t[: k + 1]) for k, w in enumerate(t) if w in generic}
    if t and t[0] == "saint":
        out |= {"st" + "".join(w[0] for w in t[1:]), "st" + "".join(w[0] for w in c[1:])}
    return {a for a in out if len(a) >= 2}


def _is_acronym(name: str) -> str | None:
    raw = re.sub(r"[^A-Za-z]", "", _ascii(name))
    words = re.findall(r"[A-Za-z]+", name)
    if len(words) == 1 and 2 <= len(raw) <= 6 and raw.isupper():
        return raw.lower()
    return None


# ---- what distinguishes two names ---------------------------------------------------------

_LATERALITY = {"left": "L", "right": "R", "l": "L", "r": "R", "bilateral": "B", "bilat": "B", "both": "B"}


@cache
def _body_words() -> dict[str, str]:
    """Single body-part words (curate/body_part_words.toml) → their group; generic words out."""
    data = tomllib.loads(resources.files("dicomlake.curate").joinpath("body_part_words.toml").read_text("utf-8"))
    abbrev, generic, _ = _vocabulary()
    out: dict[str, str] = {}
    for group, words in data.get("words", {}).items():
        if group in ("BREAST", "ABDOMENPELVIS", "CHESTABDPELVIS"):
            continue  # breast is generic in names (screening centres); combinations are their parts
        for w in words:
            for part in str(w).lower().split():
                part = abbrev.get(part, part)
                if part not in generic and len(part) > 1 and part not in ("ct", "pa"):
                    out[part] = {"CSPINE": "cervical", "TSPINE": "thoracic", "LSPINE": "lumbar"}.get(group, group)
    out.update({"cervical": "cervical", "lumbar": "lumbar", "spine": "SPINE", "thoracic": "thoracic"})
    return out


@dataclass(frozen=True, slots=True)
class Distinguishing:
    """The parts of a name that must agree before two names can be one: numbers (room 1/2,
    80/100 kV), laterality, contrast (with, without, both), body parts."""

    numbers: tuple[str, ...]
    laterality: frozenset[str]
    contrast: str | None
    body: frozenset[str]


@lru_cache(maxsize=65536)
def distinguishing(name: str) -> Distinguishing:
    t = tokens(name)
    nums = tuple(sorted(w.lstrip("0") or "0" for w in t if re.fullmatch(r"\d+(\.\d+)?", w)))
    lat = frozenset(_LATERALITY[w] for w in t if w in _LATERALITY)
    if "withandwithout" in t or ("with" in t and "without" in t):
        contrast: str | None = "both"
    elif "without" in t:
        contrast = "without"
    elif "with" in t or "contrast" in t:
        contrast = "with"
    else:
        contrast = None
    words = _body_words()
    body = {words[w] for w in t if w in words}
    if {"cervical", "thoracic", "lumbar"} & body:
        body.discard("SPINE")  # "lumbar spine" is the lumbar spine, not two parts
    return Distinguishing(nums, lat, contrast, frozenset(body))


def _token_match(a: str, b: str, acronyms: frozenset[str]) -> bool:
    """One word written two ways: equal, a prefix (≥ 3 letters: abdo/abdomen), a consonant
    abbreviation (pk/park, cty/county) or a typo of a long word."""
    if a == b:
        return True
    short, long_ = sorted((a, b), key=len)
    if short.isdigit() or long_.isdigit() or short in acronyms or long_ in acronyms:
        return False
    if len(short) >= 3 and long_.startswith(short):
        return True
    if 2 <= len(short) <= 4 and len(long_) >= len(short) + 2 and short[0] == long_[0]:
        it = iter(long_)
        if all(c in it for c in short):
            return True
    return len(short) >= 7 and difflib.SequenceMatcher(None, a, b).ratio() >= 0.88


def compatible(a: str, b: str) -> bool:
    """May ``a`` and ``b`` be variants of one name? Not when a distinguishing part differs
    (:class:`Distinguishing`), nor when each has a word the other lacks (St Mark's / St
    Mary's, KNEE / HAND): one name may only add words to the other (or be its acronym)."""
    if distinguishing(a) != distinguishing(b):
        return False
    xa, xb = _is_acronym(a), _is_acronym(b)
    if (xa and not xb and xa in _initials(b)) or (xb and not xa and xb in _initials(a)):
        return True
    acr = _acronyms()
    ta, tb = _core_tokens(a), _core_tokens(b)
    only_a = [w for w in ta if not any(_token_match(w, v, acr) for v in tb)]
    only_b = [w for w in tb if not any(_token_match(w, v, acr) for v in ta)]
    return not (only_a and only_b)


@cache
def _acronyms() -> frozenset[str]:
    data = tomllib.loads(resources.files("dicomlake.curate").joinpath("name_words.toml").read_text("utf-8"))
    return frozenset(str(w).lower() for w in data.get("acronyms", []))


def similarity(a: str, b: str) -> float:
    """How alike two names are, 0..1: the best of token overlap (Jaccard of core words), the
    character similarity of their normalised forms, and an acronym match (``RSCH``); 0 when
    they are not :func:`compatible`."""
    if not compatible(a, b):
        return 0.0
    ta, tb = set(_core_tokens(a)), set(_core_tokens(b))
    jac = len(ta & tb) / len(ta | tb) if ta | tb else 0.0
    ka, kb = " ".join(sorted(ta)), " ".join(sorted(tb))
    seq = difflib.SequenceMatcher(None, ka, kb).ratio() if ka and kb else 0.0
    acr = 0.0
    xa, xb = _is_acronym(a), _is_acronym(b)
    if (xa and not xb and xa in _initials(b)) or (xb and not xa and xb in _initials(a)):
        acr = 0.95
    return max(jac, seq, acr)


@dataclass(frozen=True, slots=True)
class Proposal:
    """One variant and the standard name proposed for it."""

    field: str
    cluster: int
    variant: str
    count: int
    standard: str
    similarity: float


def cluster_names(values: Sequence[tuple[str, int]], threshold: float = 0.8) -> list[list[tuple[str, int]]]:
    """Group name variants by complete linkage: two groups join only when *every* pair across
    them is at least ``threshold`` similar (no chaining A~B~C with A and C unlike). Pairs are
    taken most similar first, ties by name, so the result does not depend on input order.

    Parameters
    ----------
    values
        ``(variant, number of instances)``; counts decide which variant names the group.
    """
    names = sorted({v for v in values if v[0] and v[0].strip()}, key=lambda v: (v[0], v[1]))
    close: dict[tuple[int, int], float] = {}
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            s = similarity(names[i][0], names[j][0])
            if s >= threshold:
                close[(i, j)] = s
    group_of = list(range(len(names)))
    members: dict[int, list[int]] = {i: [i] for i in range(len(names))}
    for (i, j), _s in sorted(close.items(), key=lambda kv: (-kv[1], kv[0])):
        gi, gj = group_of[i], group_of[j]
        if gi == gj:
            continue
        if all((min(p, q), max(p, q)) in close for p in members[gi] for q in members[gj]):
            for q in members[gj]:
                group_of[q] = gi
            members[gi] += members.pop(gj)
    groups = [[names[k] for k in sorted(m)] for m in members.values()]
    return sorted(groups, key=lambda g: (-sum(c for _, c in g), g[0][0]))


def standard_for(group: Sequence[tuple[str, int]]) -> str:
    """The name to propose for a group: the most used full (non-acronym) variant, tidied
    (an all-capitals or all-lower-case name in title case, acronyms such as CT, XR, DBT
    and MRI kept in capitals)."""
    full = [g for g in group if not _is_acronym(g[0])] or list(group)
    best = max(full, key=lambda g: (g[1], len(tokens(g[0])), len(g[0])))[0].strip()
    if best.isupper() or best.islower():
        acr = _acronyms()
        abbrev, _, _ = _vocabulary()

        def word(w: str) -> str:
            bare = re.sub(r"[^A-Za-z]", "", w).lower()
            if bare in acr or (bare and not re.search(r"[aeiouy]", bare) and bare not in abbrev and len(bare) <= 4):
                return w.upper()
            if re.search(r"\d", w):
                return w.upper() if not re.search(r"\d(kv|mas|mm|cm)\b", w.lower()) else w.lower().replace("kv", "kV")
            return "-".join(p[:1].upper() + p[1:].lower() for p in w.split("-"))

        best = " ".join(word(w) for w in best.split())
    return re.sub(r"\s+", " ", best)


def propose(field: str, values: Sequence[tuple[str, int]], threshold: float = 0.8) -> list[Proposal]:
    """Proposals for one field's variants."""
    out = []
    for n, group in enumerate(cluster_names(values, threshold), start=1):
        std = standard_for(group)
        for variant, count in sorted(group, key=lambda g: -g[1]):
            out.append(Proposal(field, n, variant, count, std, round(similarity(variant, std), 3)))
    return out


# ---- the lake (through its curation door: store.curation(), see curate/lake.py) ------------


def variants_in_lake(lake: NameLake, fields: Iterable[str] = FIELDS) -> dict[str, list[tuple[str, int]]]:
    """Distinct values of each field with their instance counts (dose-event protocols included)."""
    return lake.name_variants(list(fields))


def latest_version(lake: NameLake) -> int | None:
    return lake.mapping_version()


def unmapped(lake: NameLake, threshold: float = 0.8) -> list[Proposal]:
    """Variants in the lake that no confirmed mapping covers, with proposals: awaiting a physicist."""
    ver = lake.mapping_version()
    mapped: set[tuple[str, str]] = set()
    if ver is not None:
        mapped = {(f, v) for f, v, _ in lake.mapping(ver)}
    out = []
    for f, values in variants_in_lake(lake).items():
        for p in propose(f, values, threshold):
            if (f, p.variant) not in mapped:
                out.append(p)
    return out


def write_proposals(path: str | Path, proposals: Iterable[Proposal]) -> int:
    """The CSV a physicist edits (header: field, cluster, variant, count, standard, similarity, status)."""
    n = 0
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_HEADER)
        for p in proposals:
            w.writerow([p.field, p.cluster, p.variant, p.count, p.standard, p.similarity, "proposed"])
            n += 1
    return n


def read_mapping(path: str | Path, *, include_proposed: bool = False) -> list[tuple[str, str, str]]:
    """Confirmed ``(field, variant, standard)`` rows of an edited proposals CSV; every bad row at once."""
    rows, problems = [], []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        need = {"field", "variant", "standard"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise ConfigError(
                f"mapping file {path}: header must include {', '.join(sorted(need))}; found {reader.fieldnames}"
            )
        for n, r in enumerate(reader, start=2):
            status = (r.get("status") or "confirmed").strip().lower()
            if status not in ("confirmed", "proposed", "rejected"):
                problems.append(f"line {n}: status {status!r} is not confirmed, proposed or rejected")
                continue
            if status == "rejected" or (status == "proposed" and not include_proposed):
                continue
            f, v, s = (
                (r.get("field") or "").strip(),
                (r.get("variant") or "").strip(),
                (r.get("standard") or "").strip(),
            )
            if f not in FIELDS:
                problems.append(f"line {n}: field {f!r} is not one of {', '.join(FIELDS)}")
            elif not v or not s:
                problems.append(f"line {n}: empty variant or standard")
            else:
                rows.append((f, v, s))
    if problems:
        raise ConfigError(f"mapping file {path}: " + "; ".join(problems[:20]))
    return rows


def apply_mapping(
    lake: NameLake,
    rows: Sequence[tuple[str, str, str]],
    *,
    confirmed_by: str = "",
    source_file: str = "",
) -> int:
    """Store confirmed mappings as a new version (previous confirmed rows carried over unless
    overridden) and refresh the ``instances_std`` view; the new version number."""
    prev = lake.mapping_version()
    merged: dict[tuple[str, str], str] = {}
    if prev is not None:
        for f, v, s in lake.mapping(prev):
            merged[(f, v)] = s
    for f, v, s in rows:
        merged[(f, v)] = s
    ver = (prev or 0) + 1
    lake.add_mapping_version(
        ver, [(f, v, s) for (f, v), s in sorted(merged.items())], confirmed_by=confirmed_by, source_file=source_file
    )
    return ver


def precision_recall(predicted: Sequence[Sequence[str]], truth: Sequence[Sequence[str]]) -> tuple[float, float]:
    """Pairwise precision and recall of a clustering against the true groups."""

    def pairs(groups: Sequence[Sequence[str]]) -> set[frozenset[str]]:
        out = set()
        for g in groups:
            g = list(g)
            for i in range(len(g)):
                for j in range(i + 1, len(g)):
                    out.add(frozenset((g[i], g[j])))
        return out

    p, t = pairs(predicted), pairs(truth)
    precision = len(p & t) / len(p) if p else 1.0
    recall = len(p & t) / len(t) if t else 1.0
    return precision, recall
