"""The report of a token-policy run shows its questions: image, question, target and the first and last
evaluations' answers, each marked right or wrong from the evaluation's own score."""

from __future__ import annotations

import json

from visalign.report.html import build_report
from visalign.worlds.shapes.questions import load_qa_split


def _write_eval(folder, items, answers, scores):
    folder.mkdir(parents=True)
    rows = [{"prompt": item["messages"][0]["content"][1]["text"], "type": item["type"], "answer": a, "score": s,
             "target": item["answer"], "image": item["image"]} for item, a, s in zip(items, answers, scores, strict=True)]
    (folder / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "results.json").write_text(json.dumps({"overall": sum(scores) / len(scores), "per_tag": {}}))


def test_the_report_grids_questions_with_the_base_and_trained_answers(tmp_path):
    items = [x for t in ("count", "color") for x in [y for y in load_qa_split("test") if y["type"] == t][:3]]
    run = tmp_path / "run"
    _write_eval(run / "evals" / "iter_0000", items, ["9"] * 6, [0.0] * 6)
    _write_eval(run / "evals" / "iter_0010", items, [x["answer"] for x in items], [1.0] * 6)
    (run / "config.yaml").write_text("log:\n  grid_per_tag: 2\n")
    page = build_report(run).read_text()
    # two questions of each type (grid_per_tag), each with its rendered image, before wrong and after right
    assert page.count('alt="question image"') == 4
    assert page.count('class="bad">&#10008;</span> 9') == 4 and page.count('class="ok">&#10004;') == 4
    assert items[0]["messages"][0]["content"][1]["text"] in page and items[2]["messages"][0]["content"][1]["text"] not in page
