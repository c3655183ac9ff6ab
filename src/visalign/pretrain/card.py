"""The model card (README.md) and contact sheet written into a pretrained model folder.

Every number in the card is read from the run directory (``visalign.json``, ``vae/vae_report.json``,
``eval.jsonl``) or measured here (the final test-split evaluation), so a card cannot drift from its model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from visalign.pretrain.config import PretrainConfig
from visalign.pretrain.generate import generate, image_seed, pipeline_kwargs

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


def sample_test_split(
    pipe: Any, cfg: PretrainConfig, images_per_prompt: int, seed: int
) -> tuple[Any, list[dict[str, Any]]]:
    """Images of every test prompt with the configured sampler, seeded exactly as ``visalign sample`` seeds them."""
    from visalign.worlds.shapes.prompts import load_split

    items = load_split("test")
    prompts = [m["prompt"] for m in items for _ in range(images_per_prompt)]
    metas = [m for m in items for _ in range(images_per_prompt)]
    seeds = [image_seed(seed, p, k) for p in range(len(items)) for k in range(images_per_prompt)]
    kwargs = pipeline_kwargs(cfg.family, cfg.sample.steps, cfg.sample.guidance, 0)
    return generate(pipe, prompts, seeds, kwargs, batch_size=cfg.sample.batch_size), metas


def final_evaluation(
    pipe: Any, cfg: PretrainConfig, images_per_prompt: int = 4, seed: int = 0
) -> dict[str, Any]:
    """Test split, ``images_per_prompt`` per prompt, the card's sampler: images and ShapesBench results.

    The images are exactly those ``visalign sample --split test --images-per-prompt K --seed S`` writes.
    """
    from visalign.eval.shapesbench import score_images

    images, metas = sample_test_split(pipe, cfg, images_per_prompt, seed)
    results = score_images(list(images), metas)
    return {"images": images, "metadata": metas, "results": results, "images_per_prompt": images_per_prompt}


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


def write_card(
    model_dir: Path, run_dir: Path, cfg: PretrainConfig, evaluation: dict[str, Any], name: str
) -> Path:
    """Write ``model_dir/README.md`` (and ``final_eval.json``) from the run's records and ``evaluation``."""
    info = json.loads((model_dir / "visalign.json").read_text())
    vae_report_file = run_dir / "vae" / "vae_report.json"
    vae_report = json.loads(vae_report_file.read_text()) if vae_report_file.is_file() else {}
    history_file = run_dir / "eval.jsonl"
    history = (
        [json.loads(ln) for ln in history_file.read_text().splitlines()] if history_file.is_file() else []
    )
    history = [h for h in history if h["step"] <= info["training"]["denoiser_steps"]]
    res = evaluation["results"]
    per_tag: dict[str, Any] = res.get("per_tag", {})
    params: dict[str, int] = info["parameters"]
    total = sum(params.values())
    sampler = info["sampler"]
    size_mb = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file()) / 1e6
    flow = cfg.family == "flow"
    scheduler_cls = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    pipeline_cls = "StableDiffusion3Pipeline" if flow else "StableDiffusionPipeline"
    denoiser = "SD3Transformer2DModel" if flow else "UNet2DConditionModel"
    lines = [
        f"# {name}",
        "",
        (
            "A tiny flow-matching text-to-image model built from Stable Diffusion 3's classes"
            if flow
            else f"A tiny {_PREDICTION_WORDS[cfg.diffusion.prediction_type]} diffusion model built from Stable "
            "Diffusion 1.5's classes"
        )
        + ", pretrained on ShapesWorld and deliberately imperfect: the base model for RL post-training.",
        "",
        "```python",
        "from visalign.models.loading import load_pipeline",
        f'family, pipe = load_pipeline("{name}")  # {pipeline_cls}',
        "```",
        "",
        "or with diffusers alone: "
        + (
            f"`StableDiffusion3Pipeline.from_pretrained(path, text_encoder_3=None, tokenizer_3=None)` and "
            f"`pipe(prompt, max_sequence_length={sampler.get('max_sequence_length', 0)}, ...)` "
            "(the text context is the two CLIP towers' tokens only; no T5 padding)."
            if flow
            else "`StableDiffusionPipeline.from_pretrained(path)`."
        ),
        "",
        "## Sampler (the settings every score below uses)",
        "",
        f"- scheduler: `{scheduler_cls}`" + _scheduler_detail(scheduler_cls, cfg),
        f"- steps: {sampler['num_inference_steps']}, guidance scale: {sampler['guidance_scale']}"
        + (" (no classifier-free guidance)" if sampler["guidance_scale"] <= 1 else ""),
        f"- image size: {cfg.image_size} x {cfg.image_size}",
        "",
        "## ShapesBench (held-out test split)",
        "",
        f"{len(res.get('images', []))} images: 70 test prompts x {evaluation['images_per_prompt']} images, seed 0 "
        "(`visalign sample --model "
        f"{name} --split test --images-per-prompt {evaluation['images_per_prompt']} --seed 0 --out DIR` "
        "then `visalign eval DIR`).",
        "",
        "| tag | strict | soft |",
        "|---|---|---|",
    ]
    soft_tag = res.get("per_tag_soft", {})
    for tag, acc in per_tag.items():
        lines.append(f"| {tag} | {_fmt(acc)} | {_fmt(soft_tag.get(tag))} |")
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
    ]
    lines += [
        f"![contact sheet]({CONTACT_SHEET})",
        "",
        "Contact sheet: two test prompts per tag, "
        f"{evaluation['images_per_prompt']} images each; [ok] / [x] is the verifier's strict verdict.",
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
    lines += ["## Architecture", "", "| component | class | parameters |", "|---|---|---|"]
    classes = {
        "transformer": denoiser,
        "unet": denoiser,
        "vae": "AutoencoderKL",
        "text_encoder": "CLIPTextModelWithProjection" if flow else "CLIPTextModel",
        "text_encoder_2": "CLIPTextModelWithProjection",
    }
    for comp, n in params.items():
        lines.append(f"| {comp} | `{classes.get(comp, comp)}` | {n:,} |")
    lines += [f"| total | | {total:,} |", ""]
    v = cfg.vae
    latent = cfg.image_size // 2 ** (len(v.block_out_channels) - 1)
    lines.append(
        f"- VAE: {cfg.image_size}x{cfg.image_size}x3 -> {latent}x{latent}x{v.latent_channels}, "
        f"block channels {v.block_out_channels}, scaling factor {vae_report.get('scaling_factor', 0):.4f}, "
        f"shift factor {vae_report.get('shift_factor', 0):.4f}."
    )
    if flow:
        f = cfg.flow
        tokens = (latent // f.patch_size) ** 2
        lines.append(
            f"- Transformer: {f.num_layers} joint blocks, width {f.num_heads * f.head_dim} ({f.num_heads} heads x "
            f"{f.head_dim}), patch {f.patch_size}: {tokens} image tokens + {cfg.text.max_length} text tokens; "
            + ("predicts x0 (DPMSolverMultistepScheduler over flow sigmas, first order)." if f.prediction == "sample"
               else "predicts the velocity (FlowMatchEulerDiscreteScheduler).")
        )
    else:
        d = cfg.diffusion
        lines.append(
            f"- UNet: channels {d.block_out_channels}, cross-attention at levels {d.cross_attention_levels}, "
            f"{d.layers_per_block} layer(s) per block; DDPM schedule {d.beta_schedule} "
            f"[{d.beta_start}, {d.beta_end}], {_PREDICTION_WORDS[d.prediction_type]}"
            + (", zero terminal SNR." if d.rescale_betas_zero_snr else ".")
        )
    t = cfg.text
    towers = "two CLIP text towers" if flow else "a CLIP text tower"
    lines += [
        f"- Text: {towers} (hidden {t.hidden_size}, {t.num_layers} layers, projection {t.projection_dim}) over a "
        f"word-level tokenizer ({t.max_length} tokens, digits split), "
        + ("trained jointly with the denoiser." if t.train else "kept frozen at their random init."),
        f"- Stored in {'float16' if cfg.export.half else 'float32'}; folder size {size_mb:.2f} MB. "
        "Loads into float32 with `load_pipeline(..., torch_dtype=torch.float32)`.",
        "",
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
        f"| 2: {denoiser}{' + text encoders' if t.train else ''} | {info['training']['denoiser_steps']} | "
        f"{cfg.train.batch_size} | {cfg.train.lr} | {info['training']['denoiser_wall_s'] / 60:.1f} min |",
        "",
        f"Stage 2 details: AdamW, {cfg.train.warmup}-step warm-up then constant learning rate"
        + (f" (linear decay to 0 over the last {cfg.train.decay_steps} steps)" if cfg.train.decay_steps else "")
        + ", gradient clip "
        f"{cfg.train.grad_clip}, EMA {cfg.train.ema_decay} (the shipped weights), prompt dropout "
        f"{cfg.train.prompt_dropout} (empty prompt)"
        + (
            f", {cfg.flow.timestep_sampling.replace('_', '-')} sigma sampling."
            if flow
            else ", uniform timesteps."
        ),
        f"Wall times as the run measured them on a 2-core x86 CPU (other jobs may have shared it), {cfg.threads} "
        f"torch thread(s) for training, {cfg.data_workers} data worker process(es) rendering and encoding batches.",
        "",
    ]
    if flow and cfg.flow.teacher:
        lines += [
            f"Distilled: the clean latent in the target is the x0 estimate of the diffusion model "
            f"`{cfg.flow.teacher}` at the same noise-to-signal ratio (`pretrain/teacher.py`), not the data sample, "
            "wherever the teacher's schedule reaches sigma; the data elsewhere.",
            "",
        ]
    if vae_report:
        if vae_report.get("init_from"):
            lines += [
                f"The autoencoder was reused from `{vae_report['init_from']}` (the same stage-1 recipe and seed; its "
                "steps and wall time are shown above) with this family's scaling factor.",
                "",
            ]
        lines += [
            "VAE reconstructions of test-split scenes (70 prompts x 2 scenes): "
            f"PSNR {vae_report.get('recon_psnr_db', 0):.1f} dB; verifier strict score "
            f"{_fmt(vae_report.get('recon_strict_overall'))} on reconstructions vs "
            f"{_fmt(vae_report.get('render_strict_overall'))} on the renders themselves.",
            "",
        ]
    lines += [
        "## Reproduce",
        "",
        "```bash",
        f"visalign pretrain --config configs/pretrain/{cfg.family}.yaml",
        "```",
        "",
    ]
    (model_dir / "README.md").write_text("\n".join(lines))
    summary = {k: v for k, v in res.items() if k != "images"}
    (model_dir / FINAL_EVAL).write_text(
        json.dumps(
            {"images_per_prompt": evaluation["images_per_prompt"], "seed": 0, "sampler": sampler, **summary},
            indent=2,
        )
        + "\n"
    )
    return model_dir / "README.md"
