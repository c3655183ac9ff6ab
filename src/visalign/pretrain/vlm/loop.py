"""The tiny VLM's supervised fine-tuning: a randomly initialised ``Qwen2VLForConditionalGeneration`` learns to
answer the train-split ShapesWorld questions (cross-entropy on the answer tokens).

Run directory layout::

    run_dir/config.yaml                    the resolved config
    run_dir/checkpoints/vlm.safetensors    resumable state (weights, AdamW state, step, wall time; atomic)
    run_dir/metrics.jsonl                  loss / lr / wall time every ``log.every`` steps
    run_dir/eval.jsonl                     test-split exact match (overall, per type, held out) per evaluation
    run_dir/exports/step-N/                the model folder at each evaluation (Qwen2-VL layout)
    run_dir/model/                         the final model folder, with its card (README.md) and final_eval.json

Epoch ``e`` visits the train questions in the order of a permutation seeded by ``(seed, e)`` alone, and step ``s``
takes the next ``batch_size`` of them, so a resumed run sees the batches an uninterrupted one would: with the
AdamW state restored, the weights match bitwise on CPU.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from visalign.config_io import dump_config
from visalign.errors import UserError
from visalign.jsonl import append_jsonl, truncate_jsonl
from visalign.lr_schedule import lr_factor
from visalign.models.vlm import vlm_forward
from visalign.models.vlm_build import TinyVLMSpec, build_vlm, save_vlm
from visalign.pretrain.checkpoint import load_checkpoint, save_checkpoint
from visalign.pretrain.data import STAGE_IDS
from visalign.pretrain.stage import due, log_metrics, set_learning_rate, stage_progress
from visalign.pretrain.vlm.card import write_card
from visalign.pretrain.vlm.config import VLMPretrainConfig
from visalign.pretrain.vlm.data import SFTExample, answer_loss, caption_examples, collate, encode_examples
from visalign.pretrain.vlm.dense import DenseHead, MergedTokens, with_targets
from visalign.pretrain.vlm.evaluation import greedy_answers, score_answers
from visalign.run_directory import RunLock
from visalign.seeding import seed_from_ints, torch_generator

FINAL_EVAL = "final_eval.json"


def model_spec(cfg: VLMPretrainConfig) -> TinyVLMSpec:
    return TinyVLMSpec(**cfg.model.model_dump())


def load_questions(source: str) -> list[dict[str, Any]]:
    """A shipped split (``qa_train`` / ``qa_test``) or a question JSONL file."""
    from visalign.worlds.shapes.questions import load_qa_file, load_qa_split

    if source in ("qa_train", "qa_test"):
        return load_qa_split(source.removeprefix("qa_"))
    return load_qa_file(source)


def train_questions(cfg: VLMPretrainConfig, run_dir: Path, console: Console) -> list[dict[str, Any]]:
    """``data.train``, or with ``data.train_per_type`` the generated larger train split (cached in the run)."""
    from visalign.worlds.shapes.questions import generate_qa_splits, load_qa_file, write_qa_file

    n = cfg.data.train_per_type
    if not n:
        return load_questions(cfg.data.train)
    if cfg.data.train != "qa_train":
        raise UserError(f"data.train_per_type={n} generates the ShapesWorld train split; data.train must be "
                        f"qa_train, not {cfg.data.train}")
    cache = run_dir / "qa_train_generated.jsonl"
    if cache.is_file():
        items = load_qa_file(cache)
        if len(items) == 7 * n:
            return items
    t0 = time.perf_counter()
    items = generate_qa_splits(0, train_per_type=n)["train"]
    write_qa_file(cache, items)
    console.print(f"vlm: generated {len(items)} train questions in {time.perf_counter() - t0:.0f}s ({cache})")
    return items


def step_indices(seed: int, step: int, batch_size: int, n: int, stream: int = 0) -> list[int]:
    """The example indices of step ``step``: the next ``batch_size`` of the epoch permutations of ``stream``
    (0: questions, 1: captions), in order."""
    out: list[int] = []
    position = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(position, n)
        order = torch.randperm(n, generator=torch_generator(seed_from_ints(seed, STAGE_IDS["vlm"], stream, epoch)))
        take = order[offset : offset + batch_size - len(out)].tolist()
        out += take
        position += len(take)
    return out


def _state(model: torch.nn.Module, head: DenseHead | None, opt: torch.optim.Optimizer, step: int, wall: float
           ) -> dict[str, Any]:
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}  # tied weights: one copy each
    state = {"step": step, "model": weights, "optim": opt.state_dict(), "wall": wall}
    if head is not None:
        state["dense_head"] = {k: v.detach().clone() for k, v in head.state_dict().items()}
    return state


def _resume(model: torch.nn.Module, head: DenseHead | None, opt: torch.optim.Optimizer, path: Path,
            cfg: VLMPretrainConfig, console: Console) -> tuple[int, float]:
    state = load_checkpoint(path)
    if state is None:
        return 0, 0.0
    if state["step"] > cfg.train.steps:
        raise UserError(f"{path}: checkpoint is at step {state['step']}, beyond train.steps={cfg.train.steps}; "
                        f"use a new run_dir (or the export at that step under {path.parent.parent / 'exports'})")
    try:
        model.load_state_dict(state["model"])
        if (head is None) != ("dense_head" not in state):
            raise RuntimeError("train.dense_weight differs from the checkpoint's run")
        if head is not None:
            head.load_state_dict(state["dense_head"])
    except RuntimeError as err:
        raise UserError(f"{path}: does not fit this config's model ({str(err).splitlines()[0]}); "
                        f"use a new run_dir") from None
    opt.load_state_dict(state["optim"])
    console.print(f"vlm: resuming at step {state['step']}")
    return int(state["step"]), float(state["wall"])


def evaluate(model: Any, processor: Any, items: list[dict[str, Any]], cfg: VLMPretrainConfig) -> dict[str, Any]:
    from visalign.prompts import stratified

    chosen = stratified(items, cfg.data.eval_items) if cfg.data.eval_items else items
    answers = greedy_answers(model, processor, chosen, cfg.log.max_new_tokens)
    return {**score_answers(chosen, answers), "answers": answers, "items": chosen}


def _summary(scores: dict[str, Any]) -> str:
    per_type = " ".join(f"{k} {v:.2f}" for k, v in scores["per_type"].items())
    return f"test exact match {scores['overall']:.3f} (held out {scores['held_out']:.3f}) {per_type}"


def step_examples(cfg: VLMPretrainConfig, step: int, questions: list[SFTExample], captions: list[SFTExample]
                  ) -> list[SFTExample]:
    """The batch of step ``step``: ``round(batch_size * caption_fraction)`` captions, the rest questions."""
    n_captions = round(cfg.train.batch_size * cfg.data.caption_fraction) if captions else 0
    picked = [questions[i] for i in step_indices(cfg.seed, step, cfg.train.batch_size - n_captions, len(questions))]
    if n_captions:
        picked += [captions[i] for i in step_indices(cfg.seed, step, n_captions, len(captions), stream=1)]
    return picked


class DenseLoss:
    """The dense loss of the vision tokens (``train.dense_weight`` > 0): the head and the captured tokens."""

    def __init__(self, model: Any, spec: TinyVLMSpec, seed: int) -> None:
        with torch.random.fork_rng():  # the head's own init, leaving the global generator as it was
            torch.manual_seed(seed_from_ints(seed, STAGE_IDS["vlm"], 2))
            self.head = DenseHead(spec.hidden_size, spec.merge_size)
        self.tokens = MergedTokens(model)

    def __call__(self, targets: torch.Tensor) -> torch.Tensor:
        return self.head.loss(self.tokens.take(), targets)


def _train_step(model: Any, opt: torch.optim.Optimizer, data: tuple[list[SFTExample], list[SFTExample]],
                pad: int, cfg: VLMPretrainConfig, step: int, dense: DenseLoss | None) -> dict[str, float]:
    t = cfg.train
    set_learning_rate(opt, t.lr * lr_factor(step, t.warmup, t.steps, "constant", t.decay_steps))
    batch = collate(step_examples(cfg, step, *data), pad)
    logits = vlm_forward(model, batch["input_ids"], batch["attention_mask"], batch["extra"])
    answer = answer_loss(logits, batch["labels"], t.loss_average)
    out = {"answer_tokens": int((batch["labels"] != -100).sum())}
    loss = answer
    if dense is not None:
        dense_loss = dense(batch["dense"])
        loss = answer + t.dense_weight * dense_loss
        out["answer_loss"], out["dense_loss"] = answer.item(), dense_loss.item()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in opt.param_groups for p in group["params"]]
    out["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, t.grad_clip).item()
    opt.step()
    return {"loss": loss.item(), **out}


def run_vlm_pretrain(cfg: VLMPretrainConfig, console: Console | None = None) -> Path:
    """Train (resuming where a checkpoint exists), evaluate, export; returns the final model folder."""
    console = console or Console()
    torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.run_dir)
    with RunLock(run_dir, "pretrain") as lock:
        if lock.stale_message():
            console.print(lock.stale_message(), soft_wrap=True)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
        spec = model_spec(cfg)
        model, processor = build_vlm(spec, seed=cfg.seed)
        train_items, test_items = train_questions(cfg, run_dir, console), load_questions(cfg.data.test)
        t_enc = time.perf_counter()
        examples = encode_examples(processor, train_items)
        dense = DenseLoss(model, spec, cfg.seed) if cfg.train.dense_weight else None
        if dense is not None:
            examples = with_targets(train_items, examples, spec.patch_size, spec.merge_size)
        captions = (caption_examples(processor, train_items, examples, cfg.data.caption_style)
                    if cfg.data.caption_fraction else [])
        console.print(f"vlm: {sum(p.numel() for p in model.parameters()):,} parameters; {len(examples)} train "
                      f"questions and {len(captions)} captions encoded in {time.perf_counter() - t_enc:.1f}s; "
                      f"{len(test_items)} test questions")
        params = list(model.parameters()) + (list(dense.head.parameters()) if dense is not None else [])
        opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        ckpt = run_dir / "checkpoints" / "vlm.safetensors"
        head = dense.head if dense is not None else None
        start, wall = _resume(model, head, opt, ckpt, cfg, console)
        for log in ("metrics.jsonl", "eval.jsonl"):
            truncate_jsonl(run_dir / log, "step", start)
        pad, steps = int(processor.tokenizer.pad_token_id), cfg.train.steps
        t0 = time.perf_counter() - wall
        final_scores = None  # the last step's evaluation when it scored the whole test split: finish reuses it
        model.train()
        with stage_progress(console) as progress:
            task = progress.add_task("vlm", total=steps, completed=start, info="")
            for step in range(start, steps):
                metrics = _train_step(model, opt, (examples, captions), pad, cfg, step, dense)
                done, loss = step + 1, metrics["loss"]
                progress.update(task, completed=done, info=f"loss {loss:.4f}")
                if due(done, cfg.log.every, steps):
                    now = time.perf_counter() - t0
                    row = {"step": done, **metrics, "lr": opt.param_groups[0]["lr"], "wall": now}
                    log_metrics(run_dir / "metrics.jsonl", row, console,
                                f"vlm step {done}/{steps} loss {loss:.4f} wall {now:.0f}s")
                if due(done, cfg.log.eval_every, steps):
                    scores = evaluate(model, processor, test_items, cfg)
                    final_scores = scores if done == steps and not cfg.data.eval_items else None
                    append_jsonl(run_dir / "eval.jsonl", {"step": done, **{k: scores[k] for k in (
                        "overall", "per_type", "held_out", "seen", "n")}})
                    progress.console.print(f"vlm step {done}: {_summary(scores)}")
                    save_vlm(model, processor, run_dir / "exports" / f"step-{done:06d}")
                    model.train()
                if due(done, cfg.log.checkpoint_every, steps):
                    save_checkpoint(ckpt, _state(model, head, opt, done, time.perf_counter() - t0))
        wall = time.perf_counter() - t0
        model.eval()
        out = finish(model, processor, cfg, run_dir / "model", test_items, steps, wall, console, final_scores)
    console.print(f"pretrain done: {out}")
    return out


def finish(model: Any, processor: Any, cfg: VLMPretrainConfig, folder: Path, test_items: list[dict[str, Any]],
           steps: int, wall: float, console: Console, scores: dict[str, Any] | None = None) -> Path:
    """The final model folder: the weights, the whole test split's score (``final_eval.json``; ``scores`` when
    the last step already measured it), the card; also copied to ``export.path`` when set."""
    import json

    save_vlm(model, processor, folder)
    if scores is None:
        scores = score_answers(test_items, greedy_answers(model, processor, test_items, cfg.log.max_new_tokens))
    final = {"step": steps, "train_wall_s": wall, "parameters": sum(p.numel() for p in model.parameters()),
             **{k: scores[k] for k in ("overall", "per_type", "held_out", "seen", "n")}}
    (folder / FINAL_EVAL).write_text(json.dumps(final, indent=1))
    write_card(folder, cfg, final)
    console.print(f"vlm final: {_summary(scores)}")
    if cfg.export.path:
        target = Path(cfg.export.path)
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(folder, target)
        console.print(f"copied to {target}")
    return folder
