"""The answer rewards of vision-language policies: parsing, matching, IoU, format, length shaping, registry."""

from __future__ import annotations

import pytest
import torch

from visalign.cli import main
from visalign.errors import UserError
from visalign.rewards import build_reward, registered_rewards
from visalign.rewards.answers import (
    answer_matches,
    extract_answer,
    iou,
    is_formatted,
    overlong_penalty,
    parse_box,
    parse_number,
    per_type_means,
)
from visalign.rewards.base import RewardError, check_metadata
from visalign.worlds.shapes.questions import load_qa_split

NAMES = ("answer_accuracy", "box_iou", "box_detection", "answer_format", "length_penalty", "shapes_answer")


def _scores(name: str, outputs: list[str], metadata: list[dict] | None = None, **options: object) -> dict:
    reward = build_reward(name, **options)
    return {k: v.tolist() for k, v in reward(outputs, [""] * len(outputs), metadata).items()}


# --- reading the answer ------------------------------------------------------------------------------------------


def test_extract_answer() -> None:
    assert extract_answer("<think>it is 3</think><answer> Two </answer>") == "two"
    assert extract_answer("  Blue\n") == "blue"
    assert extract_answer("<answer>1</answer> or <answer>2</answer>") == "1"  # the first, as EasyR1's r1v
    assert extract_answer("<answer>2") == "<answer>2"  # an unclosed tag is no answer block
    assert extract_answer("<answer>\nline one\nline two\n</answer>") == "line one\nline two"


@pytest.mark.parametrize(
    ("output", "target", "expected"),
    [
        ("2", "2", True),
        ("2.0", "2", True),
        ("+2", "2", True),
        ("two", "2", True),
        ("<answer>Two.</answer>", "2", True),
        (" 2 ", "2", True),
        ("zero", "0", True),
        ("None", "0", True),
        ("3", "2", False),
        ("2 circles", "2", False),
        ("nan", "2", False),
        ("", "2", False),
        ("042", "42", True),
        ("42.5", "42", False),
        ("Yes", "yes", True),
        ("<answer>yes.</answer>", "yes", True),
        ("y", "yes", True),
        ("TRUE", "yes", True),
        ("no", "yes", False),
        ("false", "no", True),
        ("maybe", "no", False),
        ("Red.", "red", True),
        ('"red"', "red", True),
        ("the red", "red", True),
        ("dark red", "red", False),
        ("A circle", "circle", True),
        ("circles", "circle", False),
        ("<answer>star</answer>", "circle", False),
    ],
)
def test_answer_matching(output: str, target: str, expected: bool) -> None:
    assert answer_matches(output, target) is expected


def test_parse_number() -> None:
    assert parse_number("7") == 7.0 and parse_number(".5") == 0.5 and parse_number("twenty") == 20.0
    assert (
        parse_number("inf") is None and parse_number("1,000") is None and parse_number("two circles") is None
    )


@pytest.mark.parametrize(
    ("text", "box"),
    [
        ("[1, 2, 3, 4]", (1.0, 2.0, 3.0, 4.0)),
        ("(1,2,3,4)", (1.0, 2.0, 3.0, 4.0)),
        ("[1.5, 2, 3.25, 4.]", (1.5, 2.0, 3.25, 4.0)),
        ('{"bbox_2d": [10, 20, 30, 40], "label": "star"}', (10.0, 20.0, 30.0, 40.0)),
        ("the box is [ 5 , 6 , 7 , 8 ] and [0, 0, 1, 1]", (5.0, 6.0, 7.0, 8.0)),
        ("[-1, 0, 5, 5]", (-1.0, 0.0, 5.0, 5.0)),
        ("[1, 2, 3]", None),
        ("[1, 2, 3, 4, 5]", None),
        ("1 2 3 4", None),
        ("[3, 2, 1, 4]", None),  # x1 < x0
        ("[1, 4, 3, 4]", None),  # zero height
        ("[a, b, c, d]", None),
        ("", None),
    ],
)
def test_parse_box(text: str, box: tuple | None) -> None:
    assert parse_box(text) == box


def test_iou_by_hand() -> None:
    a = (0.0, 0.0, 10.0, 10.0)
    assert iou(a, a) == 1.0
    assert iou(a, (5.0, 5.0, 15.0, 15.0)) == pytest.approx(25 / 175)  # 5x5 overlap of two 100s
    assert iou(a, (0.0, 0.0, 10.0, 5.0)) == pytest.approx(0.5)
    assert iou(a, (2.0, 2.0, 4.0, 4.0)) == pytest.approx(4 / 100)
    assert iou(a, (10.0, 0.0, 20.0, 10.0)) == 0.0  # touching edges
    assert iou(a, (20.0, 20.0, 30.0, 30.0)) == 0.0
    assert iou((0.0, 0.0, 4.0, 2.0), (2.0, 0.0, 6.0, 2.0)) == pytest.approx(4 / 12)


