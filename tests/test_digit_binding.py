"""benchmarks/digit_binding.py: its statistics by hand, and its reader on rendered numbers."""

from __future__ import annotations

import math

import numpy as np

from benchmark_scripts import load_benchmark
from visalign.worlds.shapes.render import render_scene

script = load_benchmark("digit_binding")


def test_digit_accuracy_counts_positions_of_readings_with_the_right_length_only():
    expected = ["12", "12", "7", "305"]
    read = ["12", "13", "??", "3?5"]  # exact; one digit wrong; wrong length; one glyph unreadable
    stats = script.binding_stats(expected, read)
    assert stats["images"] == 4
    assert stats["strict"] == 0.25
    assert stats["count"] == 0.75
    assert math.isclose(stats["digit_accuracy"], 5 / 7)  # 2 + 1 + 2 right of 2 + 2 + 3 positions


def test_digit_accuracy_is_undefined_when_no_reading_has_the_right_length():
    stats = script.binding_stats(["4"], ["44"])
    assert stats["count"] == 0.0 and math.isnan(stats["digit_accuracy"])


def test_reader_reads_rendered_numbers():
    numbers = ["7", "42", "905"]
    renders = np.stack([render_scene({"tag": "text", "prompt": n, "include": [], "text": n}, 3) for n in numbers])
    assert script.read_digits(renders) == numbers


def test_text_prompts_filter_by_length_and_stride():
    prompts = script.text_prompts("train", {1}, 2)
    assert prompts and all(m["tag"] == "text" and len(m["text"]) == 1 for m in prompts)
    every = script.text_prompts("train", {1}, 1)
    assert prompts == every[::2]
