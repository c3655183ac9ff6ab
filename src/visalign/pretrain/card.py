"""The model card (README.md) and contact sheet written into a pretrained model folder.

Every number in the card is read from the run directory (``visalign.json``, ``vae/vae_report.json``,
``eval.jsonl``) or measured by the final test-split evaluation (``evaluation.py``), so a card cannot drift from
its model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visalign.jsonl import read_log
from visalign.pretrain.config import PretrainConfig

CONTACT_SHEET = "contact_sheet.png"
BAND = (0.30, 0.70)  # the quality band a base model should land in (room for RL, signal to learn from)
FINAL_EVAL = "final_eval.json"


_PREDICTION_WORDS = {"epsilon": "epsilon-prediction", "v_prediction": "v-prediction", "sample": "x0-prediction"}


def _mixture(cfg: PretrainConfig) -> str:
    """How the training items were drawn, for the card's data sentence."""
    tr = cfg.train
    if not tr.tag_balanced:
        return ", items drawn uniformly"
    text = ", tags drawn uniformly"
    if tr.tag_weights:
        odds = ", ".join(f"{tag} {w:g}" for tag, w in sorted(tr.tag_weights.items()))
        text = f", tags drawn with odds {odds} (1 for each other tag)"
    if tr.tags:
        text += f", only {', '.join(tr.tags)}"
    if tr.text_lengths:
        text += f", numbers of {', '.join(map(str, tr.text_lengths))} digit(s) only"
    if tr.text_length_balanced:
        text += ", text numbers by a uniform digit count first"
    if not cfg.vae.train_mixture and (tr.tag_weights or tr.text_lengths):
        text += "; the autoencoder's scenes at even odds over every tag and number length"
    return text


def contact_sheet(evaluation: dict[str, Any], path: Path, per_tag: int = 2) -> Path:
    """``per_tag`` test prompts per tag, all their images, captioned with the verdict and the prompt."""
    from visalign.report.grid import make_grid

    k = evaluation["images_per_prompt"]
    metas, images, rows = evaluation["metadata"], evaluation["images"], evaluation["results"]["images"]
    chosen: list[int] = []
    seen: dict[str, int] = {}
    for p in range(0, len(metas), k):
        tag = metas[p]["tag"]
        if seen.get(tag, 0) < per_tag:
            seen[tag] = seen.get(tag, 0) + 1
            chosen.append(p)
    tiles, labels = [], []
    for p in chosen:
        for j in range(k):
            tiles.append(images[p + j])
            mark = "ok" if rows[p + j]["correct"] else "x"
            labels.append(f"[{mark}] {metas[p]['prompt']}")
    sheet = make_grid(tiles, labels, ncols=2 * k, scale=2, caption_lines=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _scheduler_detail(scheduler_cls: str, cfg: PretrainConfig) -> str:
    """The settings of the folder's scheduler that the card's scores depend on."""
    if scheduler_cls == "FlowMatchEulerDiscreteScheduler":
        return f" (shift {cfg.flow.shift})"
    if scheduler_cls == "DPMSolverMultistepScheduler":  # what an x0 transformer's folder carries
        return f" (flow sigmas, first order, shift {cfg.flow.shift})"
    if scheduler_cls == "DDIMScheduler":
        return " (eta 0, trailing spacing)"
    return ""  # a scheduler the pretraining recipes do not write: its config says the rest


@dataclass
class _Records:
    """What the card reads from the model folder and the run directory."""

    info: dict[str, Any]  # the folder's visalign.json
    vae_report: dict[str, Any]  # run_dir/vae/vae_report.json ({} without one)
    history: list[dict[str, Any]]  # run_dir/eval.jsonl up to the folder's step
    scheduler_cls: str
    size_mb: float

    @classmethod
    def read(cls, model_dir: Path, run_dir: Path) -> _Records:
        info = json.loads((model_dir / "visalign.json").read_text())
        vae_report_file = run_dir / "vae" / "vae_report.json"
        history = read_log(run_dir / "eval.jsonl")
        scheduler = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
        return cls(
            info=info,
            vae_report=json.loads(vae_report_file.read_text()) if vae_report_file.is_file() else {},
            history=[h for h in history if h["step"] <= info["training"]["denoiser_steps"]],
            scheduler_cls=scheduler,
            size_mb=sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file()) / 1e6,
        )


