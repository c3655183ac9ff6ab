"""Pretraining: stage 1 trains the VAE, stage 2 the denoiser (and text encoders) on its latents.

Run directory layout::

    run_dir/config.yaml          the resolved config
    run_dir/checkpoints/*.safetensors  resumable state per stage (atomic; a rerun continues from here)
    run_dir/vae/                 the finished stage-1 autoencoder (diffusers folder) + vae_report.json
    run_dir/metrics.jsonl        loss / lr / wall time every ``log.every`` steps
    run_dir/eval.jsonl           test-split ShapesBench score every ``log.eval_every`` steps
    run_dir/samples/*.png        sample grids (one row per prompt)
    run_dir/exports/step-N/      a loadable pipeline folder at each evaluation
    run_dir/model/               the final pipeline folder (EMA weights)

Learning rates warm up linearly and then stay constant until the optional final decay (``train.decay_steps``),
so a run of N steps without decay is exactly the first N steps of a longer run: the step a model card names can be
read off ``eval.jsonl`` and reproduced with ``train.steps=N``. The decay is the last stretch of a run, so a
decayed run can be extended only by resuming a checkpoint from before its decay began.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from visalign.config_io import dump_config
from visalign.errors import UserError
from visalign.pretrain.build import (
    build_diffusion_pipeline,
    build_flow_pipeline,
    build_vae,
    count_parameters,
    spec_to_dict,
)
from visalign.pretrain.card import (
    CONTACT_SHEET,
    contact_sheet,
    final_evaluation,
    sample_test_split,
    write_card,
)
from visalign.pretrain.checkpoint import (
    append_jsonl,
    load_checkpoint,
    save_checkpoint,
    save_module_folder,
    truncate_jsonl,
)
from visalign.pretrain.config import PretrainConfig, model_spec, vae_spec
from visalign.pretrain.data import ShapesData
from visalign.pretrain.export import save_pipeline
from visalign.pretrain.generate import generate, image_seed, pipeline_kwargs
from visalign.pretrain.latent_norm import fold_channel_normalization
from visalign.pretrain.prefetch import encode_normalised, next_batch, stage_batches
from visalign.pretrain.reflow import ReflowPairs, load_or_generate_pairs
from visalign.pretrain.teacher import DiffusionTeacher
from visalign.run_directory import RunLock


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )


def _lr_factor(step: int, warmup: int, total: int = 0, decay: int = 0) -> float:
    """Linear warm-up, a constant stretch, then (when ``decay`` > 0) a linear decay to 0 at step ``total``."""
    factor = min(1.0, (step + 1) / max(1, warmup))
    if decay > 0:
        factor = min(factor, (total - step) / decay)
    return factor


def _torch_gen(seed: int, stage: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, stage, step]).generate_state(1)[0])
    )


# ----------------------------------------------------------------------------------------------- stage 1: VAE


def decoder_input(posterior: Any, latent_noise: float, gen: torch.Generator) -> torch.Tensor:
    """A posterior sample plus ``latent_noise`` times the batch's latent std of Gaussian noise.

    The std is taken over the whole batch and all channels, the statistic ``scaling_factor`` normalises by,
    so the decoder learns to tolerate noise of ``latent_noise`` in the denoiser's normalised units; it is
    recomputed every step, so scaling the latents up does not escape it.
    """
    z = posterior.sample(generator=gen)
    if latent_noise > 0:
        z = z + latent_noise * z.detach().std() * torch.randn(z.shape, generator=gen)
    return z


def reconstruction_loss(decoded: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The autoencoder stage's loss on images in [-1, 1]: L1 (sharp edges) plus MSE (no large errors)."""
    return (decoded - images).abs().mean() + F.mse_loss(decoded, images)


