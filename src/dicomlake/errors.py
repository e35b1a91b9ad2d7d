"""The exception hierarchy: library code raises these, the CLI and web turn them into exit codes."""

from __future__ import annotations


class DicomlakeError(Exception):
    """Base class of every error dicomlake raises on purpose."""


class ConfigError(DicomlakeError):
    """A setting is missing or invalid; the message names the setting and the fix."""


class ExtractionError(DicomlakeError):
    """A file could not be read as DICOM; the message names the file and why."""


class AssociationError(DicomlakeError):
    """A DICOM association was refused or broke; the message uses the standard's words."""


class DeidError(DicomlakeError):
    """De-identification could not be applied as the profile demands."""


class QueryError(DicomlakeError):
    """A filter, selection or SQL statement is not valid; the message says which part."""


class WriteError(DicomlakeError):
    """A DICOM object could not be written; the message names the input and the fix."""