def write_card(
    model_dir: Path, run_dir: Path, cfg: PretrainConfig, evaluation: dict[str, Any], name: str
) -> Path:
    """Write ``model_dir/README.md`` (and ``final_eval.json``) from the run's records and ``evaluation``."""
    records = _Records.read(model_dir, run_dir)
    lines = [
        *_introduction(cfg, name, records.info["sampler"]),
        *_sampler(cfg, records),
        *_scores(cfg, evaluation, name, records.history),
        *_architecture(cfg, records),
        *_training(cfg, records),
        *_reproduce(cfg),
    ]
    (model_dir / "README.md").write_text("\n".join(lines))
    summary = {k: v for k, v in evaluation["results"].items() if k != "images"}
    (model_dir / FINAL_EVAL).write_text(
        json.dumps(
            {
                "images_per_prompt": evaluation["images_per_prompt"],
                "seed": 0,
                "sampler": records.info["sampler"],
                **summary,
            },
            indent=2,
        )
        + "\n"
    )
    return model_dir / "README.md"


def _denoiser_class(cfg: PretrainConfig) -> str:
    return "SD3Transformer2DModel" if cfg.family == "flow" else "UNet2DConditionModel"


def _introduction(cfg: PretrainConfig, name: str, sampler: dict[str, Any]) -> list[str]:
    """The title, what the model is, and how to load it."""
    flow = cfg.family == "flow"
    what = (
        "A tiny flow-matching text-to-image model built from Stable Diffusion 3's classes"
        if flow
        else f"A tiny {_PREDICTION_WORDS[cfg.diffusion.prediction_type]} diffusion model built from Stable "
        "Diffusion 1.5's classes"
    )
    diffusers_alone = (
        f"`StableDiffusion3Pipeline.from_pretrained(path, text_encoder_3=None, tokenizer_3=None)` and "
        f"`pipe(prompt, max_sequence_length={sampler.get('max_sequence_length', 0)}, ...)` "
        "(the text context is the two CLIP towers' tokens only; no T5 padding)."
        if flow
        else "`StableDiffusionPipeline.from_pretrained(path)`."
    )
    pipeline_cls = "StableDiffusion3Pipeline" if flow else "StableDiffusionPipeline"
    return [
        f"# {name}",
        "",
        what + ", pretrained on ShapesWorld and deliberately imperfect: the base model for RL post-training.",
        "",
        "```python",
        "from visalign.models.loading import load_pipeline",
        f'family, pipe = load_pipeline("{name}")  # {pipeline_cls}',
        "```",
        "",
        "or with diffusers alone: " + diffusers_alone,
        "",
    ]


def _sampler(cfg: PretrainConfig, records: _Records) -> list[str]:
    sampler = records.info["sampler"]
    return [
        "## Sampler (the settings every score below uses)",
        "",
        f"- scheduler: `{records.scheduler_cls}`" + _scheduler_detail(records.scheduler_cls, cfg),
        f"- steps: {sampler['num_inference_steps']}, guidance scale: {sampler['guidance_scale']}"
        + (" (no classifier-free guidance)" if sampler["guidance_scale"] <= 1 else ""),
        f"- image size: {cfg.image_size} x {cfg.image_size}",
        "",
    ]


