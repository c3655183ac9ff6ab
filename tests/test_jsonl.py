"""JSON-lines logs: appended row by row, read with a torn last line dropped, truncated to a resume's step."""

from __future__ import annotations

import json

import pytest

from visalign.errors import UserError
from visalign.jsonl import append_jsonl, read_jsonl, read_log, truncate_jsonl


def test_truncate_keeps_rows_up_to_the_step_and_rows_without_the_key(tmp_path):
    log = tmp_path / "metrics.jsonl"
    rows = [{"vae_step": 1, "rec": 0.5}, {"vae_step": 2, "rec": float("nan")}, {"step": 1, "loss": 1.25},
            {"step": 2, "loss": 0.75}, {"step": 3, "loss": 0.5}]  # fmt: skip
    for row in rows:
        append_jsonl(log, row)
    before = log.read_text().splitlines()
    truncate_jsonl(log, "step", 2)
    # the lines kept are the lines written, character for character (NaN included)
    assert log.read_text().splitlines() == before[:4]
    truncate_jsonl(log, "vae_step", 1)
    assert [json.loads(ln) for ln in log.read_text().splitlines()][1:] == rows[2:4]
    truncate_jsonl(tmp_path / "absent.jsonl", "step", 0)
    assert not (tmp_path / "absent.jsonl").exists()


def test_a_torn_last_line_is_dropped_and_any_other_bad_line_named(tmp_path):
    log = tmp_path / "eval.jsonl"
    log.write_text('{"step": 1}\n{"step": 2, "ove')  # what a kill leaves mid-write
    assert read_log(log) == [{"step": 1}]
    truncate_jsonl(log, "step", 5)
    assert log.read_text() == '{"step": 1}\n'
    log.write_text('{"step": 1}\n{oops\n{"step": 2}\n')
    with pytest.raises(UserError, match=r"eval.jsonl:2: malformed line"):
        read_log(log)
    log.write_text('{"step": "two"}\n')
    with pytest.raises(UserError, match=r"a line has a non-numeric step \('two'\)"):
        truncate_jsonl(log, "step", 1)


def test_user_files_are_strict(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a red star"}\n\n{"prompt": "two')
    rows = read_jsonl(prompts)
    assert next(rows) == (1, {"prompt": "a red star"})
    with pytest.raises(UserError, match=r"prompts.jsonl:3: malformed JSON"):
        next(rows)
