"""Data embedded in HTML: JSON inside ``<script type="application/json">``.

A DICOM value is hostile input. ``json.dumps`` leaves ``</script>``, ``<!--`` and U+2028/2029
as they are, so a Modality of ``</script><h1>…`` ends the script element and becomes markup.
:func:`json_for_script` writes JSON in which ``<``, ``>``, ``&``, U+2028 and U+2029 are
``\\u`` escapes: still the same JSON to ``JSON.parse``, never markup to the HTML parser.
Every template that embeds JSON uses it (the ``script_json`` Jinja filter); none uses ``|safe``
on data.
"""

from __future__ import annotations

import json
import math
from typing import Any

from markupsafe import Markup

_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def json_for_script(value: Any) -> Markup:
    """``value`` as JSON that is safe inside a ``<script>`` element (and in an HTML attribute's text)."""
    try:
        text = json.dumps(value, default=str, ensure_ascii=False, allow_nan=False)
    except ValueError:  # NaN or infinity: not JSON (JSON.parse would fail and blank every chart)
        text = json.dumps(_finite(value), default=str, ensure_ascii=False, allow_nan=False)
    return Markup(text.translate(_ESCAPES))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


__all__ = ["json_for_script"]