def _scores(cfg: PretrainConfig, evaluation: dict[str, Any], name: str, history: list[dict[str, Any]]) -> list[str]:
    """The final evaluation's table, the target band, the contact sheet and the score during training."""
    res = evaluation["results"]
    per_tag: dict[str, Any] = res.get("per_tag", {})
    k = evaluation["images_per_prompt"]
    lines = [
        "## ShapesBench (held-out test split)",
        "",
        f"{len(res.get('images', []))} images: 70 test prompts x {k} images, seed 0 "
        "(`visalign sample --model "
        f"{name} --split test --images-per-prompt {k} --seed 0 --out DIR` "
        "then `visalign eval DIR`).",
        "",
        "| tag | strict | soft |",
        "|---|---|---|",
    ]
    soft_tag = res.get("per_tag_soft", {})
    lines += [f"| {tag} | {_fmt(acc)} | {_fmt(soft_tag.get(tag))} |" for tag, acc in per_tag.items()]
    lines += [f"| **overall** | **{_fmt(res['overall'])}** | {_fmt(res.get('soft'))} |", ""]
    zero = [tag for tag, acc in per_tag.items() if acc <= 0]
    in_band = BAND[0] <= res["overall"] <= BAND[1] and not zero
    lines += [
        f"Target band for a base model: overall strict in [{BAND[0]:.2f}, {BAND[1]:.2f}] with every tag above 0. "
        + (
            "This checkpoint is inside it."
            if in_band
            else "**This checkpoint is outside it** (overall "
            f"{res['overall']:.3f}{'; tags at 0: ' + ', '.join(zero) if zero else ''}); the score during "
            "training below shows whether more steps were still paying."
        ),
        "",
        f"![contact sheet]({CONTACT_SHEET})",
        "",
        f"Contact sheet: two test prompts per tag, {k} images each; [ok] / [x] is the verifier's strict verdict.",
        "",
    ]
    if history:
        lines += [
            "### Score during training",
            "",
            f"Test split, {cfg.log.eval_images_per_prompt} images per prompt, EMA weights, same sampler.",
            "",
            "| step | strict overall |",
            "|---|---|",
        ]
        lines += [f"| {h['step']} | {_fmt(h['overall'])} |" for h in history]
        lines.append("")
    return lines


def _architecture(cfg: PretrainConfig, records: _Records) -> list[str]:
    """Each component's class and size, then a line per component."""
    flow = cfg.family == "flow"
    params: dict[str, int] = records.info["parameters"]
    classes = {
        "transformer": _denoiser_class(cfg),
        "unet": _denoiser_class(cfg),
        "vae": "AutoencoderKL",
        "text_encoder": "CLIPTextModelWithProjection" if flow else "CLIPTextModel",
        "text_encoder_2": "CLIPTextModelWithProjection",
    }
    lines = ["## Architecture", "", "| component | class | parameters |", "|---|---|---|"]
    lines += [f"| {comp} | `{classes.get(comp, comp)}` | {n:,} |" for comp, n in params.items()]
    lines += [f"| total | | {sum(params.values()):,} |", ""]
    v, vae_report = cfg.vae, records.vae_report
    latent = cfg.image_size // 2 ** (len(v.block_out_channels) - 1)
    lines.append(
        f"- VAE: {cfg.image_size}x{cfg.image_size}x3 -> {latent}x{latent}x{v.latent_channels}, "
        f"block channels {v.block_out_channels}, scaling factor {vae_report.get('scaling_factor', 0):.4f}, "
        f"shift factor {vae_report.get('shift_factor', 0):.4f}."
    )
    lines.append(_transformer_line(cfg, latent) if flow else _unet_line(cfg))
    t = cfg.text
    towers = "two CLIP text towers" if flow else "a CLIP text tower"
    return lines + [
        f"- Text: {towers} (hidden {t.hidden_size}, {t.num_layers} layers, projection {t.projection_dim}) over a "
        f"word-level tokenizer ({t.max_length} tokens, digits split), "
        + ("trained jointly with the denoiser." if t.train else "kept frozen at their random init."),
        f"- Stored in {'float16' if cfg.export.half else 'float32'}; folder size {records.size_mb:.2f} MB. "
        "Loads into float32 with `load_pipeline(..., torch_dtype=torch.float32)`.",
        "",
    ]