def train_vae(cfg: PretrainConfig, run_dir: Path, data: ShapesData, console: Console) -> Any:
    """Train (or resume, or reuse) the autoencoder; return it with the scaling/shift factors set from ``data``,
    the denoiser's scenes (stage 1 itself sees them at even odds with ``vae.train_mixture: false``)."""
    from diffusers import AutoencoderKL

    out = run_dir / "vae"
    if (out / "config.json").is_file():
        console.print(f"stage 1 (vae): reusing {out}")
        return AutoencoderKL.from_pretrained(out)
    if cfg.vae.init_from:
        from visalign.models.loading import resolve_model_path

        src = resolve_model_path(cfg.vae.init_from)  # a shipped alias or a folder
        src = src / "vae" if (src / "vae" / "config.json").is_file() else src
        vae = AutoencoderKL.from_pretrained(src)
        vae.eval()
        report = _vae_stats_and_report(cfg, vae, data)  # this family's scaling / shift factors
        previous = src / "vae_report.json"
        if previous.is_file():
            old = json.loads(previous.read_text())
            report.update({k: old[k] for k in ("steps", "wall_s") if k in old})
        report.update({"params": count_parameters(vae), "init_from": str(src)})
        save_module_folder(vae, out)
        (out / "vae_report.json").write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"stage 1 (vae): copied from {src}; {json.dumps(report)}")
        return vae

    v = cfg.vae
    torch.manual_seed(cfg.seed)
    vae = build_vae(vae_spec(cfg))
    opt = torch.optim.AdamW(vae.parameters(), lr=v.lr, weight_decay=0.0)
    ckpt_path = run_dir / "checkpoints" / "vae.safetensors"
    start, wall = 0, 0.0
    state = load_checkpoint(ckpt_path)
    if state is not None:
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        start, wall = state["step"], state["wall"]
        console.print(f"stage 1 (vae): resuming at step {start}")
    vae.train()
    t0 = time.perf_counter() - wall
    metrics = run_dir / "metrics.jsonl"
    truncate_jsonl(metrics, "vae_step", start)
    scenes = data if v.train_mixture else stage_data(cfg, mixture=False)
    batches = stage_batches(scenes, "vae", v.batch_size, start, v.steps, cfg.data_workers)
    with _progress(console) as progress:
        task = progress.add_task("vae", total=v.steps, completed=start, info="")
        for step in range(start, v.steps):
            for group in opt.param_groups:
                group["lr"] = v.lr * _lr_factor(step, v.warmup)
            x = next_batch(batches, step).images
            post = vae.encode(x).latent_dist
            z = decoder_input(post, v.latent_noise, _torch_gen(cfg.seed, 1, step))
            y = vae.decode(z).sample
            rec = reconstruction_loss(y, x)
            kl = post.kl().mean() / z[0].numel()
            loss = rec + v.kl_weight * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            done = step + 1
            progress.update(task, completed=done, info=f"rec {rec.item():.4f}")
            if done % cfg.log.every == 0 or done == v.steps:
                rec_item = {
                    "vae_step": done,
                    "rec": rec.item(),
                    "kl": kl.item(),
                    "wall": time.perf_counter() - t0,
                }
                append_jsonl(metrics, rec_item)
                if not console.is_terminal:
                    console.print(f"vae step {done}/{v.steps} rec {rec.item():.4f} kl {kl.item():.2f}")
            if done % cfg.log.checkpoint_every == 0 or done == v.steps:
                wall_now = time.perf_counter() - t0
                save_checkpoint(
                    ckpt_path,
                    {"step": done, "model": vae.state_dict(), "optim": opt.state_dict(), "wall": wall_now},
                )
    vae.eval()
    report = _vae_stats_and_report(cfg, vae, data)
    report["steps"] = v.steps
    report["wall_s"] = load_checkpoint(ckpt_path)["wall"]
    report["params"] = count_parameters(vae)
    save_module_folder(vae, out)
    (out / "vae_report.json").write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"stage 1 (vae): done; {json.dumps(report)}")
    return vae


