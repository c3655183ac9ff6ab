"""The report's question grid for a token-policy run: per question type, the image, the question, the target, and
the first and last evaluations' greedy answers, each marked right or wrong.

It reads the two evaluations' ``answers.jsonl`` (written by ``token_rollout.TokenRollouts.evaluate``, item i of
both is the same question); images are drawn again from each line's ``image`` spec (ShapesWorld renders are exact).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from visalign.jsonl import read_log

RIGHT, WRONG = "&#10004;", "&#10008;"


def _png(row: dict[str, Any], scale: int = 2) -> str:
    from PIL import Image

    from visalign.worlds.shapes.questions import render_question_image

    if not isinstance(row.get("image"), dict):
        return "-"
    try:
        image = Image.fromarray(render_question_image(row))
    except Exception:  # noqa: BLE001 - an image spec this world cannot draw: the row shows without it
        return "-"
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return f'<img alt="question image" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _verdict(row: dict[str, Any]) -> str:
    ok = float(row.get("score", 0.0)) >= 0.5
    mark = f'<span class="{"ok" if ok else "bad"}">{RIGHT if ok else WRONG}</span>'
    return f"{mark} {html.escape(str(row.get('answer', '')))}"


def has_answers(folder: Path) -> bool:
    return (folder / "answers.jsonl").is_file()


def answer_grid(first: Path, last: Path, per_type: int = 2) -> str:
    """An HTML table of ``per_type`` questions of every type: image, question, target, before, after."""
    before = read_log(first / "answers.jsonl", "answer line")
    after = read_log(last / "answers.jsonl", "answer line")
    if len(before) != len(after) or not before:
        return "<p><i>the two evaluations do not hold the same questions</i></p>"
    shown: dict[str, int] = {}
    rows = []
    for b, a in zip(before, after, strict=True):
        kind = str(b.get("type", ""))
        if shown.get(kind, 0) >= per_type:
            continue
        if kind not in shown:
            rows.append(f'<tr><th colspan="5" class="tag">{html.escape(kind)}</th></tr>')
        shown[kind] = shown.get(kind, 0) + 1
        rows.append(f"<tr><td>{_png(b)}</td><td>{html.escape(b['prompt'])}</td>"
                    f"<td>{html.escape(str(b.get('target', '')))}</td><td>{_verdict(b)}</td><td>{_verdict(a)}</td></tr>")
    head = (f"<tr><th>image</th><th>question</th><th>target</th><th>{first.name} (before)</th>"
            f"<th>{last.name} (after)</th></tr>")
    return f'<table class="grid">{head}{"".join(rows)}</table>'
