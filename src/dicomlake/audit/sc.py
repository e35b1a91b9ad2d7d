"""Secondary Capture catalogue (``dicomlake audit sc-catalogue``): every SC object with the
columns of the SC data set description (Gender, Age, Modality, Description, Size_raw,
Size_bytes) plus SOP class, conversion type, matrix, burned-in annotation and source."""

from __future__ import annotations

import polars as pl

from dicomlake.audit.common import Selection, color
from dicomlake.audit.report import AuditResult, Chart, Table
from dicomlake.curate.normalise import SizeSystem, format_size, patient_age
from dicomlake.query.lake import Lake

# PS3.4 B.5: the Secondary Capture Image Storage SOP classes
SC_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit SC Image",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte SC Image",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word SC Image",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color SC Image",
}
# PS3.3 C.8.6.1 Conversion Type (0008,0064) defined terms
CONVERSION = {
    "DV": "Digitized Video", "DI": "Digital Interface", "DF": "Digitized Film", "WSD": "Workstation",
    "SD": "Scanned Document", "SI": "Scanned Image", "DRW": "Drawing", "SYN": "Synthetic Image",
}  # fmt: skip
SEX = {"M": "Male", "F": "Female", "O": "Other"}


def describe(conversion: str | None, texts: list[str | None]) -> str:
    """The content category of the catalogue's Description column.

    >>> describe("WSD", ["Dose Report"]), describe("SD", [None]), describe("DV", ["wound photo"])
    ('Dose Report Screenshot', 'Scanned Document', 'Clinical Photo')
    """
    words = " ".join(t for t in texts if t).lower()
    if "dose" in words and ("report" in words or "info" in words or "summary" in words):
        return "Dose Report Screenshot"
    if any(w in words for w in ("consent", "form", "questionnaire", "request", "letter", "report")):
        return "Scanned Document"
    if any(w in words for w in ("photo", "wound", "skin", "lesion", "dermoscop", "camera", "clinical image")):
        return "Clinical Photo"
    conv = (conversion or "").upper()
    if conv in ("SD", "SI"):
        return "Scanned Document"
    if conv == "DF":
        return "Digitized Film"
    if conv == "DV":
        return "Clinical Photo"
    if conv == "WSD":
        return "Screenshot"
    if conv == "SYN":
        return "Synthetic Image"
    return CONVERSION.get(conv, "Other")


def catalogue(lake: Lake, selection: Selection) -> pl.DataFrame:
    cond, params = selection.sql(lake)
    classes = ", ".join(f"'{c}'" for c in SC_CLASSES)
    raw = lake.sql(
        f"""SELECT i.SOPInstanceUID, i.SOPClassUID, i.PatientSex, i.PatientAge, i.PatientBirthDate, i.StudyDate,
                   i.Modality, i.ConversionType, i.SeriesDescription, i.StudyDescription, i.DerivationDescription,
                   i.ImageType, i.Rows, i.Columns, i.NumberOfFrames, i.BurnedInAnnotation, i.Manufacturer, i.StationName,
                   i.size_bytes, i.source, i.source_path
            FROM instances i WHERE {cond} AND i.SOPClassUID IN ({classes})
            ORDER BY i.StudyDate, i.SOPInstanceUID""",
        params,
    )
    rows = []
    for r in raw.iter_rows(named=True):
        age = patient_age(r["PatientAge"], r["PatientBirthDate"], r["StudyDate"])
        rows.append({
            "Gender": SEX.get((r["PatientSex"] or "").strip().upper(), "Unknown"),
            "Age": age.as_string if age else None,
            "Age_years": round(age.years, 2) if age else None,
            "Modality": r["Modality"],
            "Description": describe(r["ConversionType"], [r["SeriesDescription"], r["StudyDescription"],
                                                          r["DerivationDescription"]]),
            "Size_raw": format_size(r["size_bytes"], SizeSystem.SI),
            "Size_bytes": r["size_bytes"],
            "SOPClass": SC_CLASSES.get(r["SOPClassUID"], r["SOPClassUID"]),
            "ConversionType": r["ConversionType"],
            "ConversionTypeMeaning": CONVERSION.get((r["ConversionType"] or "").upper()),
            "Matrix": f"{r['Rows']} × {r['Columns']}" if r["Rows"] and r["Columns"] else None,
            "Frames": r["NumberOfFrames"] or 1,
            "BurnedInAnnotation": r["BurnedInAnnotation"],
            "SeriesDescription": r["SeriesDescription"],
            "Manufacturer": r["Manufacturer"],
            "StationName": r["StationName"],
            "Source": r["source"],
            "SourcePath": r["source_path"],
            "SOPInstanceUID": r["SOPInstanceUID"],
        })  # fmt: skip
    schema = {"Gender": pl.String, "Age": pl.String, "Age_years": pl.Float64, "Modality": pl.String,
              "Description": pl.String, "Size_raw": pl.String, "Size_bytes": pl.Int64, "SOPClass": pl.String,
              "ConversionType": pl.String, "ConversionTypeMeaning": pl.String, "Matrix": pl.String, "Frames": pl.Int64,
              "BurnedInAnnotation": pl.String, "SeriesDescription": pl.String, "Manufacturer": pl.String, "StationName": pl.String,
              "Source": pl.String, "SourcePath": pl.String, "SOPInstanceUID": pl.String}  # fmt: skip
    return _with_analysis(lake, pl.DataFrame(rows, schema=schema))