# --- the rewards -------------------------------------------------------------------------------------------------


def test_answer_accuracy() -> None:
    md = [{"answer": "2"}, {"answer": "yes"}, {"answer": "blue"}, {"answer": "42"}]
    out = _scores("answer_accuracy", ["<answer>two</answer>", "No", "Blue", "<answer>42</answer>"], md)
    assert out == {"answer_accuracy": [1.0, 0.0, 1.0, 1.0]}
    with pytest.raises(RewardError, match="batch position 0 has no 'answer'"):
        build_reward("answer_accuracy")(["2"], [""], [{}])


def test_box_iou_and_detection() -> None:
    md = [{"box": [0, 0, 10, 10]}] * 4
    outputs = [
        "<answer>[5, 5, 15, 15]</answer>",
        "no box here",
        "[0, 0, 10, 5]",
        "<answer>[0,0,10,10]</answer>",
    ]
    assert _scores("box_iou", outputs, md)["box_iou"] == pytest.approx([25 / 175, 0.0, 0.5, 1.0])
    det = _scores("box_detection", outputs, md)
    assert det["box_detection"] == [0.0, 0.0, 1.0, 1.0]  # IoU >= 0.5 counts
    assert det["box_iou"] == pytest.approx([25 / 175, 0.0, 0.5, 1.0])
    assert _scores("box_detection", outputs, md, threshold=0.1)["box_detection"] == [1.0, 0.0, 1.0, 1.0]
    with pytest.raises(UserError, match=r"threshold must be in \(0, 1\]"):
        build_reward("box_detection", threshold=0.0)
    with pytest.raises(RewardError, match="no valid target box"):
        build_reward("box_iou")(["[0, 0, 1, 1]"], [""], [{"box": [3, 3, 1, 1]}])


ACCEPTED = [
    "<answer>2</answer>",
    "  <think>three stars, one red</think>\n<answer>2</answer>\n",
    "<think></think><answer>x</answer>",
    "<think>\nmulti\nline\n</think>\n\n<answer>\n[1, 2, 3, 4]\n</answer>",
]
REJECTED = [
    "2",
    "<answer>2</answer> because",
    "so: <answer>2</answer>",
    "<answer></answer>",
    "<answer>  </answer>",
    "<answer>1</answer><answer>2</answer>",
    "<think>a</think>",
    "<answer>2</answer><think>a</think>",
    "<think><answer>2</answer></think>",
    "<think>a</think><think>b</think><answer>2</answer>",
    "<answer>2",
    "<ANSWER>2</ANSWER>",
]


def test_answer_format() -> None:
    for text in ACCEPTED:
        assert is_formatted(text), text
    for text in REJECTED:
        assert not is_formatted(text), text
    assert _scores("answer_format", ACCEPTED[:2] + REJECTED[:1])["answer_format"] == [1.0, 1.0, 0.0]
    strict = _scores("answer_format", ACCEPTED, require_think=True)["answer_format"]
    assert strict == [0.0, 1.0, 1.0, 1.0]  # the think block is required


def test_length_penalty_breakpoints() -> None:
    # max_length 10, cache 4: 0 up to 6, then -1/4 per unit, -1 from 10 on
    assert [overlong_penalty(n, 10, 4) for n in (0, 6, 7, 8, 9, 10, 11, 100)] == [
        0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0, -1.0]  # fmt: skip
    words = [" ".join(["w"] * n) for n in (6, 7, 8, 10, 11)]
    assert _scores("length_penalty", words, max_length=10, cache=4)["length_penalty"] == [
        0.0,
        -0.25,
        -0.5,
        -1.0,
        -1.0,
    ]
    chars = ["abcdef", "abcdefgh", "a b c d"]  # 6, 8 and 7 characters (spaces count)
    assert _scores("length_penalty", chars, max_length=10, cache=4, unit="chars")["length_penalty"] == [
        0.0,
        -0.5,
        -0.25,
    ]
    defaults = [" ".join(["w"] * n) for n in (384, 448, 512)]  # 512 words, cache 128
    assert _scores("length_penalty", defaults)["length_penalty"] == [0.0, -0.5, -1.0]
    assert _scores("length_penalty", ["a\n\tb   c"], max_length=3, cache=1)["length_penalty"] == [-1.0]
    for options, message in (({"cache": 0}, "cache must be from 1"), ({"max_length": 0}, "max_length must be >= 1"),
                             ({"max_length": 8, "cache": 9}, "cache must be from 1 to max_length"),
                             ({"unit": "tokens"}, "option 'unit'")):  # fmt: skip
        with pytest.raises(UserError, match=message):
            build_reward("length_penalty", **options)


