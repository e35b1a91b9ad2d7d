"""Audits: dose (MG, CT, projection X-ray, NM activity), workflow, quality, SC catalogue, HTML reports."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from dicomlake.audit.common import Selection, load_settings
from dicomlake.audit.report import AuditResult, write_report


def _registry() -> dict[str, Callable[..., AuditResult]]:
    from dicomlake.audit.dose import audit_ct_dose, audit_projection_dose
    from dicomlake.audit.mg import audit_mg_dose
    from dicomlake.audit.nm import audit_nm_dose
    from dicomlake.audit.quality import audit_quality
    from dicomlake.audit.sc import audit_sc_catalogue
    from dicomlake.audit.workflow import audit_workflow

    return {
        "mg-dose": audit_mg_dose,
        "ct-dose": audit_ct_dose,
        "dx-dose": partial(audit_projection_dose, family="DX"),
        "rf-dose": partial(audit_projection_dose, family="RF"),
        "nm-dose": audit_nm_dose,
        "workflow": audit_workflow,
        "quality": audit_quality,
        "sc-catalogue": audit_sc_catalogue,
    }


AUDITS = ("mg-dose", "ct-dose", "dx-dose", "rf-dose", "nm-dose", "workflow", "quality", "sc-catalogue")


def run_audit(name: str, lake: Any, selection: Selection | None = None, settings: dict | None = None) -> AuditResult:
    """Run one audit by name over an open :class:`~dicomlake.query.lake.Lake`."""
    reg = _registry()
    if name not in reg:
        raise ValueError(f"audit {name!r}: choose one of {', '.join(AUDITS)}")
    result = reg[name](lake, selection=selection, settings=settings or load_settings())
    empty = [c for c in result.charts if c.data.height == 0]
    if empty:  # a chart without data says nothing: a note says so instead
        result.charts = [c for c in result.charts if c.data.height]
        result.notes.append("No data in the selection for: " + "; ".join(c.title for c in empty) + ".")
    return result


__all__ = ["AUDITS", "AuditResult", "Selection", "load_settings", "run_audit", "write_report"]
