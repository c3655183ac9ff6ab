"""A run's prompts: where they come from and the order the loop takes them in.

``load_prompts`` reads a ShapesWorld split name, a JSONL file of metadata (one object with a ``"prompt"`` per
line: the verifier's metadata travels with its prompt) or a text file of prompts; ``train_prompts`` applies the
config's tag balancing; ``PromptStream`` is the endless, seeded, resumable pass over them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from visalign.errors import UserError
from visalign.jsonl import read_jsonl
from visalign.seeding import sample_seed, torch_generator

if TYPE_CHECKING:
    from visalign.config import Config


def load_prompts(source: str, split: str = "train", question_template: str | None = None) -> list[dict[str, Any]]:
    """A ShapesWorld split name (``train`` / ``test`` / ``iid`` prompts, ``qa_train`` / ``qa_test`` questions), a JSONL file
    of metadata (each with a "prompt") or of questions (each with "messages"), a visual question set
    (``vqa_data``: a data file with an image column, or a Hub-layout folder whose ``split`` it reads), or a text
    file of prompts. ``question_template`` (``data.question_template``) rewrites a question set's questions.

    A question gets its text as ``prompt`` (what the logs and the report show)."""
    from visalign.vqa_data import is_vqa_source, load_vqa
    from visalign.worlds.shapes.prompts import SPLITS, load_prompt_file, load_split

    if source in SPLITS:
        return load_split(source)
    if source in ("qa_train", "qa_test"):
        return _questions(source.removeprefix("qa_"))
    if is_vqa_source(source):
        return load_vqa(source, split, question_template)
    path = Path(source)
    if not path.is_file():
        raise UserError(f"{path}: prompt file not found")
    if path.suffix == ".jsonl" and _first_row_has(path, "messages"):
        return _questions(path)
    if path.suffix == ".jsonl":
        return _load_jsonl_prompts(path, load_prompt_file)
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"{path}: no prompts in file")
    return [{"prompt": p} for p in prompts]


def _first_row_has(path: Path, key: str) -> bool:
    for _lineno, row in read_jsonl(path):
        return key in row
    return False


def _questions(source: str | Path) -> list[dict[str, Any]]:
    from visalign.worlds.shapes.questions import load_qa_split
    from visalign.worlds.shapes.questions_io import question_text

    return [{**item, "prompt": question_text(item)} for item in load_qa_split(source)]


def _load_jsonl_prompts(path: Path, load_prompt_file: Any) -> list[dict[str, Any]]:
    rows = []
    for lineno, row in read_jsonl(path):
        if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise UserError(f"{path}:{lineno}: each line must be an object with a non-empty \"prompt\" string")
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: no prompts in file")
    if any("include" in r for r in rows):
        return load_prompt_file(path)  # GenEval-style metadata: validated by the world's checker
    return rows


def group_of(item: dict[str, Any]) -> str | None:
    """What balancing and stratified subsets group by: a prompt's ``tag``, else a question's ``type``."""
    return item.get("tag", item.get("type"))


def balance_by_tag(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each tag's items repeated in order up to the largest tag's count (items without a tag form one group)."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for item in items:
        groups.setdefault(group_of(item), []).append(item)
    top = max(len(g) for g in groups.values())
    return [g[i % len(g)] for g in groups.values() for i in range(top)]


def train_prompts(cfg: Config) -> list[dict[str, Any]]:
    """The run's training prompts: ``data.train`` without the prompts of ``data.exclude`` (e.g. the held-out
    ``iid`` split), tag-balanced when ``data.balance_tags``."""
    items = load_prompts(cfg.data.train, cfg.data.train_split, cfg.data.question_template)
    if cfg.data.exclude:
        held = {item.get("prompt") for source in cfg.data.exclude for item in load_prompts(source)}
        items = [item for item in items if item.get("prompt") not in held]
        if not items:
            raise UserError(f"data.exclude {cfg.data.exclude} removes every prompt of data.train ({cfg.data.train})")
    return balance_by_tag(items) if cfg.data.balance_tags else items


def stratified(items: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The first ``n`` items taken round-robin over tags (so that a subset still covers every tag)."""
    by_tag: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        by_tag.setdefault(str(group_of(item) or ""), []).append(item)
    out: list[dict[str, Any]] = []
    depth = 0
    while len(out) < min(n, len(items)):
        for rows in by_tag.values():
            if depth < len(rows) and len(out) < n:
                out.append(rows[depth])
        depth += 1
    return out


class PromptStream:
    """Endless shuffled pass over the prompts; the permutation of epoch e is seeded by (seed, e)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        self.epoch, self.pos = 0, 0

    def _perm(self) -> torch.Tensor:
        g = torch_generator(sample_seed(self.seed, self.epoch, 0, 0, stream="prompts"))
        return torch.randperm(self.size, generator=g)

    def next(self, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            perm = self._perm()
            take = min(n - len(out), self.size - self.pos)
            out += perm[self.pos : self.pos + take].tolist()
            self.pos += take
            if self.pos == self.size:
                self.epoch, self.pos = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos, "size": self.size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["size"] != self.size:
            raise UserError(f"checkpoint was trained on {state['size']} prompts, this run has {self.size}")
        self.epoch, self.pos = state["epoch"], state["pos"]
