"""``visalign rewards list`` and the argument handling of ``visalign serve-reward``."""

from __future__ import annotations

import pytest

from visalign.cli import main
from visalign.commands.serve_reward import is_loopback, parse_kwargs
from visalign.errors import UserError
from visalign.rewards import registered_rewards

EXPECTED = {"aesthetic", "clipscore", "composite", "hpsv2", "hpsv2.1", "imagereward", "jpeg_compressibility",
            "jpeg_incompressibility", "ocr", "pickscore", "remote", "shapes_soft", "shapes_strict", "vlm_pairwise",
            "vlm_yes"}  # fmt: skip


def test_every_builtin_is_registered_with_flags() -> None:
    registry = registered_rewards()
    assert EXPECTED <= set(registry)
    for name in EXPECTED:
        cls = registry[name]
        lo, hi = cls.output_range
        assert lo < hi and cls.summary and cls.name == name


def test_rewards_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rewards", "list", "--plain"]) == 0
    rows = {line.split("\t")[0]: line.split("\t") for line in capsys.readouterr().out.strip().splitlines()}
    assert EXPECTED <= set(rows)
    assert rows["pickscore"][1:4] == ["yes", "no", "[-100, 100]"]
    assert rows["vlm_pairwise"][1:4] == ["no", "yes", "[0, 1]"]
    assert rows["jpeg_compressibility"][3] == "[-inf, 0]"
    assert main(["rewards", "list"]) == 0
    assert "registered rewards" in capsys.readouterr().out
    assert main(["rewards"]) == 1


def test_serve_reward_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_kwargs(["a=1", "b=x", "c=true", 'd={"k": [1, 2]}', "e=/p/q=r"]) == {
        "a": 1, "b": "x", "c": True, "d": {"k": [1, 2]}, "e": "/p/q=r"}  # fmt: skip
    with pytest.raises(UserError, match="key=value"):
        parse_kwargs(["novalue"])
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
    assert main(["serve-reward", "jpeg_compressibility", "--host", "0.0.0.0"]) == 2
    assert "not a loopback address" in capsys.readouterr().err
    assert main(["serve-reward", "no_such_reward", "--port", "1"]) == 2
    assert "unknown reward 'no_such_reward'" in capsys.readouterr().err