def test_shapes_answer_by_type() -> None:
    md = [
        {"type": "count", "answer": "2"},
        {"type": "grounding", "answer": "[0, 0, 10, 10]", "box": [0, 0, 10, 10]},
        {"type": "grounding", "answer": "[0, 0, 10, 10]", "box": [0, 0, 10, 10]},
        {"type": "relation_yesno", "answer": "no"},
        {"type": "color", "answer": "red"},
    ]
    outputs = ["<answer>two</answer>", "<answer>[0, 0, 10, 5]</answer>", "[5, 5, 15, 15]", "yes", "Red"]
    out = _scores("shapes_answer", outputs, md)
    assert out["shapes_answer"] == pytest.approx([1.0, 0.5, 25 / 175, 0.0, 1.0])
    assert out["answer_correct"] == [1.0, 1.0, 0.0, 0.0, 1.0]
    scores = torch.tensor(out["shapes_answer"])
    assert per_type_means(scores, md) == pytest.approx({"count": 1.0, "color": 1.0, "relation_yesno": 0.0,
                                                        "grounding": (0.5 + 25 / 175) / 2})  # fmt: skip
    with pytest.raises(RewardError, match="batch position 0 has no 'box'"):
        build_reward("shapes_answer")(
            ["[0, 0, 1, 1]"], [""], [{"type": "grounding", "answer": "[0, 0, 1, 1]"}]
        )


def test_shipped_answers_score_one_and_wrong_ones_zero() -> None:
    items = load_qa_split("test")
    reward = build_reward("shapes_answer")
    right = reward(
        [f"<think>...</think><answer>{it['answer']}</answer>" for it in items], [""] * len(items), items
    )
    assert right["shapes_answer"].tolist() == [1.0] * len(items)
    wrong = reward(["<answer>purple hexagon</answer>"] * len(items), [""] * len(items), items)
    assert wrong["shapes_answer"].tolist() == [0.0] * len(items)
    check_metadata([reward, build_reward("answer_accuracy")], items, "qa_test.jsonl")
    with pytest.raises(UserError, match="no 'box' metadata, which reward 'box_iou' needs"):
        check_metadata([build_reward("box_iou")], items, "qa_test.jsonl")


def test_text_reward_contract() -> None:
    reward = build_reward("answer_format")
    with pytest.raises(RewardError, match="list of answer strings"):
        reward("<answer>2</answer>", [""])  # type: ignore[arg-type]
    with pytest.raises(RewardError, match="2 answers, 1 prompts"):
        reward(["a", "b"], [""])
    assert reward([], [])["answer_format"].shape == (0,)


# --- the registry ------------------------------------------------------------------------------------------------


def test_registered_and_listed(capsys: pytest.CaptureFixture[str]) -> None:
    registry = registered_rewards()
    for name in NAMES:
        cls = registry[name]
        assert cls.name == name and cls.summary and cls.output_kind == "text" and not cls.differentiable
    assert main(["rewards", "list", "--plain"]) == 0
    rows = {line.split("\t")[0]: line.split("\t") for line in capsys.readouterr().out.strip().splitlines()}
    assert rows["length_penalty"][1:4] == ["no", "no", "[-1, 0]"]
    for name in NAMES[:4] + NAMES[5:]:
        assert rows[name][1:4] == ["no", "no", "[0, 1]"]
    assert main(["rewards", "list"]) == 0


def test_digits_decoded_one_token_apart_are_one_number():
    """The tiny VLM's word-level tokenizer decodes "407" as "4 0 7"; a number is still a number."""
    from visalign.rewards.answers import parse_number

    assert parse_number("4 0 7") == 407.0 and parse_number("2") == 2.0 and parse_number("4 two") is None


def test_a_box_decoded_one_digit_per_token_parses():
    from visalign.rewards.answers import parse_box

    # the tiny VLM's word-level tokenizer decodes "[37, 20, 50, 51]" with a space between tokens
    assert parse_box("[ 3 7, 2 0, 5 0, 5 1 ]") == (37.0, 20.0, 50.0, 51.0)
    assert parse_box("[ 2 0 , 5 0 , 3 1 , 6 1 ]") == (20.0, 50.0, 31.0, 61.0)
    assert parse_box("[ 3 7, 2 0, 5 0, 5 0") is None  # unclosed
