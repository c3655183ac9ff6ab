"""`visalign train` end to end on a tiny model folder with the ShapesWorld reward: the run directory's layout,
the held-out evaluation files, the report; then `visalign report` and exact resume through the CLI."""

from __future__ import annotations

import json

import torch

from visalign.cli import main
from visalign.pretrain.build import build_flow_pipeline

torch.set_num_threads(1)


def test_train_cli_writes_the_run_directory(tmp_path, capsys):
    model = tmp_path / "model"
    build_flow_pipeline(seed=0).save_pretrained(model)
    (model / "visalign.json").write_text(json.dumps({"sampler": {"max_sequence_length": 0}}))
    run = tmp_path / "run"
    args = ["train", "--config", "recipes/quickstart.yaml", f"model.name={model}", f"run_dir={run}",
            "train.iterations=2", "eval.every=1", "eval.max_prompts=7", "eval.num_steps=3", "sampling.num_steps=3",
            "data.prompts_per_iter=2", "data.group_size=2", "train.threads=1", "log.tensorboard=true"]
    assert main([*args, "stop_after=1"]) == 0
    assert "--resume" in capsys.readouterr().out
    assert main([*args, "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"report: {run / 'report.html'}" in out.replace("\n", "")
    for name in ("metrics.jsonl", "config.yaml", "summary.json", "report.html"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "evals").iterdir()) == ["iter_0000", "iter_0001", "iter_0002"]
    result = json.loads((run / "evals" / "iter_0002" / "results.json").read_text())
    assert {"overall", "per_tag", "soft", "images"} <= set(result)
    assert len(result["per_tag"]) == 7  # the stratified subset covers every tag
    summary = json.loads((run / "summary.json").read_text())
    assert summary["base"]["overall"] == json.loads((run / "evals/iter_0000/results.json").read_text())["overall"]
    assert summary["final"]["overall"] == result["overall"]
    second = summary["second_split"]  # the compositional split: at the base (read back on resume) and at the end
    assert second["split"] == "test" and second["base"]["overall"] == json.loads(
        (run / "evals/iter_0000/second/results.json").read_text())["overall"]
    assert second["final"]["overall"] == json.loads((run / "evals/iter_0002/second/results.json").read_text())[
        "overall"]
    assert "second split (test)" in out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert "eval/overall" in rows[-1] and "reward/shapes_soft/shapes_strict/mean" in rows[-1]
    assert list((run / "tensorboard").iterdir())
    page = (run / "report.html").read_text()
    assert page.count("data:image/png;base64") >= 4 and "Resolved config" in page and "shapes_soft" in page
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0 and (run / "report.html").is_file()
    assert sorted(p.name for p in (run / "figures").iterdir()) == ["before_after.png", "eval_curve.png",
                                                                    "reward_curve.png"]