# `sc analyse` results (extract/sc.py, table sc_analysis), joined by SOP Instance UID when present
_ANALYSIS = {"content_class": "Class", "class_confidence": "Class_confidence", "phi_words": "PHI_found",
             "redaction_policy": "Redaction_policy", "review": "Review", "review_reasons": "Review_reasons",
             "quality_flags": "Quality_flags", "dose_check": "Dose_check", "dose_status": "Dose_status",
             "dose_total_DLP_mGycm": "Dose_total_DLP_mGycm"}  # fmt: skip


def _with_analysis(lake: Lake, df: pl.DataFrame) -> pl.DataFrame:
    """The catalogue with the `sc analyse` columns (null where an object was not analysed)."""
    cols = ", ".join(f'"{c}" AS "{n}"' for c, n in _ANALYSIS.items())
    try:
        a = lake.sql(f"SELECT SOPInstanceUID, {cols} FROM sc_analysis", max_rows=0)
    except Exception:  # no `sc analyse` run on this lake yet
        a = pl.DataFrame(schema={"SOPInstanceUID": pl.String, **dict.fromkeys(_ANALYSIS.values(), pl.String)})
    a = a.with_columns(
        pl.when(pl.col("Redaction_policy").is_not_null() | pl.col("PHI_found").is_not_null())
        .then(pl.col("PHI_found").cast(pl.Int64, strict=False).fill_null(0))
        .otherwise(None)
        .alias("PHI_redacted")
    )
    return df.join(a.unique("SOPInstanceUID"), on="SOPInstanceUID", how="left")


def audit_sc_catalogue(lake: Lake, selection: Selection | None = None, settings: dict | None = None) -> AuditResult:
    import plotly.graph_objects as go

    selection = selection or Selection()
    df = catalogue(lake, selection)
    res = AuditResult(
        name="sc-catalogue", title="Secondary Capture catalogue",
        selection=selection.sentence("Secondary Capture objects", df.height, lake.store.lake)
        + " Size_raw is the file size in SI units (1 KB = 1000 bytes); Age is Patient's Age (AS), else computed "
        "from birth date and study date.",
        all_data=df, sheets_by="Description",
    )  # fmt: skip
    by_desc = df.group_by("Description").agg(pl.len().alias("objects"), pl.col("Size_bytes").sum().alias("bytes"),
                                             (pl.col("BurnedInAnnotation") == "YES").sum().alias("burned_in")).sort("objects", descending=True)  # fmt: skip  # noqa: E501
    res.numbers.update({"objects": df.height, "bytes": int(df.get_column("Size_bytes").sum() or 0) if df.height else 0,
                        "burned_in_annotation": int((df.get_column("BurnedInAnnotation") == "YES").sum()) if df.height else 0})  # fmt: skip
    fig = go.Figure(go.Bar(x=by_desc.get_column("Description").to_list(), y=by_desc.get_column("objects").to_list(),
                           marker_color=color(0)))  # fmt: skip
    fig.update_layout(yaxis_title="Objects", template="plotly_white", height=360)
    res.charts.append(
        Chart(
            "by-description",
            "Secondary Capture objects by content category",
            "Category from Series/Study Description and Conversion Type (PS3.3 C.8.6.1).",
            fig,
            by_desc,
        )
    )
    sizes = df.filter(pl.col("Size_bytes").is_not_null())
    fig = go.Figure(
        go.Histogram(x=[v / 1e6 for v in sizes.get_column("Size_bytes").to_list()], nbinsx=30, marker_color=color(1))
    )
    fig.update_layout(xaxis_title="File size (MB, SI)", yaxis_title="Objects", template="plotly_white", height=360)
    res.charts.append(Chart("sizes", "File sizes", f"{sizes.height:,} objects with a known file size.", fig,
                            sizes.select("SOPInstanceUID", "Size_raw", "Size_bytes")))  # fmt: skip
    res.tables += [
        Table("by-description", "By content category", "", by_desc),
        Table("catalogue", "Catalogue", "One row per Secondary Capture object.", df),
    ]
    return res
