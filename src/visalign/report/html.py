"""One self-contained HTML page per run (``visalign report RUN_DIR``; also written at the end of training).

It embeds (base64) the reward and eval curves, before/after image grids per tag on fixed seeds (the first and
last evaluation; for a token policy, the questions with the first and last evaluations' answers, ``answers.py``), the held-out scores, the time split and the resolved config. The curves and a before / after
sheet are also written as PNG files under ``RUN_DIR/figures/`` (``report/figures.py``).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from visalign.errors import UserError
from visalign.report import plots
from visalign.report.answers import answer_grid, has_answers
from visalign.report.figures import paired_samples, write_figures
from visalign.report.metrics import read_metrics


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return f"<p><i>no data for {html.escape(alt)}</i></p>"
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _grid_per_tag(config: str) -> int:
    """``log.grid_per_tag`` of the run's resolved config (2 where it cannot be read)."""
    import yaml

    try:
        value = ((yaml.safe_load(config) or {}).get("log") or {}).get("grid_per_tag", 2)
    except (yaml.YAMLError, AttributeError):
        return 2
    return value if isinstance(value, int) and value >= 0 else 2


def _eval_dirs(run_dir: Path) -> list[Path]:
    root = run_dir / "evals"
    return sorted(p for p in root.glob("iter_*") if (p / "results.json").is_file()) if root.is_dir() else []


def _grids(first: Path, last: Path) -> str:
    pairs = paired_samples(first, last)
    if not pairs:
        return "<p><i>no sample images</i></p>"
    rows, tag = [], None
    for s, a in pairs:
        if s["tag"] != tag:
            tag = s["tag"]
            rows.append(f'<tr><th colspan="3" class="tag">{html.escape(tag)}</th></tr>')
        cell_b = _img((first / "samples" / s["file"]).read_bytes(), "before")
        cell_a = _img((last / "samples" / a["file"]).read_bytes(), "after") if a else "-"
        rows.append(f"<tr><td>{html.escape(s['prompt'])}</td><td>{cell_b}</td><td>{cell_a}</td></tr>")
    head = f"<tr><th>prompt</th><th>{first.name} (before)</th><th>{last.name} (after)</th></tr>"
    return f'<table class="grid">{head}{"".join(rows)}</table>'


def _score_table(run_dir: Path, evals: list[Path]) -> str:
    if not evals:
        return "<p><i>no evaluation</i></p>"
    results = [(p.name, json.loads((p / "results.json").read_text())) for p in evals]
    tags = sorted({t for _, r in results for t in (r.get("per_tag") or {})})
    head = "<tr><th>eval</th><th>overall</th>" + "".join(f"<th>{html.escape(t)}</th>" for t in tags) + "</tr>"
    body = []
    for name, r in results:
        cells = "".join(f"<td>{(r.get('per_tag') or {}).get(t, float('nan')):.3f}</td>" for t in tags)
        body.append(f"<tr><td>{name}</td><td><b>{r.get('overall', float('nan')):.3f}</b></td>{cells}</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _before_after(evals: list[Path], per_tag: int) -> str:
    if not evals:
        return "<p><i>no evaluation</i></p>"
    if has_answers(evals[0]) and has_answers(evals[-1]):  # a token policy: questions and answers
        return answer_grid(evals[0], evals[-1], per_tag)
    return _grids(evals[0], evals[-1])


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run directory not found")
    if not (run_dir / "metrics.jsonl").is_file() and not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir}: not a run directory (no metrics.jsonl / config.yaml)")
    rows = read_metrics(run_dir / "metrics.jsonl")
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    evals = _eval_dirs(run_dir)
    grid_per_tag = _grid_per_tag(config)
    timings = summary.get("timings_s", {})
    timing_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.1f} s</td></tr>" for k, v in timings.items())
    headline = ""
    if summary.get("base") and summary.get("final"):
        b, f = summary["base"]["overall"], summary["final"]["overall"]
        headline = f"<p class='headline'>held-out overall: <b>{b:.3f}</b> &rarr; <b>{f:.3f}</b> ({f - b:+.3f})</p>"
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>visalign run: {html.escape(run_dir.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; }}
.grid img {{ width: 128px; image-rendering: pixelated; }} .tag {{ background: #eef; text-align: left; }}
.headline {{ font-size: 1.3em; }} .ok {{ color: #080; }} .bad {{ color: #c00; }} pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
</style></head><body>
<h1>Run {html.escape(run_dir.name)}</h1>
{headline}
<h2>Curves</h2>
{_img(plots.reward_curve(rows), "reward curve")}
{_img(plots.eval_curve(rows), "eval curve")}
<h2>Held-out scores</h2>
{_score_table(run_dir, evals)}
<h2>Before / after (fixed seeds)</h2>
{_before_after(evals, grid_per_tag)}
<h2>Timings</h2>
<table>{timing_rows}</table>
{_img(plots.timing_bars(timings), "time split")}
<h2>Resolved config</h2>
<pre>{html.escape(config)}</pre>
</body></html>
"""
    out_path = Path(out) if out is not None else run_dir / "report.html"
    out_path.write_text(page, encoding="utf-8")
    write_figures(run_dir, rows, evals)
    return out_path
