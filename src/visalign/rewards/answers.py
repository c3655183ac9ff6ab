"""Rewards of a vision-language policy's answers to verifiable questions (the ShapesWorld QA set and the like).

Text rewards (``TextReward``): ``reward(outputs, prompts, metadata)``, one metadata per output, which for the
ShapesWorld QA set is the item itself (``worlds/shapes/questions.py``: ``answer``, ``type``, ``box``).

The answer is read from the output the way R1-style recipes (EasyR1's ``r1v``) read it: the content of the first
``<answer>...</answer>`` if there is one, else the whole output; then stripped and case-folded. Comparison
normalises further (``normalise``): surrounding quotes and trailing punctuation go, runs of spaces become one, a
leading article ("a", "an", "the") goes. Against a numeric target both sides are compared as numbers ("2",
"2.0", "+2", "two" all match 2; number words zero to twenty, and "none" for 0); against "yes" / "no" the answer
counts as yes for "yes", "y", "true" and as no for "no", "n", "false". Anything else must match exactly.

Boxes are ``[x0, y0, x1, y1]`` in pixels (square brackets or parentheses, comma separated, integers or
decimals; the first such group in the answer, so ``{"bbox_2d": [1, 2, 3, 4]}`` parses); a box with
x1 <= x0 or y1 <= y0, or no box at all, scores 0. IoU is area(A n B) / area(A u B) with continuous coordinates
(pixel-edge coordinates, no "+1").
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import torch

from visalign.rewards.base import RewardError, TextReward, register_reward

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_INNER = r"(?:(?!</?(?:think|answer)>).)*"  # text holding no think / answer tag
_FORMAT = re.compile(rf"\s*(?:<think>{_INNER}</think>\s*)?<answer>({_INNER})</answer>\s*", re.DOTALL)
_FORMAT_THINK = re.compile(rf"\s*<think>{_INNER}</think>\s*<answer>({_INNER})</answer>\s*", re.DOTALL)
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_BOX = re.compile(rf"[\[(]\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*[\])]")
_NUMBER_WORDS = {w: float(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split()
)} | {"none": 0.0}  # fmt: skip
_YES, _NO = {"yes", "y", "true"}, {"no", "n", "false"}
_ARTICLE = re.compile(r"^(?:a|an|the)\s+")
_SPACED_DIGITS = re.compile(r"\d(?: \d)+")
_CHOICE_ALONE = re.compile(r"\(?([A-Za-z])\)?[.):,]?")
_CHOICE_LEAD = re.compile(r"^(?:[Oo]ption\s+|[Aa]nswer:?\s*)?\(?([A-Z])\)?(?:[.):,]|\s|$)")
_CHOICE_SAID = re.compile(r"answer is:?\s*\(?([A-Za-z])\)?(?:[.):,]|\s|$)", re.IGNORECASE)

Box = tuple[float, float, float, float]


def _answer_text(output: str) -> str:
    """The content of the first ``<answer>...</answer>``, else the whole output, stripped (case kept)."""
    match = _ANSWER.search(output)
    return (match.group(1) if match else output).strip()


def extract_answer(output: str) -> str:
    """The content of the first ``<answer>...</answer>``, else the whole output; stripped and case-folded."""
    return _answer_text(output).casefold()


def normalise(text: str) -> str:
    """Case-folded, quotes and trailing punctuation stripped, spaces collapsed, a leading article removed."""
    text = " ".join(text.casefold().split())
    text = text.strip("\"'`").rstrip(".!?,;:").strip().strip("\"'`").strip()
    return _ARTICLE.sub("", text)


def parse_number(text: str) -> float | None:
    """A finite number written as digits or as a word (zero to twenty, "none"), else None."""
    text = normalise(text)
    if text in _NUMBER_WORDS:
        return _NUMBER_WORDS[text]
    if _SPACED_DIGITS.fullmatch(text):  # "4 0 7": a word-level tokenizer decodes one digit per token
        text = text.replace(" ", "")
    if re.fullmatch(_NUM, text) is None:
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def choice_letter(text: str, n_choices: int = 26) -> str | None:
    """The letter (lower case) a multiple-choice answer picks among the first ``n_choices``: "B", "(b)", "B.",
    "B) the cat", "B, because ...", "A because ...", "option B", "the answer is (B)"; else None."""
    text = text.strip().strip("\"'`").strip()
    valid = "abcdefghijklmnopqrstuvwxyz"[:n_choices]
    alone = _CHOICE_ALONE.fullmatch(text)  # the whole answer is one letter: any case
    if alone and alone.group(1).casefold() in valid:
        return alone.group(1).casefold()
    for pattern in (_CHOICE_LEAD, _CHOICE_SAID):  # a capital letter leading the answer, or "answer is X"
        match = pattern.search(text)
        if match and match.group(1).casefold() in valid:
            return match.group(1).casefold()
    return None


def answer_matches(output: str, target: str, choices: Sequence[str] | None = None) -> bool:
    """Whether the answer in ``output`` is ``target`` (numbers as numbers, yes/no normalised, else exact). With
    ``choices`` (a multiple-choice item, ``target`` its letter) the letter the answer picks must be the target's,
    or the answer must be the target choice's text."""
    if choices:
        letter = target.strip().casefold()
        picked = choice_letter(_answer_text(output), len(choices))
        if picked is not None:
            return picked == letter
        index = "abcdefghijklmnopqrstuvwxyz".find(letter)
        return 0 <= index < len(choices) and normalise(extract_answer(output)) == normalise(choices[index])
    given, wanted = normalise(extract_answer(output)), normalise(target)
    number = parse_number(wanted)
    if number is not None:
        found = parse_number(given)
        return found is not None and abs(found - number) <= 1e-9 * max(1.0, abs(number))
    if wanted in _YES | _NO:
        return (given in _YES and wanted in _YES) or (given in _NO and wanted in _NO)
    return given == wanted


