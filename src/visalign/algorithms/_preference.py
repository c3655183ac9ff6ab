"""Pieces shared by the preference algorithms (Diffusion-DPO, Diffusion-KTO): the implicit reward, the losses, the
pairing of a rollout's groups, and the online / offline batches.

**Implicit reward.** A clean latent x_0 is forward-noised (``_forward_process.forward_noise``: shared eps and t
within a pair) and both the policy and the frozen reference (``generator.reference()``) predict the target
(eps or v for diffusion models, the flow-matching velocity eps - x_0 for flow models):

    mse_m(x_0) = mean_{C,H,W} (target - out_m(x_t, t))^2,        m in {theta, ref}

The denoising error stands in for -log p_m(x_0) (Diffusion-DPO's ELBO bound), so the per-image implicit log-ratio
is log p_theta / p_ref ~ -(mse_theta - mse_ref) / 2 (the log-density of a unit Gaussian, up to T w(t), which the
papers fold into beta).

**Online** (``dataset`` unset): pairs / labels come from each rollout (the trainer's rewards); **offline**
(``dataset: path``): from a preference file (``visalign.preference_data``). Offline, the algorithm's
``offline_batch`` replaces the rollout: each iteration reads the next ``prompts_per_iter x group_size`` items of
an endless, per-epoch shuffled pass over the file (a pure function of the run seed and the iteration, so resumed
runs repeat), encodes their images through the VAE and the trainer optimises on them like on a rollout.

Determinism: every noise / time draw comes from a seed derived from the sample's seed (rollout seeds online,
(run seed, iteration, position) offline), the pass over the batch (inner epoch) and the draw index.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from visalign.algorithms._forward_process import ForwardOptions, forward_noise, forward_seed, regression_loss
from visalign.algorithms.base import Algorithm, RunContext
from visalign.config_io import StrictModel
from visalign.preference_data import ImageRef, pixel_size
from visalign.seeding import sample_seed, torch_generator

if TYPE_CHECKING:
    from visalign.models.base import Cond, Generator

DPO_LOSSES = ("sigmoid", "hinge", "ipo")

# ---------------------------------------------------------------------------------------------------------------
# the losses


def dpo_loss(
    mse_w: torch.Tensor, mse_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor, beta: float,
    kind: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss and the implicit log-ratio margin u, both ``[P]``.

    u = -1/2 [(mse_theta(w) - mse_ref(w)) - (mse_theta(l) - mse_ref(l))]   (> 0: the policy prefers w more than
    the reference does). With TRL's DPO trainer's loss types on these logits (huggingface/trl, ``DPOTrainer``):

    * ``sigmoid``: -log sigmoid(beta u)         (Diffusion-DPO: -log sigmoid(-beta/2 [...]))
    * ``hinge``:   relu(1 - beta u)             (SLiC)
    * ``ipo``:     (u - 1 / (2 beta))^2         (IPO, Azar et al. 2023; beta is IPO's tau, on its own scale)
    """
    u = -0.5 * ((mse_w - ref_w) - (mse_l - ref_l))
    if kind == "sigmoid":
        return -F.logsigmoid(beta * u), u
    if kind == "hinge":
        return torch.relu(1 - beta * u), u
    if kind == "ipo":
        return (u - 1 / (2 * beta)) ** 2, u
    raise ValueError(f"unknown DPO loss type '{kind}' ({', '.join(DPO_LOSSES)})")


