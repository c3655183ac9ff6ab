"""Training batches rendered (and, for the denoiser, encoded) by a worker process on another core.

Rendering a batch of 32 ShapesWorld scenes and encoding it with the frozen autoencoder takes about half of a
one-thread denoiser step (0.03 + 0.12 s of 0.31 s for the diffusion recipe). Neither depends on the weights
being trained, so a ``torch.utils.data.DataLoader`` worker does both for the next steps while the training
process runs the current one. Batch ``step`` is a pure function of ``(seed, stage, step)`` (``data.py``) and the
posterior *mode* is deterministic, so the worker's latents are the latents the training process would have
computed itself: with ``data_workers`` 0 or 1 a run's weights come out identical (tested), only sooner.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from visalign.pretrain.data import ShapesData


@dataclass
class StepBatch:
    """One training step's batch: images in [-1, 1], the prompts and (given an encoder) the normalised latents."""

    step: int
    images: torch.Tensor
    prompts: list[str]
    latents: torch.Tensor | None = None


def encode_normalised(vae: Any, images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> the posterior mode in the denoiser's units: (z - shift_factor) * scaling_factor."""
    z = vae.encode(images).latent_dist.mode()
    return (z - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor


class StageBatches(torch.utils.data.Dataset):
    """Item ``i`` is the batch of ``stage``'s step ``start + i``: rendered, then encoded when a frozen ``vae``
    is given."""

    def __init__(
        self, data: ShapesData, stage: str, vae: Any | None, batch_size: int, prompt_dropout: float, start: int,
        stop: int,
    ):
        self.data, self.stage, self.vae = data, stage, vae
        self.batch_size, self.prompt_dropout = batch_size, prompt_dropout
        self.start, self.stop = start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, index: int) -> StepBatch:
        step = self.start + index
        batch = self.data.batch(self.stage, step, self.batch_size, prompt_dropout=self.prompt_dropout)
        out = StepBatch(step=step, images=batch.images, prompts=batch.prompts)
        if self.vae is not None:
            with torch.no_grad():
                out.latents = encode_normalised(self.vae, batch.images)
        return out


def _keep(item: StepBatch) -> StepBatch:
    """The DataLoader's collate function: a batch is already a batch (no stacking, no conversion)."""
    return item


def stage_batches(
    data: ShapesData,
    stage: str,
    batch_size: int,
    start: int,
    stop: int,
    workers: int,
    prompt_dropout: float = 0.0,
    vae: Any | None = None,
) -> Iterator[StepBatch]:
    """Batches of ``stage``'s steps ``start .. stop - 1`` in order; ``workers`` > 0 prepares them in background
    processes. Workers are spawned (not forked: the training process has already started its OpenMP threads)
    and run one torch thread each, the DataLoader's default for workers.
    """
    dataset = StageBatches(data, stage, vae, batch_size, prompt_dropout, start, stop)
    if workers <= 0 or len(dataset) == 0:
        return (dataset[i] for i in range(len(dataset)))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        collate_fn=_keep,
        multiprocessing_context="spawn",
        prefetch_factor=4,
    )
    return iter(loader)


def next_batch(batches: Iterator[StepBatch], step: int) -> StepBatch:
    """The next batch, checked to be ``step``'s (the loader runs in step order; anything else is a bug)."""
    batch = next(batches)
    if batch.step != step:
        raise RuntimeError(f"the data loader delivered step {batch.step} for step {step}")
    return batch