def parse_box(text: str) -> Box | None:
    """The first ``[x0, y0, x1, y1]`` (or ``(...)``) in ``text`` with x0 < x1 and y0 < y1, else None."""
    # "[ 3 7, 2 0, 5 0, 5 0 ]": a word-level tokenizer decodes one digit per token
    match = _BOX.search(_SPACED_DIGITS.sub(lambda m: m.group(0).replace(" ", ""), text))
    if match is None:
        return None
    x0, y0, x1, y1 = (float(v) for v in match.groups())
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 and all(map(math.isfinite, (x0, y0, x1, y1))) else None


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def is_formatted(output: str, require_think: bool = False) -> bool:
    """``<think>...</think><answer>...</answer>`` (think optional unless required), nothing else but whitespace,
    no tag inside a block, and a non-blank answer."""
    match = (_FORMAT_THINK if require_think else _FORMAT).fullmatch(output)
    return match is not None and bool(match.group(1).strip())


def overlong_penalty(length: int, max_length: int, cache: int) -> float:
    """DAPO's overlong shaping: 0 up to ``max_length - cache``, then linear down to -1 at ``max_length``, -1 past it."""
    start = max_length - cache
    if length <= start:
        return 0.0
    if length <= max_length:
        return (start - length) / cache
    return -1.0


def _field(metadata: Sequence[Mapping[str, Any]], i: int, key: str, reward: str) -> Any:
    if key not in metadata[i]:
        raise RewardError(f"reward '{reward}': batch position {i} has no '{key}' in its metadata")
    return metadata[i][key]


def _target_box(metadata: Sequence[Mapping[str, Any]], i: int, reward: str) -> Box:
    box = _field(metadata, i, "box", reward)
    ok = isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
    if not ok or not (box[2] > box[0] and box[3] > box[1]):
        raise RewardError(f"reward '{reward}': batch position {i} has no valid target box ({box!r})")
    return (float(box[0]), float(box[1]), float(box[2]), float(box[3]))


