"""Visual question sets in the layouts the field publishes them in, read into the items a VLM policy trains on.

A set is a data file (``.parquet``, ``.jsonl`` or ``.json``) or a folder in the Hugging Face Hub layout, where a
split's files are ``data/{split}-00000-of-0000N.parquet`` (or ``{split}.jsonl`` / ``{split}-*.parquet`` at the top);
``data.train_split`` / ``data.test_split`` name the splits (TRL's ``dataset_train_split`` / ``dataset_test_split``).
Each row holds one image and one question, in one of three layouts:

* **columns** (R1-V, Visual-RFT, TRL's multimodal GRPO sets such as ``lmms-lab/multimodal-open-r1-8k-verified``):
  ``image`` (or ``images``, a list: its first image), ``problem`` or ``question``, ``solution`` or ``answer``, and
  for multiple choice ``choices`` or ``options`` (a list; the answer is its index or letter);
* **conversations** (LLaVA, VLM-R1's REC files): ``image`` and ``conversations``
  ``[{"from": "human", "value": "<image>\\nQ"}, {"from": "gpt", "value": "A"}]``;
* **messages** (TRL's conversational format): ``images`` and ``messages``, a user turn holding ``{"type": "image"}``
  and ``{"type": "text", "text": Q}``, and an assistant turn with the answer.

An answer written as ``<answer>...</answer>`` (R1-V's solutions) is read inside the tags. The item's ``type``:

* ``multiple_choice``: choices given; the answer is their letter (A, B, ...), the choices are listed under the
  question as ``A. ...`` lines unless the question already holds them;
* ``grounding``: the answer is a box ``[x0, y0, x1, y1]`` (REC), kept as ``box`` for the IoU rewards. Coordinates
  are the dataset's, in pixels of the image it holds; Qwen2.5-VL answers in pixels of its resized input, which
  for images within the processor's ``max_pixels`` differs by the rounding to 28 px only (resize larger images
  beforehand, or the target boxes with them);
* ``numeric``: the answer is a number (compared as a number by ``answer_accuracy``);
* ``open``: anything else (compared exactly after normalisation).

Images are opened when a rollout needs them (``data_files.ImageRef``): a path (relative to the data file), bytes
(the ``{"bytes", "path"}`` struct of the ``datasets`` ``Image`` feature) or base64. Every problem is a
``UserError`` naming the file, the line or row, and the key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from visalign.data_files import image_ref, read_rows
from visalign.errors import UserError

SUFFIXES = (".parquet", ".jsonl", ".ndjson", ".json")
QUESTION_KEYS = ("problem", "question")
ANSWER_KEYS = ("solution", "answer")
CHOICE_KEYS = ("choices", "options")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ANSWER_TAGS = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_BOX = re.compile(rf"^\s*[\[(]\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*[\])]\s*$")
_NUMBER = re.compile(rf"^\s*{_NUM}\s*$")
_LISTED = re.compile(r"(?m)^\s*\(?A[.):]")


def is_vqa_source(source: str) -> bool:
    """Whether ``source`` names a visual question set: a folder, a ``.parquet`` / ``.json`` file, or a ``.jsonl``
    whose first row has an image column (ShapesWorld QA files describe their image as a scene instead)."""
    path = Path(source)
    if path.is_dir() or path.suffix.lower() in (".parquet", ".json"):
        return True
    if path.suffix.lower() not in (".jsonl", ".ndjson") or not path.is_file():
        return False
    for _loc, row in read_rows(path, "question set"):
        image = row.get("image")
        return "images" in row or isinstance(image, str) or (isinstance(image, dict) and "metadata" not in image)
    return False


def split_files(folder: Path, split: str) -> list[Path]:
    """The files of ``split`` in a Hub-layout folder: ``data/{split}[-.]*`` or ``{split}[-.]*`` at the top."""
    for root in (folder / "data", folder):
        if root.is_dir():
            files = sorted(p for p in root.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file()
                           and (p.stem == split or p.stem.startswith(f"{split}-")))
            if files:
                return files
    found = sorted(p.name for root in (folder / "data", folder) if root.is_dir() for p in root.iterdir()
                   if p.suffix.lower() in SUFFIXES)
    raise UserError(f"{folder}: no files of split '{split}' (looked for data/{split}-*.parquet and "
                    f"{split}.jsonl / .json / .parquet; found: {', '.join(found) or 'no data files'})")


def load_vqa(source: str | Path, split: str = "train", question_template: str | None = None
             ) -> list[dict[str, Any]]:
    """Every row of the set (a file, or ``split``'s files of a folder) as a VLM item; ``question_template``
    (holding ``{question}``) rewrites each question."""
    path = Path(source)
    if not path.exists():
        raise UserError(f"{path}: question set not found")
    files = split_files(path, split) if path.is_dir() else [path]
    items = [item for file in files for item in _load_file(file)]
    if not items:
        raise UserError(f"{path}: no questions in {', '.join(map(str, files))}")
    return [with_question(item, question_template.replace("{question}", item["prompt"]))
            for item in items] if question_template else items


def with_question(item: dict[str, Any], question: str) -> dict[str, Any]:
    """``item`` asking ``question`` (its ``prompt`` and its user message's text)."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return {**item, "prompt": question, "messages": messages}


def _load_file(path: Path) -> list[dict[str, Any]]:
    return [row_item(row, loc, path.parent) for loc, row in read_rows(path, "question set", SUFFIXES)]


def _text(value: Any, at: str) -> str:
    if isinstance(value, bool):  # a yes / no answer stored as a boolean
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return str(int(value)) if float(value).is_integer() else str(value)
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{at}: expected a non-empty string, got {value!r:.80}")
    return value.strip()


def _first(row: dict[str, Any], keys: tuple[str, ...]) -> str | None:  # parquet rows hold null columns too
    return next((k for k in keys if row.get(k) is not None), None)


def _from_conversations(turns: Any, loc: str) -> tuple[str, str]:
    if not isinstance(turns, list) or len(turns) < 2 or not all(isinstance(t, dict) for t in turns):
        raise UserError(f"{loc} [conversations]: expected a list of turns, a human one then a gpt one")
    human = next((t for t in turns if t.get("from") in ("human", "user")), None)
    answer = next((t for t in turns if t.get("from") in ("gpt", "assistant")), None)
    if human is None or answer is None:
        raise UserError(f"{loc} [conversations]: needs a turn from 'human' and one from 'gpt'")
    question = _text(human.get("value"), f"{loc} [conversations: human]").replace("<image>", "").strip()
    return question, _text(answer.get("value"), f"{loc} [conversations: gpt]")


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _from_messages(messages: Any, loc: str) -> tuple[str, str]:
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise UserError(f"{loc} [messages]: expected a list of messages with 'role' and 'content'")
    user = next((m for m in messages if m.get("role") == "user"), None)
    reply = next((m for m in messages if m.get("role") == "assistant"), None)
    if user is None or reply is None:
        raise UserError(f"{loc} [messages]: needs a 'user' message and an 'assistant' message with the answer")
    question = _text(_content_text(user.get("content")).replace("<image>", "").strip(), f"{loc} [messages: user]")
    return question, _text(_content_text(reply.get("content")), f"{loc} [messages: assistant]")


def _question_answer(row: dict[str, Any], loc: str) -> tuple[str, str]:
    if row.get("conversations") is not None:
        return _from_conversations(row["conversations"], loc)
    if row.get("messages") is not None:
        return _from_messages(row["messages"], loc)
    q, a = _first(row, QUESTION_KEYS), _first(row, ANSWER_KEYS)
    if q is None or a is None:
        raise UserError(f"{loc}: needs a question ('problem' or 'question') and an answer ('solution' or "
                        f"'answer'), or 'conversations' / 'messages'; keys: {', '.join(sorted(row)) or 'none'}")
    return _text(row[q], f"{loc} [{q}]"), _text(row[a], f"{loc} [{a}]")


def _image_value(row: dict[str, Any], loc: str) -> tuple[Any, str]:
    for key in ("image", "images"):
        value = row.get(key)
        if isinstance(value, (list, tuple)):  # a list of images: the first (one image per question)
            value = value[0] if value else None
        if value is not None:
            return value, key
    raise UserError(f"{loc}: needs an image ('image', or 'images' with at least one)")


def _choice_answer(raw: Any, answer: str, choices: list[str], at: str) -> str:
    """The answer's letter. An integer is an index into the choices (ScienceQA's convention); a string is the
    text of a choice (compared case- and space-insensitively: choices "1", "2", "3" are texts, not indices) or a
    letter."""
    letters = LETTERS[: len(choices)]
    if isinstance(raw, (int, float)) and not isinstance(raw, bool) and float(raw).is_integer():
        if 0 <= int(raw) < len(choices):
            return letters[int(raw)]
        raise UserError(f"{at}: answer index {int(raw)} is outside the {len(choices)} choices")
    folded = [" ".join(c.casefold().split()) for c in choices]
    wanted = " ".join(answer.casefold().split())
    if wanted in folded:
        return letters[folded.index(wanted)]
    text = answer.strip().strip("()").rstrip(".")
    if len(text) == 1 and text.upper() in letters:
        return text.upper()
    raise UserError(f"{at}: answer {answer!r} is neither one of the choices, a letter {letters[0]}-{letters[-1]} "
                    f"nor an index below {len(choices)}")


def row_item(row: dict[str, Any], loc: str, base: Path) -> dict[str, Any]:
    """One row as an item: ``prompt``, ``messages``, ``image`` (an ``ImageRef``), ``type``, ``answer`` (and
    ``box`` / ``choices``), ``source`` (its location)."""
    question, answer = _question_answer(row, loc)
    answer_key = _first(row, ANSWER_KEYS)
    match = _ANSWER_TAGS.search(answer)
    answer = match.group(1).strip() if match else answer
    value, key = _image_value(row, loc)
    item: dict[str, Any] = {"image": image_ref(value, f"{loc} [{key}]", base), "source": loc}
    choice_key = _first(row, CHOICE_KEYS)
    box = _BOX.match(answer)
    if choice_key is not None:
        choices = row[choice_key]
        choices = list(choices) if isinstance(choices, (list, tuple)) else choices
        if not isinstance(choices, list) or len(choices) < 2 or len(choices) > len(LETTERS):
            raise UserError(f"{loc} [{choice_key}]: expected a list of 2-{len(LETTERS)} choices")
        choices = [_text(c, f"{loc} [{choice_key}]") for c in choices]
        raw = row.get(answer_key) if answer_key is not None else answer
        item.update(type="multiple_choice", choices=choices, answer=_choice_answer(raw, answer, choices, loc))
        if not _LISTED.search(question):
            question += "\n" + "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    elif box is not None:
        x0, y0, x1, y1 = (float(v) for v in box.groups())
        if not (x1 > x0 and y1 > y0):
            raise UserError(f"{loc}: box answer {answer!r} must have x0 < x1 and y0 < y1")
        item.update(type="grounding", answer=answer, box=[x0, y0, x1, y1])
    else:
        item.update(type="numeric" if _NUMBER.match(answer) else "open", answer=answer)
    return with_question(item, question)
