"""Curation: range rules, normalisers, vocabulary mapping."""

from dicomlake.curate.engine import CurateReport, curate
from dicomlake.curate.rules import Rules, Severity, load_rules

__all__ = ["CurateReport", "Rules", "Severity", "curate", "load_rules"]