@torch.no_grad()
def _vae_stats_and_report(cfg: PretrainConfig, vae: Any, data: ShapesData) -> dict[str, Any]:
    """Set ``scaling_factor`` / ``shift_factor`` from encoded train images; measure reconstructions on test scenes.

    With ``vae.latent_norm: channel`` the per-channel standardisation is first folded into the autoencoder
    (``latent_norm.py``), so the scalar factors come out as about 1 and 0.
    """

    def encode_stats_images() -> torch.Tensor:
        zs = []
        for i in range(0, cfg.vae.stats_images, 64):
            x = data.batch("stats", i, min(64, cfg.vae.stats_images - i)).images
            zs.append(vae.encode(x).latent_dist.mode())
        return torch.cat(zs)

    z = encode_stats_images()
    channel_std_before = None
    if cfg.vae.latent_norm == "channel":
        channel_std = z.std((0, 2, 3))
        channel_std_before = (channel_std / z.std()).tolist()  # in scalar-normalised units
        fold_channel_normalization(vae, z.mean((0, 2, 3)), channel_std)
        z = encode_stats_images()
    mean, std = z.mean().item(), z.std().item()
    if cfg.family == "flow":  # SD3 pipelines decode z / scale + shift
        shift, scale = mean, 1.0 / std
    else:  # SD1.5 pipelines have no shift: scale by the root mean square
        shift, scale = 0.0, 1.0 / math.sqrt(mean**2 + std**2)
    vae.register_to_config(scaling_factor=scale, shift_factor=shift)
    report: dict[str, Any] = {
        "latent_mean": mean,
        "latent_std": std,
        "scaling_factor": scale,
        "shift_factor": shift,
        "latent_norm": cfg.vae.latent_norm,
    }
    if channel_std_before is not None:
        report["channel_std_under_scalar_norm"] = channel_std_before
    test = ShapesData(cfg.seed + 1, cfg.image_size, tag_balanced=False, split="test")
    items = test.items * 2
    xs, recs = [], []
    for i in range(0, len(items), 70):
        chunk = items[i : i + 70]
        x = torch.from_numpy(
            np.stack(
                [_render(m, image_seed(cfg.seed, i + j, 0), cfg.image_size) for j, m in enumerate(chunk)]
            )
        )
        xt = x.permute(0, 3, 1, 2).float().div(127.5).sub(1)
        y = vae.decode(vae.encode(xt).latent_dist.mode()).sample.clamp(-1, 1)
        xs.append(x.numpy())
        recs.append(((y + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy())
    x_all, r_all = np.concatenate(xs), np.concatenate(recs)
    mse = float(np.mean((x_all.astype(np.float64) / 255 - r_all.astype(np.float64) / 255) ** 2))
    report["recon_psnr_db"] = 10 * math.log10(1.0 / max(mse, 1e-12))
    scores = _score(list(r_all), items)
    truth = _score(list(x_all), items)
    if scores is not None:
        report["recon_strict_overall"] = scores["overall"]
        report["recon_per_tag"] = scores.get("per_tag")
    if truth is not None:
        report["render_strict_overall"] = truth["overall"]
    return report


def _render(metadata: dict, seed: int, size: int) -> np.ndarray:
    from visalign.worlds.shapes.render import render_scene

    return render_scene(metadata, seed, size=size)


def _have_verifier() -> bool:
    import importlib.util

    return importlib.util.find_spec("visalign.eval.shapesbench") is not None


def _score(images: list[np.ndarray], metadata: list[dict]) -> dict[str, Any] | None:
    """ShapesBench scores, or None while the verifier is not installed."""
    try:
        from visalign.eval.shapesbench import score_images
    except ImportError:
        return None
    return score_images(images, metadata)


# ----------------------------------------------------------------------------------------- stage 2: denoiser


class EMA:
    """Exponential moving average of a list of parameters, with the usual warm-up of the decay.

    After ``n`` updates the decay is ``min(decay, (1 + n) / (10 + n))``, so early averages are not dominated by
    the random initialisation (a plain 0.999 average still holds 13% of the init after 2,000 steps).
    """

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params = params
        self.decay = decay
        self.shadow = [p.detach().clone() for p in params]

    def decay_at(self, updates: int) -> float:
        return min(self.decay, (1.0 + updates) / (10.0 + updates))

    @torch.no_grad()
    def update(self, updates: int) -> None:
        """Fold in the current parameters; ``updates`` is the number of updates before this one."""
        weight = 1.0 - self.decay_at(updates)
        for s, p in zip(self.shadow, self.params, strict=True):
            s.lerp_(p.detach(), weight)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily load the EMA weights into the parameters."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for s, p in zip(self.shadow, self.params, strict=True):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for b, p in zip(backup, self.params, strict=True):
                    p.copy_(b)


def encode_text(pipe: Any, family: str, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Text conditioning through the pipeline's own ``encode_prompt`` (with gradients)."""
    if family == "flow":
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=torch.device("cpu"),
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            max_sequence_length=0,
        )
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}
    embeds, _ = pipe.encode_prompt(prompts, torch.device("cpu"), 1, False)
    return {"encoder_hidden_states": embeds}


def decode_normalised(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """The inverse normalisation, then the decoder: images in about [-1, 1]."""
    return vae.decode(latents / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)).sample


def decoded_x0_loss(vae: Any, x0_hat: torch.Tensor, images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Pixel MSE between the decoded x0 estimate (normalised latents) and the images, averaged over ``rows`` only
    (0 when none is selected). Gradients flow through the frozen decoder into ``x0_hat``."""
    if not bool(rows.any()):
        return x0_hat.sum() * 0.0
    return F.mse_loss(decode_normalised(vae, x0_hat[rows]), images[rows])


def denoiser_loss(
    pipe: Any,
    family: str,
    cfg: PretrainConfig,
    images: torch.Tensor | None,
    prompts: list[str],
    gen: torch.Generator,
    teacher: DiffusionTeacher | None = None,
    pair: tuple[torch.Tensor, torch.Tensor] | None = None,
    latents: torch.Tensor | None = None,
) -> torch.Tensor:
    """The target the pipeline's scheduler declares (flow: v = eps - x0 or x0; diffusion: eps, v or x0), on images
    in [-1, 1]. With a ``teacher`` (flow only) the clean latent in the target is the teacher's estimate
    E[x0 | x_t] wherever its schedule reaches sigma (``pretrain/teacher.py``), so v = (x_t - x0_hat) / sigma.
    With a reflow ``pair`` (normalised latents, the noise they were sampled from) ``images`` is unused and the
    path runs between the two (``pretrain/reflow.py``). ``latents``: ``images`` already encoded (``prefetch.py``)."""
    vae = pipe.vae
    if pair is not None:  # reflow: the teacher's latents and the noise they came from (pretrain/reflow.py)
        z, noise = pair
    else:
        if latents is None:
            with torch.no_grad():
                latents = encode_normalised(vae, images)
        z = latents
        noise = torch.randn(z.shape, generator=gen)
    cond = encode_text(pipe, family, prompts)
    n = z.shape[0]
    if family == "flow":
        if cfg.flow.timestep_sampling == "logit_normal":
            sigma = torch.sigmoid(cfg.flow.logit_mean + cfg.flow.logit_std * torch.randn(n, generator=gen))
        else:
            sigma = torch.rand(n, generator=gen)
        sigma = cfg.flow.max_sigma * sigma
        s = sigma.view(n, 1, 1, 1)
        x_t = (1 - s) * z + s * noise
        pred = pipe.transformer(hidden_states=x_t, timestep=sigma * 1000, return_dict=False, **cond)[0]
        predicts_sample = pipe.scheduler.config.get("prediction_type") == "sample"  # as the RL adapter reads it
        if teacher is None or pair is not None:
            loss = F.mse_loss(pred, z if predicts_sample else noise - z)
            if cfg.flow.pixel_loss and images is not None:
                loss = loss + cfg.flow.pixel_loss * decoded_x0_loss(
                    vae, pred if predicts_sample else x_t - s * pred, images, sigma <= cfg.flow.pixel_loss_max_sigma
                )
            return loss
        x0_hat, valid = teacher.x0(x_t, sigma, prompts)
        rows = valid.view(n, 1, 1, 1)
        if predicts_sample:
            return F.mse_loss(pred, torch.where(rows, x0_hat, z))
        return F.mse_loss(pred, torch.where(rows, (x_t - x0_hat) / s, noise - z))
    t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (n,), generator=gen)
    x_t = pipe.scheduler.add_noise(z, noise, t)
    pred = pipe.unet(x_t, t, return_dict=False, **cond)[0]
    if pipe.scheduler.config.prediction_type == "v_prediction":
        return F.mse_loss(pred, pipe.scheduler.get_velocity(z, noise, t))
    if pipe.scheduler.config.prediction_type == "sample":
        return F.mse_loss(pred, z)
    return F.mse_loss(pred, noise)


def _fingerprint(module: torch.nn.Module) -> float:
    """A cheap checksum of a module's weights (detects a denoiser checkpoint paired with another VAE)."""
    with torch.no_grad():
        return float(sum(p.double().abs().sum() for p in module.parameters()))


def _trainables(pipe: Any, family: str, cfg: PretrainConfig) -> dict[str, torch.nn.Module]:
    names = ["transformer"] if family == "flow" else ["unet"]
    if cfg.text.train:
        names += ["text_encoder", "text_encoder_2"] if family == "flow" else ["text_encoder"]
    return {n: getattr(pipe, n) for n in names}


def sampler_settings(cfg: PretrainConfig) -> dict[str, Any]:
    """The sampler the model card names, as stored in ``visalign.json``."""
    out: dict[str, Any] = {"num_inference_steps": cfg.sample.steps, "guidance_scale": cfg.sample.guidance}
    if cfg.family == "flow":
        out["max_sequence_length"] = 0
    return out


def evaluate(pipe: Any, cfg: PretrainConfig, images_per_prompt: int, seed: int) -> dict[str, Any] | None:
    """Strict / soft ShapesBench scores on the test split with the configured sampler."""
    images, metas = sample_test_split(pipe, cfg, images_per_prompt, seed)
    return _score(list(images), metas)


def save_grid(pipe: Any, cfg: PretrainConfig, path: Path, n_prompts: int, per_prompt: int = 4) -> None:
    """One row per test prompt (spread over the tags), ``per_prompt`` images each; prompts in a .txt beside it."""
    from PIL import Image

    from visalign.worlds.shapes.prompts import load_split

    items = load_split("test")
    pick = [items[round(i * (len(items) - 1) / max(1, n_prompts - 1))] for i in range(n_prompts)]
    prompts = [m["prompt"] for m in pick for _ in range(per_prompt)]
    seeds = [image_seed(cfg.seed, p, k) for p in range(len(pick)) for k in range(per_prompt)]
    kwargs = pipeline_kwargs(cfg.family, cfg.sample.steps, cfg.sample.guidance, 0)
    images = generate(pipe, prompts, seeds, kwargs, batch_size=cfg.sample.batch_size)
    h, w = images.shape[1:3]
    sheet = np.full((n_prompts * (h + 2), per_prompt * (w + 2), 3), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, per_prompt)
        sheet[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = img
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)
    path.with_suffix(".txt").write_text("".join(m["prompt"] + "\n" for m in pick))


def _reflow_pairs(
    cfg: PretrainConfig, run_dir: Path, data: ShapesData, pipe: Any, teacher: DiffusionTeacher, console: Console
) -> ReflowPairs:
    """Stage 2a (reflow): the teacher's (noise, sample) pairs, generated once, cached under ``run_dir/reflow``."""
    down = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    side = cfg.image_size // down
    shape = (pipe.vae.config.latent_channels, side, side)
    n, chunk = cfg.flow.reflow_pairs, 64
    console.print(f"stage 2a (reflow): {n} teacher samples ({cfg.flow.reflow_teacher_steps} DDIM steps each)")
    with _progress(console) as progress:
        task = progress.add_task("reflow pairs", total=-(-n // chunk), info="")
        pairs = load_or_generate_pairs(
            teacher, data, shape, n, cfg.flow.reflow_teacher_steps, chunk, run_dir / "reflow",
            on_chunk=lambda done, total: progress.update(task, completed=done),
        )
    return pairs


def _clip_transformer(tower: Any) -> torch.nn.Module:
    """The CLIP text transformer of a tower (``CLIPTextModel`` holds its layers directly in transformers 5)."""
    return tower.text_model if hasattr(tower, "text_model") else tower


def init_text_towers(pipe: Any, source: str) -> None:
    """Copy the CLIP transformer of ``source``'s text_encoder into every text tower of ``pipe``."""
    from visalign.models.loading import load_pipeline

    _, src = load_pipeline(source)
    if src.tokenizer.get_vocab() != pipe.tokenizer.get_vocab():
        raise UserError(f"text.init_from={source}: its tokenizer's vocabulary differs from this model's")
    weights = _clip_transformer(src.text_encoder).state_dict()
    for name in ("text_encoder", "text_encoder_2"):
        tower = getattr(pipe, name, None)
        if tower is None:
            continue
        try:
            _clip_transformer(tower).load_state_dict(weights)
        except RuntimeError as err:  # sizes differ: name the first mismatch, not the whole report
            lines = [line.strip() for line in str(err).splitlines() if "size mismatch" in line] or [str(err)]
            raise UserError(f"text.init_from={source}: its text encoder does not fit {name}: {lines[0]}") from None


def train_denoiser(cfg: PretrainConfig, run_dir: Path, data: ShapesData, vae: Any, console: Console) -> Any:
    """Stage 2. Returns the pipeline holding the EMA weights."""
    family = cfg.family
    spec = model_spec(cfg)
    builder = build_flow_pipeline if family == "flow" else build_diffusion_pipeline
    pipe = builder(spec, seed=cfg.seed)
    pipe.vae.load_state_dict(vae.state_dict())
    pipe.vae.register_to_config(
        scaling_factor=vae.config.scaling_factor, shift_factor=vae.config.shift_factor
    )
    if cfg.text.init_from:
        init_text_towers(pipe, cfg.text.init_from)
    pipe.vae.requires_grad_(False)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
    teacher = None
    if family == "flow" and cfg.flow.teacher:
        from visalign.models.loading import load_pipeline

        teacher_family, teacher_pipe = load_pipeline(cfg.flow.teacher)
        if teacher_family != "diffusion":
            raise UserError(f"flow.teacher={cfg.flow.teacher}: a diffusion (UNet) pipeline is needed, got {teacher_family}")
        teacher = DiffusionTeacher(teacher_pipe, pipe.vae, cfg.flow.teacher)
    pairs = None
    if teacher is not None and cfg.flow.reflow_pairs:
        pairs = _reflow_pairs(cfg, run_dir, data, pipe, teacher, console)
    trainables = _trainables(pipe, family, cfg)
    params = [p for m in trainables.values() for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    t = cfg.train
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    ema = EMA(params, t.ema_decay) if t.ema_decay > 0 else None

    ckpt_path = run_dir / "checkpoints" / "denoiser.safetensors"
    start, wall = 0, 0.0
    state = load_checkpoint(ckpt_path)
    if state is not None:
        for name, module in trainables.items():
            module.load_state_dict(state["modules"][name])
        opt.load_state_dict(state["optim"])
        if ema is not None:
            for s, saved in zip(ema.shadow, state["ema"], strict=True):
                s.copy_(saved)
        if state["step"] > t.steps:
            raise UserError(
                f"{ckpt_path}: checkpoint is at step {state['step']}, beyond train.steps={t.steps}; "
                f"use a new run_dir (or the export at that step under {run_dir / 'exports'})"
            )
        if state.get("vae_fingerprint") != _fingerprint(pipe.vae):
            raise UserError(
                f"{ckpt_path}: was trained on a different VAE than {run_dir / 'vae'}; use a new run_dir"
            )
        start, wall = state["step"], state["wall"]
        console.print(f"stage 2 ({family}): resuming at step {start}")
    metrics, evals = run_dir / "metrics.jsonl", run_dir / "eval.jsonl"
    truncate_jsonl(metrics, "step", start)
    truncate_jsonl(evals, "step", start)
    n_params = {
        name: count_parameters(m) for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)
    }
    console.print(f"stage 2 ({family}): parameters {n_params}")

    def weights() -> contextlib.AbstractContextManager:
        return ema.applied() if ema is not None else contextlib.nullcontext()

    def checkpoint(done: int) -> None:
        save_checkpoint(
            ckpt_path,
            {
                "step": done,
                "modules": {n: m.state_dict() for n, m in trainables.items()},
                "optim": opt.state_dict(),
                "ema": [s.clone() for s in ema.shadow] if ema is not None else None,
                "wall": time.perf_counter() - t0,
                "vae_fingerprint": _fingerprint(pipe.vae),
            },
        )

    t0 = time.perf_counter() - wall
    for m in trainables.values():
        m.train()
    # Reflow batches come from the cached pairs; rendered batches from a worker that also encodes them.
    batches = None if pairs is not None else stage_batches(
        data, "denoiser", t.batch_size, start, t.steps, cfg.data_workers, t.prompt_dropout, pipe.vae
    )
    with _progress(console) as progress:
        task = progress.add_task(family, total=t.steps, completed=start, info="")
        for step in range(start, t.steps):
            for group in opt.param_groups:
                group["lr"] = t.lr * _lr_factor(step, t.warmup, t.steps, t.decay_steps)
            gen = _torch_gen(cfg.seed, 2, step)
            if batches is None:
                z, noise, prompts = pairs.batch(data.rng("reflow", step), t.batch_size, t.prompt_dropout)
                loss = denoiser_loss(pipe, family, cfg, None, prompts, gen, teacher, pair=(z, noise))
            else:
                batch = next_batch(batches, step)
                loss = denoiser_loss(
                    pipe, family, cfg, batch.images, batch.prompts, gen, teacher, latents=batch.latents
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
            opt.step()
            if ema is not None:
                ema.update(step)
            done = step + 1
            progress.update(task, completed=done, info=f"loss {loss.item():.4f}")
            if done % cfg.log.every == 0 or done == t.steps:
                wall_now = time.perf_counter() - t0
                append_jsonl(
                    metrics,
                    {"step": done, "loss": loss.item(), "grad_norm": grad_norm.item(), "wall": wall_now},
                )
                if not console.is_terminal:
                    console.print(
                        f"{family} step {done}/{t.steps} loss {loss.item():.4f} wall {wall_now:.0f}s"
                    )
            at_eval = cfg.log.eval_every > 0 and (done % cfg.log.eval_every == 0 or done == t.steps)
            at_grid = cfg.log.sample_every > 0 and (done % cfg.log.sample_every == 0 or done == t.steps)
            if at_eval or at_grid:
                for m in trainables.values():
                    m.eval()
                with weights():
                    if at_grid:
                        save_grid(
                            pipe, cfg, run_dir / "samples" / f"step-{done:06d}.png", cfg.log.grid_prompts
                        )
                    if at_eval:
                        scores = evaluate(pipe, cfg, cfg.log.eval_images_per_prompt, cfg.seed)
                        if scores is not None:
                            rec = {
                                "step": done,
                                "overall": scores["overall"],
                                "per_tag": scores.get("per_tag"),
                            }
                            append_jsonl(evals, rec)
                            console.print(
                                f"{family} step {done}: test strict {scores['overall']:.3f} {scores.get('per_tag')}"
                            )
                        export_model(
                            pipe,
                            cfg,
                            run_dir / "exports" / f"step-{done:06d}",
                            done,
                            time.perf_counter() - t0,
                            n_params,
                        )
                for m in trainables.values():
                    m.train()
            if done % cfg.log.checkpoint_every == 0 or done == t.steps:
                checkpoint(done)
    for m in trainables.values():
        m.eval()
    wall = time.perf_counter() - t0
    if ema is not None:
        with torch.no_grad():
            for s, p in zip(ema.shadow, ema.params, strict=True):
                p.copy_(s)
    pipe._visalign_wall = wall  # noqa: SLF001 - carried to the export summary
    return pipe


def export_model(
    pipe: Any, cfg: PretrainConfig, out: Path, step: int, wall: float, n_params: dict[str, int]
) -> Path:
    """Write a loadable pipeline folder with ``visalign.json`` (sampler, spec, training summary)."""
    extra = {
        "family": cfg.family,
        "spec": spec_to_dict(model_spec(cfg)),
        "training": {
            "denoiser_steps": step,
            "denoiser_wall_s": round(wall, 1),
            "batch_size": cfg.train.batch_size,
        },
        "parameters": n_params,
    }
    return save_pipeline(pipe, out, sampler=sampler_settings(cfg), extra=extra, half=cfg.export.half)


def finalize(cfg: PretrainConfig, run_dir: Path, out: Path, console: Console) -> None:
    """The card's evaluation (test split, seed 0), contact sheet and README.md; then the copy to export.path.

    The evaluation samples the exported folder as ``load_pipeline`` (and so ``visalign sample``) loads it, not the
    weights in memory: with ``export.half`` the stored float16 weights differ from the float32 ones by their
    rounding, which changes every image by a few pixel levels and a few of the card's 280 verdicts.
    """
    from visalign.models.loading import load_pipeline

    name = Path(cfg.export.path).name if cfg.export.path else f"shapes-{cfg.family}"
    if cfg.log.final_images_per_prompt > 0 and _have_verifier():
        _, pipe = load_pipeline(out)
        evaluation = final_evaluation(pipe, cfg, cfg.log.final_images_per_prompt, seed=0)
        contact_sheet(evaluation, out / CONTACT_SHEET)
        write_card(out, run_dir, cfg, evaluation, name)
        res = evaluation["results"]
        console.print(f"final test-split strict {res['overall']:.3f} soft {res['soft']:.3f} {res['per_tag']}")
    if cfg.export.path:
        dest = Path(cfg.export.path)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(out, dest)
        dest.chmod(0o755)
        console.print(f"copied the model to {dest}")


def finalize_export(cfg: PretrainConfig, step: int, console: Console | None = None) -> Path:
    """Make ``run_dir/exports/step-N`` the run's final model (what a ``train.steps=N`` run ends with).

    Learning rates are constant after the warm-up and batches depend only on (seed, step), so the pipeline
    exported at step N of a longer run is the pipeline an N-step run exports.
    """
    console = console or Console()
    torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.run_dir)
    src = run_dir / "exports" / f"step-{step:06d}"
    if not src.is_dir():
        raise UserError(f"{src}: no export at step {step} (exports are written every log.eval_every steps)")
    if cfg.train.decay_steps > 0:
        raise UserError(
            "train.decay_steps > 0: the export at an intermediate step was not decayed; run to train.steps instead"
        )
    if cfg.train.steps != step:
        raise UserError(
            f"train.steps={cfg.train.steps} but the export is step {step}; pass train.steps={step}"
        )
    out = run_dir / "model"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out)
    out.chmod(0o755)
    finalize(cfg, run_dir, out, console)
    return out


def stage_data(cfg: PretrainConfig, mixture: bool) -> ShapesData:
    """The train-split scene stream; ``mixture`` applies ``train.tag_weights`` / ``train.text_lengths``."""
    return ShapesData(
        cfg.seed,
        cfg.image_size,
        tag_balanced=cfg.train.tag_balanced,
        tags=cfg.train.tags,
        tag_weights=cfg.train.tag_weights if mixture else None,
        text_length_balanced=cfg.train.text_length_balanced,
        text_lengths=cfg.train.text_lengths if mixture else None,
    )


def run_pretrain(cfg: PretrainConfig, console: Console | None = None) -> Path:
    """Both stages, resumable; returns the final model folder (``run_dir/model``)."""
    console = console or Console()
    torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.run_dir)
    with RunLock(run_dir, "pretrain") as lock:  # one pretraining run per folder: two would mix their checkpoints
        if lock.stale_message():
            console.print(lock.stale_message(), soft_wrap=True)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
        data = stage_data(cfg, mixture=True)
        t0 = time.perf_counter()
        vae = train_vae(cfg, run_dir, data, console)
        pipe = train_denoiser(cfg, run_dir, data, vae, console)
        n_params = {
            name: count_parameters(m) for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)
        }
        out = export_model(pipe, cfg, run_dir / "model", cfg.train.steps, pipe._visalign_wall, n_params)
        finalize(cfg, run_dir, out, console)
    console.print(f"pretrain done in {time.perf_counter() - t0:.0f}s (this invocation): {out}")
    return out