def _tensor(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


class _AnswerReward(TextReward):
    differentiable = False
    groupwise = False
    output_range = (0.0, 1.0)


@register_reward("answer_accuracy")
class AnswerAccuracy(_AnswerReward):
    """1 if the answer equals ``metadata["answer"]`` after normalisation (numbers as numbers), else 0."""

    name = "answer_accuracy"
    summary = "exact answer match after normalisation (numbers as numbers, yes/no), 0/1"
    needs_metadata = ("answer",)

    def score(
        self, outputs: Sequence[str], prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        targets = [str(_field(metadata, i, "answer", self.name)) for i in range(len(outputs))]
        return {self.name: _tensor([float(answer_matches(o, t, metadata[i].get("choices")))
                                    for i, (o, t) in enumerate(zip(outputs, targets, strict=True))])}


@register_reward("box_iou")
class BoxIoU(_AnswerReward):
    """IoU of the answer's ``[x0, y0, x1, y1]`` with ``metadata["box"]``; 0 when no box parses."""

    name = "box_iou"
    summary = "IoU of the answered [x0, y0, x1, y1] with the target box (0 if unparsable)"
    needs_metadata = ("box",)

    def ious(self, outputs: Sequence[str], metadata: Sequence[dict[str, Any]]) -> list[float]:
        out = []
        for i, output in enumerate(outputs):
            box = parse_box(extract_answer(output))
            out.append(0.0 if box is None else iou(box, _target_box(metadata, i, self.name)))
        return out

    def score(
        self, outputs: Sequence[str], prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        return {self.name: _tensor(self.ious(outputs, metadata))}


def _threshold_problem(name: str, threshold: Any) -> str | None:
    if isinstance(threshold, (int, float)) and not 0.0 < threshold <= 1.0:
        return f"reward '{name}': threshold must be in (0, 1], got {threshold}"
    return None


@register_reward("box_detection")
class BoxDetection(BoxIoU):
    """1 if the answered box has IoU >= ``threshold`` (default 0.5, the PASCAL VOC rule) with the target, else 0;
    component: ``box_iou``."""

    name = "box_detection"
    summary = "1 if IoU of the answered box with the target >= threshold (default 0.5)"

    def __init__(self, threshold: float = 0.5) -> None:
        problem = _threshold_problem(self.name, threshold)
        if problem is not None:
            raise ValueError(problem)
        self.threshold = float(threshold)

    @classmethod
    def option_problems(cls, options: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        """A threshold outside (0, 1], found when a recipe loads (``rewards.base.reward_option_problems``)."""
        problem = _threshold_problem(cls.name, options.get("threshold", 0.5))
        if problem is not None:
            yield "threshold", problem

    def score(
        self, outputs: Sequence[str], prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        ious = self.ious(outputs, metadata)
        return {self.name: _tensor([float(v >= self.threshold) for v in ious]), "box_iou": _tensor(ious)}


@register_reward("answer_format")
class AnswerFormat(_AnswerReward):
    """1 if the output is ``<think>...</think><answer>...</answer>`` or ``<answer>...</answer>`` and nothing but
    whitespace around (``require_think``: the think block is required), else 0."""

    name = "answer_format"
    summary = "1 if the output is [<think>...</think>]<answer>...</answer> and nothing else (R1 format)"

    def __init__(self, require_think: bool = False) -> None:
        self.require_think = bool(require_think)

    def score(
        self, outputs: Sequence[str], prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        return {self.name: _tensor([float(is_formatted(o, self.require_think)) for o in outputs])}


def _length_problems(name: str, options: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    max_length, cache = options.get("max_length", 512), options.get("cache", 128)
    if isinstance(max_length, int) and max_length < 1:
        yield "max_length", f"reward '{name}': max_length must be >= 1, got {max_length}"
    elif isinstance(cache, int) and isinstance(max_length, int) and not 1 <= cache <= max_length:
        yield "cache", f"reward '{name}': cache must be from 1 to max_length ({max_length}), got {cache}"


@register_reward("length_penalty")
class LengthPenalty(_AnswerReward):
    """DAPO's overlong reward shaping (Yu et al., 2025): 0 up to ``max_length - cache``, linear to -1 at
    ``max_length``, -1 beyond. Length is counted in whitespace-separated words (``unit="words"``, ``str.split``: a
    tokenizer-free stand-in for tokens, about 0.75 words a token in English) or in characters (``unit="chars"``)."""

    name = "length_penalty"
    summary = "DAPO overlong shaping: 0 to max_length - cache (words or chars), linear to -1 at max_length"
    output_range = (-1.0, 0.0)

    def __init__(
        self, max_length: int = 512, cache: int = 128, unit: Literal["words", "chars"] = "words"
    ) -> None:
        problem = next(_length_problems(self.name, {"max_length": max_length, "cache": cache}), None)
        if problem is not None:
            raise ValueError(problem[1])
        if unit not in ("words", "chars"):
            raise ValueError(f"reward '{self.name}': unit must be 'words' or 'chars', got {unit!r}")
        self.max_length, self.cache, self.unit = int(max_length), int(cache), unit

    @classmethod
    def option_problems(cls, options: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        """Lengths the constructor refuses, found when a recipe loads (``rewards.base.reward_option_problems``)."""
        yield from _length_problems(cls.name, options)

    def length(self, output: str) -> int:
        return len(output.split()) if self.unit == "words" else len(output)

    def score(
        self, outputs: Sequence[str], prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        values = [overlong_penalty(self.length(o), self.max_length, self.cache) for o in outputs]
        return {self.name: _tensor(values)}


@register_reward("shapes_answer")
class ShapesAnswer(_AnswerReward):
    """The ShapesWorld QA task reward: ``box_iou`` for grounding items, ``answer_accuracy`` for every other type.

    Component ``answer_correct``: 1 for a right answer (IoU >= 0.5 for a box), the pass / fail view of the same
    score. ``per_type_means`` breaks a batch down by question type for logging.
    """

    name = "shapes_answer"
    summary = (
        "ShapesWorld QA: box IoU for grounding, exact answer for the other types; component answer_correct"
    )
    needs_metadata = ("type", "answer")

    def score(
        self, outputs: Sequence[str], prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        values, correct = [], []
        for i, output in enumerate(outputs):
            if _field(metadata, i, "type", self.name) == "grounding":
                box = parse_box(extract_answer(output))
                value = 0.0 if box is None else iou(box, _target_box(metadata, i, self.name))
                values.append(value)
                correct.append(float(value >= 0.5))
            else:
                target = str(_field(metadata, i, "answer", self.name))
                values.append(float(answer_matches(output, target, metadata[i].get("choices"))))
                correct.append(values[-1])
        return {self.name: _tensor(values), "answer_correct": _tensor(correct)}


@register_reward("vqa_answer")
class VQAAnswer(ShapesAnswer):
    """A visual question set's answer reward (``vqa_data``): ``box_iou`` for grounding items, the choice letter for
    multiple choice, ``answer_accuracy`` (numbers as numbers) for the rest; component ``answer_correct``."""

    name = "vqa_answer"
    summary = "visual QA: box IoU for grounding, choice letter / number / exact answer otherwise; answer_correct"


VQA_TYPES = ("multiple_choice", "numeric", "open")  # vqa_data's types besides grounding


def per_type_means(scores: torch.Tensor, metadata: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean score per question type present in the batch (``{type: mean}``, in ``QUESTION_TYPES`` order, then
    the question sets' types)."""
    from visalign.worlds.shapes.questions_phrasings import QUESTION_TYPES

    kinds = [m.get("type") for m in metadata]
    out = {}
    for kind in (*QUESTION_TYPES, *VQA_TYPES):
        sel = torch.tensor([k == kind for k in kinds])
        if bool(sel.any()):
            out[kind] = float(scores[sel].float().mean())
    return out