def kto_loss(
    mse: torch.Tensor, ref: torch.Tensor, sign: torch.Tensor, beta: float, lambda_d: float = 1.0,
    lambda_u: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample KTO loss ``[B]`` and the reference point z_0 (a scalar).

    g = mse_ref - mse_theta (the implicit reward / beta); z_0 = max(0, mean g) over the labelled samples,
    detached; with y = +1 (desirable) or -1 (undesirable):

        L = lambda_y (1 - sigmoid(y beta (g - z_0)))          (0 where ``sign`` is 0: unlabelled)
    """
    labelled = sign != 0
    g = ref - mse
    if labelled.any():
        z0 = g.detach()[labelled].mean().clamp(min=0)
    else:
        z0 = g.new_zeros(())
    weight = torch.where(sign > 0, torch.full_like(g, lambda_d), torch.full_like(g, lambda_u))
    loss = weight * (1 - torch.sigmoid(sign * beta * (g - z0)))
    return loss * labelled.to(loss.dtype), z0


# ---------------------------------------------------------------------------------------------------------------
# pairs from a rollout


def best_worst_pairs(reward: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(winners, losers) sample indices ``[P]``: per group the best and the worst member (the first on ties for
    either place); groups of one member, or whose best and worst score the same, give no pair."""
    winners, losers = [], []
    for gid in group_ids.unique(sorted=True).tolist():
        idx = (group_ids == gid).nonzero().flatten()
        r = reward[idx]
        if len(idx) < 2 or bool(r.max() == r.min()):
            continue
        winners.append(int(idx[torch.argmax(r)]))
        losers.append(int(idx[torch.argmin(r)]))
    return torch.tensor(winners, dtype=torch.long), torch.tensor(losers, dtype=torch.long)


# ---------------------------------------------------------------------------------------------------------------
# batches


@dataclass
class PairBatch:
    """Preference pairs of a minibatch (what Diffusion-DPO's ``loss`` receives). The pair's seed gives the shared
    (eps, t) of winner and loser; ``weight`` is each pair's share of the minibatch loss."""

    x0_w: torch.Tensor  # [P, C, h, w]
    x0_l: torch.Tensor
    cond: Cond  # [P] rows: winner and loser share the prompt
    seeds: torch.Tensor  # [P] int64
    weight: torch.Tensor  # [P]


@dataclass
class LabelledBatch:
    """Images with desirable (+1) / undesirable (-1) / no (0) labels (what Diffusion-KTO's ``loss`` receives)."""

    x0: torch.Tensor  # [B, C, h, w]
    cond: Cond
    seeds: torch.Tensor  # [B] int64
    sign: torch.Tensor  # [B] float
    weight: float  # 1 / minibatch size: the loss is a sum over the batch divided by its size


@dataclass
class OfflineBatch:
    """An iteration's share of an offline data set, encoded; it stands in for a rollout in the trainer's loop
    (``len`` and an all-true ``mask``)."""

    latents: torch.Tensor  # [n, K, C, h, w]: K = 2 (winner, loser) for pairs, 1 for labelled images
    cond: Cond
    seeds: torch.Tensor  # [n] int64
    sign: torch.Tensor  # [n] float: +1 desirable, -1 undesirable (labelled images; 0 for pairs)
    mask: torch.Tensor  # [n] bool

    def __len__(self) -> int:
        return int(self.latents.shape[0])


@dataclass(frozen=True)
class OfflineItem:
    """One item of an offline data set: its caption, its images (winner, loser for a pair) and a label sign."""

    caption: str
    images: tuple[ImageRef, ...]
    sign: float = 0.0


# ---------------------------------------------------------------------------------------------------------------
# the base class


class PreferenceOptions(ForwardOptions):
    """Options shared by the preference algorithms (the forward process's ``time_sampling``, ``t_min``, ``t_max``,
    ``draws_per_sample`` included)."""

    dataset: str | None = None  # offline: a .jsonl / .parquet preference file; None: online, from rollouts
    verify_images: bool = True  # offline: decode every image when the run starts (fail early on a bad one)


class PreferenceAlgorithm(Algorithm):
    """Base of Diffusion-DPO / Diffusion-KTO: offline batches, pass counting, the implicit-reward errors.

    Subclasses implement ``_online`` (a minibatch of a rollout -> (batch, keys) or None), ``_offline`` (the same
    for a minibatch of an ``OfflineBatch``), ``_load`` (a data file -> ``OfflineItem`` list) and ``loss``."""
    approach = "preference"

    needs = frozenset({"pairs"})
    Options = PreferenceOptions

    def __init__(self, options: StrictModel) -> None:
        super().__init__(options)
        self._passes: dict[int, int] = {}
        self._items: list[OfflineItem] | None = None
        self._orders: dict[int, torch.Tensor] = {}

    # ---- hooks of the trainer -------------------------------------------------------------------------------
    def bind(self, context: RunContext) -> None:
        super().bind(context)
        if self.options.dataset is not None:
            self._items = self._load(self.options.dataset, self.options.verify_images)

    def on_iteration_start(self, iteration: int) -> None:
        self._passes = {}  # passes over each sample of this iteration's batch (its inner epochs)

    def state_dict(self) -> dict[str, Any]:
        # the data order is a function of (seed, iteration) and the data set's size: a resume must see the same size
        return {"dataset_items": len(self._items)} if self._items is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved, now = state.get("dataset_items"), len(self._items) if self._items is not None else None
        if saved != now:
            raise ValueError(f"the checkpoint was trained on {saved or 'no'} offline items, "
                             f"algorithm.options.dataset gives {now or 'none'}")

    def offline_batch(self, iteration: int, generator: Generator) -> OfflineBatch | None:
        """The iteration's batch from the data set (offline), or None (online: the trainer rolls out)."""
        if self.options.dataset is None:
            return None
        if self._items is None:
            self._items = self._load(self.options.dataset, self.options.verify_images)
        ctx = self.context
        world, rank, seed = ctx.world, ctx.rank, ctx.seed
        n_global = int(ctx.samples_per_iter or len(self._items))
        n_local = n_global // world
        start = (iteration - 1) * n_global + rank * n_local
        positions = range(start, start + n_local)
        items = [self._items[self._position(p, seed)] for p in positions]
        height, width = pixel_size(generator)
        k = len(items[0].images)
        pixels = torch.stack([ref.load(height, width) for item in items for ref in item.images])
        latents = generator.encode_images(pixels)
        latents = latents.reshape(len(items), k, *latents.shape[1:]).to(generator.device)
        return OfflineBatch(
            latents=latents,
            cond=generator.encode([item.caption for item in items]),
            seeds=torch.tensor([sample_seed(seed, iteration, 0, p, stream="offline") for p in positions]),
            sign=torch.tensor([item.sign for item in items], dtype=torch.float32, device=generator.device),
            mask=torch.ones(len(items), dtype=torch.bool),
        )

    def micro_batches(self, data: Any, indices: torch.Tensor) -> Iterator[Any]:
        made = self._offline(data, indices) if isinstance(data, OfflineBatch) else self._online(data, indices)
        if made is None:  # nothing to learn from in this minibatch (no pair / no label)
            return
        batch, keys = made
        epochs = [self._passes.get(i, 0) for i in keys]
        for i in keys:
            self._passes[i] = self._passes.get(i, 0) + 1
        for draw in range(self.options.draws_per_sample):
            seeds = [forward_seed(s, e, draw) for s, e in zip(batch.seeds.tolist(), epochs, strict=True)]
            yield dataclasses.replace(batch, seeds=torch.tensor(seeds, dtype=torch.int64))

    # ---- pieces for subclasses --------------------------------------------------------------------------------
    # ``_online`` / ``_offline`` return (batch, keys) or None; keys[i] is the index (in the rollout / offline batch)
    # under which row i's passes are counted, so that each inner epoch draws fresh noise for it.
    def _online(self, rollout: Any, indices: torch.Tensor) -> tuple[Any, list[int]] | None:
        raise NotImplementedError

    def _offline(self, data: OfflineBatch, indices: torch.Tensor) -> tuple[Any, list[int]] | None:
        raise NotImplementedError

    def _load(self, path: str, verify_images: bool) -> list[OfflineItem]:
        raise NotImplementedError

    def _position(self, p: int, seed: int) -> int:
        """Item at position ``p`` of the endless pass over the data set (a fresh permutation each epoch)."""
        assert self._items is not None
        n = len(self._items)
        epoch = p // n
        if epoch not in self._orders:
            g = torch_generator(sample_seed(seed, epoch, 0, 0, stream="offline-order"))
            self._orders = {epoch: torch.randperm(n, generator=g)}  # only the current epoch is ever needed
        return int(self._orders[epoch][p % n])

    def denoising_errors(
        self, generator: Generator, x0: torch.Tensor, seeds: torch.Tensor, cond: Cond
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mse_theta, mse_ref), ``[B]`` float32: the conditional predictions (no guidance) of the policy and of
        the frozen reference on the same forward-noised inputs."""
        opts = self.options
        noised = forward_noise(x0, seeds, generator, opts.time_sampling, opts.t_min, opts.t_max,
                               self.context.schedule)
        mse = regression_loss(generator.predict(noised.x_t, noised.t_model, cond, 1.0), noised)
        with torch.no_grad(), generator.reference():
            ref = regression_loss(generator.predict(noised.x_t, noised.t_model, cond, 1.0), noised)
        return mse, ref