def _transformer_line(cfg: PretrainConfig, latent: int) -> str:
    f = cfg.flow
    tokens = (latent // f.patch_size) ** 2
    return (
        f"- Transformer: {f.num_layers} joint blocks, width {f.num_heads * f.head_dim} ({f.num_heads} heads x "
        f"{f.head_dim}), patch {f.patch_size}: {tokens} image tokens + {cfg.text.max_length} text tokens; "
        + ("predicts x0 (DPMSolverMultistepScheduler over flow sigmas, first order)." if f.prediction == "sample"
           else "predicts the velocity (FlowMatchEulerDiscreteScheduler).")
    )  # fmt: skip


def _unet_line(cfg: PretrainConfig) -> str:
    d = cfg.diffusion
    return (
        f"- UNet: channels {d.block_out_channels}, cross-attention at levels {d.cross_attention_levels}, "
        f"{d.layers_per_block} layer(s) per block; DDPM schedule {d.beta_schedule} "
        f"[{d.beta_start}, {d.beta_end}], {_PREDICTION_WORDS[d.prediction_type]}"
        + (", zero terminal SNR." if d.rescale_betas_zero_snr else ".")
    )


def _training(cfg: PretrainConfig, records: _Records) -> list[str]:
    """The data, both stages' steps / batch / rate / wall time, stage 2's details and the autoencoder's report."""
    v, t, tr, vae_report = cfg.vae, cfg.text, cfg.train, records.vae_report
    training = records.info["training"]
    lines = [
        "## Training",
        "",
        "Data: ShapesWorld train split only, rendered on the fly at "
        f"{cfg.image_size}x{cfg.image_size} (a random scene per item"
        + _mixture(cfg)
        + "). Batches are a function of (seed, step), so a resumed run sees the same data.",
        "",
        "| stage | steps | batch | lr | wall time |",
        "|---|---|---|---|---|",
        f"| 1: VAE (L1 + MSE + {v.kl_weight} KL"
        + (f"; decoder on latents + {v.latent_noise} x std noise" if v.latent_noise else "")
        + f") | {vae_report.get('steps', '-')} | {v.batch_size} | {v.lr} | "
        f"{vae_report.get('wall_s', 0) / 60:.1f} min |",
        f"| 2: {_denoiser_class(cfg)}{' + text encoders' if t.train else ''} | {training['denoiser_steps']} | "
        f"{tr.batch_size} | {tr.lr} | {training['denoiser_wall_s'] / 60:.1f} min |",
        "",
        f"Stage 2 details: AdamW, {tr.warmup}-step warm-up then constant learning rate"
        + (f" (linear decay to 0 over the last {tr.decay_steps} steps)" if tr.decay_steps else "")
        + ", gradient clip "
        f"{tr.grad_clip}, EMA {tr.ema_decay} (the shipped weights), prompt dropout "
        f"{tr.prompt_dropout} (empty prompt)"
        + (
            f", {cfg.flow.timestep_sampling.replace('_', '-')} sigma sampling."
            if cfg.family == "flow"
            else ", uniform timesteps."
        ),
        f"Wall times as the run measured them on a 2-core x86 CPU (other jobs may have shared it), {cfg.threads} "
        f"torch thread(s) for training, {cfg.data_workers} data worker process(es) rendering and encoding batches.",
        "",
    ]
    if cfg.family == "flow" and cfg.flow.teacher:
        lines += [
            f"Distilled: the clean latent in the target is the x0 estimate of the diffusion model "
            f"`{cfg.flow.teacher}` at the same noise-to-signal ratio (`pretrain/teacher.py`), not the data sample, "
            "wherever the teacher's schedule reaches sigma; the data elsewhere.",
            "",
        ]
    return lines + _autoencoder_report(vae_report)


def _autoencoder_report(vae_report: dict[str, Any]) -> list[str]:
    if not vae_report:
        return []
    lines = []
    if vae_report.get("init_from"):
        lines += [
            f"The autoencoder was reused from `{vae_report['init_from']}` (the same stage-1 recipe and seed; its "
            "steps and wall time are shown above) with this family's scaling factor.",
            "",
        ]
    return lines + [
        "VAE reconstructions of test-split scenes (70 prompts x 2 scenes): "
        f"PSNR {vae_report.get('recon_psnr_db', 0):.1f} dB; verifier strict score "
        f"{_fmt(vae_report.get('recon_strict_overall'))} on reconstructions vs "
        f"{_fmt(vae_report.get('render_strict_overall'))} on the renders themselves.",
        "",
    ]


def _reproduce(cfg: PretrainConfig) -> list[str]:
    return [
        "## Reproduce",
        "",
        "```bash",
        f"visalign pretrain --config configs/pretrain/{cfg.family}.yaml",
        "```",
        "",
    ]
