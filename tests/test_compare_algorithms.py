"""benchmarks/compare_algorithms.py: the docs block of each table (the paired gain itself: tests/test_paired_reward.py)."""

from __future__ import annotations

import json

from benchmark_scripts import load_benchmark


def _module():
    return load_benchmark("compare_algorithms")


def _result(model: str, base: float, final: float) -> dict:
    point = {"images": 0, "strict": base, "soft": 0.2, "rm": 0.3, "eval_images": 140}
    last = {**point, "images": 1024, "strict": final}
    return {"family": "policy gradient", "model": model, "base": point, "final": last, "curve": [point, last],
            "images_to_plus_0.2": None, "strict_gain_paired": {"mean": final - base, "se": 0.02}, "wall_s": 60.0}


def test_a_second_table_keeps_its_own_block_json_and_plot_and_leaves_the_first_alone(tmp_path):
    module = _module()
    docs = tmp_path / "algorithms.md"
    docs.write_text("# Algorithms\n\nintro\n")

    def args(table: str):
        return module.argparse.Namespace(docs=str(docs), table=table, images=1024, evals=1, threads=1)

    module.write_docs({"flow_grpo": _result("old-base", 0.1, 0.2)}, args("table"), "old notes\n")
    module.write_docs({"flow_grpo": _result("new-base", 0.3, 0.25)}, args("current"), "")
    # rewriting the first table must not touch the second one's block
    module.write_docs({"flow_grpo": _result("old-base", 0.1, 0.15)}, args("table"), "old notes\n")

    text = docs.read_text()
    first = text.split("<!-- compare_algorithms:table -->")[1]
    second = text.split("<!-- compare_algorithms:current -->")[1]
    assert text.startswith("# Algorithms\n\nintro\n")
    assert text.count("<!-- compare_algorithms:table -->") == 2 and text.count("<!-- compare_algorithms:current -->") == 2
    assert "old-base" in first and "0.100 -> **0.150**" in first and "new-base" not in first
    assert "new-base" in second and "0.300 -> **0.250** (-0.050" in second and "old-base" not in second
    assert "--table current" in second and "algorithms_current.json" in second
    assert json.loads((tmp_path / "algorithms.json").read_text())["results"]["flow_grpo"]["model"] == "old-base"
    assert json.loads((tmp_path / "algorithms_current.json").read_text())["results"]["flow_grpo"]["model"] == "new-base"
    assert (tmp_path / "img" / "algorithms_curves.png").is_file()
    assert (tmp_path / "img" / "algorithms_current_curves.png").is_file()


def test_the_tables_gain_is_the_packages_paired_gain():
    from visalign.eval.paired import paired_gain

    assert _module().paired_gain is paired_gain  # one implementation, tested in tests/test_paired_reward.py
