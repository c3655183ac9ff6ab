"""The model card (``README.md``) written next to a trained model's weights, from its training summary.

The summary is what ``metrics.json`` holds: ``training`` (data, optimisation, the model it started from),
``heldout`` (the held-out sets), ``agreement`` (``heldout_agreement``), ``pixel_attack`` and a free ``note``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visalign.rewards.shapes_rm_model import RMConfig, ShapesRM


def metrics_table(metrics: dict[str, dict[str, float]]) -> str:
    """The agreement figures as a Markdown table."""
    lines = [
        "| held-out set | pairs | Pearson | Spearman | MAE | strict accuracy | strict AUC | verifier strict rate |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in metrics.items():
        label_ = name.strip() if not name.startswith("  ") else f"&nbsp;&nbsp;{name.strip()}"
        lines.append(
            f"| {label_} | {m['n']} | {m['pearson']:.3f} | {m['spearman']:.3f} | {m['mae']:.3f} | "
            f"{m['strict_accuracy']:.3f} | {m['strict_auc']:.3f} | {m['verifier_strict_rate']:.3f} |"
        )
    return "\n".join(lines)


def _init_line(t: dict[str, Any]) -> str:
    """The card's line about the model a run was initialised from (recursively, for a chain of runs)."""
    if not t.get("init"):
        return ""
    prev = t.get("init_training")
    if not prev:
        return f"- initialised from the model in `{Path(t['init']).name}` (its training facts are not recorded)\n"
    text = (
        f"- initialised from a model trained the same way on {prev['pairs']:,} pairs {prev['by_source']} "
        f"for {prev['steps']} steps of batch {prev['batch_size']} (data {prev['data_seconds']:.0f} s, "
        f"training {prev['train_seconds']:.0f} s)\n"
    )
    return text + _init_line(prev).replace("- initialised", "  - which was itself initialised")


def _intro(c: RMConfig) -> str:
    return f"""# shapes-rm: a learned, differentiable ShapesWorld reward model

A prompt-conditioned CNN that predicts the ShapesWorld verifier's soft score (and its strict verdict) for
an (image, prompt) pair. The verifier is not differentiable; this model is, so reward back-propagation
methods (ReFL, DRaFT, AlignProp) can optimise it. Measure what they really achieved with the verifier
(`shapes_soft` / `shapes_strict`, `visalign eval`): a model optimised against a learned reward can find
images that this network scores highly and the verifier does not.

Use: `build_reward("shapes_rm")` (this folder) or `build_reward("shapes_rm", path=FOLDER)`. Main score
`shapes_rm` = sigmoid(soft logit) in [0, 1]; component `shapes_rm_strict` = predicted probability that the
strict verdict is correct. Prompts must be ShapesWorld prompts: a word outside the {len(c.vocab) - 2}-token
vocabulary (words and digits) is an error.
"""


def _architecture(model: ShapesRM) -> str:
    c = model.config
    return f"""## Architecture

- Prompt: lower-cased words (numbers split into digits), {c.embed_dim}-d embeddings, a bidirectional GRU
  ({c.text_dim} per direction); prompt vector of {2 * c.text_dim} features.
- Image: {c.image_size}x{c.image_size} RGB (other sizes are resized, differentiably) plus two coordinate
  channels; 3x3 convolutions with channels {list(c.channels)} and strides {list(c.strides)}; each followed by
  GroupNorm ({c.groups} groups, no affine), FiLM from the prompt vector, SiLU.
- Head: mean, max and prompt-queried attention pooling + the prompt vector, MLP ({c.head_dim}) to two logits.
- Parameters: {model.num_parameters():,} (float32 safetensors).
"""


def _training_data(t: dict[str, Any]) -> str:
    gen = (
        f"{t['generated_images']} generated images of {t['generated_prompts']} train prompts "
        f"(from {', '.join(t['generated_sources'])}), each paired with its own prompt and once with another "
        f"prompt of the same tag"
        if t["generated_images"]
        else "none (no generator was available when this model was trained)"
    )
    return f"""## Training data

Every pair is labelled by the verifier on that exact (image, prompt) pair. Training prompts are the
ShapesWorld `train` split; synthetic images are degraded at random (40% within the verifier's specified
limits, 20% harder).

- pairs: {t["pairs"]:,}, by source: {t["by_source"]}
- generated: {gen}
- optimisation: {t["steps"]} steps of batch {t["batch_size"]}, AdamW, lr {t["lr"]} (cosine), seed {t["seed"]}
{_init_line(t)}- time: data {t["data_seconds"]:.0f} s, training {t["train_seconds"]:.0f} s on {t["threads"]} CPU thread(s)
"""


def _agreement(h: dict[str, Any], metrics: dict[str, dict[str, float]]) -> str:
    return f"""## Agreement with the verifier on held-out data

Held-out generated images: {h["generated_images"]} images of {h["generated_prompts"]} prompts never used in
training ({h.get("generated_groups") or "none"}). "generated, own prompt" scores each against the prompt it
was sampled for (also broken down by tag), "generated, another prompt of the tag" against another prompt of
the same tag. Held-out synthetic pairs: {h["synthetic_pairs"]} pairs over the `test` split's prompts (prompt
strings and some compositions that never occur in training), by source {h["synthetic_by_source"]}.

Pearson / Spearman: correlation of the predicted and the verifier's soft scores; MAE: mean absolute error of
the soft score; strict accuracy: the strict head thresholded at 0.5 against the verifier's verdict (compare
with the verifier strict rate: always answering the majority verdict scores max(rate, 1 - rate)); strict AUC:
the chance that a pair the verifier accepts gets a higher `shapes_rm` score than a pair it rejects.

{metrics_table(metrics)}
"""


def _reward_hacking(a: dict[str, Any]) -> str:
    return f"""## Reward hacking check

Gradient ascent on the pixels of {a["n"]} mismatched renders (test prompts; Adam, lr {a["lr"]}, {a["steps"]} steps,
mean absolute pixel change {a["mean_abs_pixel_change"]:.3f}) raises this model's mean score from
{a["rm_before"]:.3f} to {a["rm_after"]:.3f}, while the verifier's mean soft score goes from
{a["verifier_soft_before"]:.3f} to {a["verifier_soft_after"]:.3f} (strict {a["verifier_strict_before"]:.3f} to
{a["verifier_strict_after"]:.3f}). Unconstrained pixels are not a generator, but the lesson holds: optimise
this model, judge with the verifier, and keep the KL / step budget of reward back-propagation modest.
"""


_RETRAIN = """Retrain: `visalign rewards train-shapes-rm --out DIR` (see `docs/shapes_rm.md`); `metrics.json` holds these
figures and the training loss curve.
"""


def model_card(model: ShapesRM, summary: dict[str, Any]) -> str:
    """A Markdown model card from a training summary (written next to the weights)."""
    sections = [
        _intro(model.config),
        _architecture(model),
        _training_data(summary["training"]),
        _agreement(summary["heldout"], summary["agreement"]),
        _reward_hacking(summary["pixel_attack"]),
        f"{summary.get('note', '')}\n",
        _RETRAIN,
    ]
    return "\n".join(sections)
