"""Locality priors for a small SD3 transformer trained from scratch, inside the stock class's weights.

SD3's sincos position embedding is built for grids of 64+ tokens a side. On an 8 x 8 grid most of its
frequencies barely turn: adjacent tokens' embeddings have cosine similarity 0.98 and opposite corners 0.74, so
attention cannot tell a neighbour from a far token, and the shipped model's first two layers attend almost
uniformly (entropy 4.26 nats of a possible 4.38). Both priors below live in tensors the stock
``SD3Transformer2DModel`` already saves (its persistent ``pos_embed`` buffer, its q / k projections), so a
folder trained with them loads in plain diffusers.

Measured on ShapesWorld (docs/models.md): the local embedding makes the first layers attend locally and the
mimetic initialisation makes attention almost self-only, and neither raises the held-out score.

* ``local_position_embedding``: rows whose Gram matrix is a Gaussian kernel over the grid,
  ``E E^T = c * exp(-|p_i - p_j|^2 / (2 l^2))``, so position similarity falls off with distance.
* ``mimetic_qk_init`` (Trockman & Kolter 2023, "Mimetic Initialization of Self-Attention Layers"): each head's
  ``W_q^T W_k`` starts as the best rank-``head_dim`` approximation of ``alpha Z + beta I`` (``Z`` Gaussian), so a
  token's query matches keys that look like it, its neighbours through the position embedding.
"""

from __future__ import annotations

import torch
from diffusers import SD3Transformer2DModel

from visalign.seeding import torch_generator


def local_position_embedding(grid: int, width: int, length: float = 1.0, seed: int = 0) -> torch.Tensor:
    """A ``[grid * grid, width]`` embedding with ``E E^T = (width / 2) * K``, ``K`` the Gaussian kernel of the
    token grid with length scale ``length`` (tokens). ``width / 2`` is the squared row norm of SD3's sincos
    rows, so the patch content keeps its weight against position."""
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    points = torch.stack([ys.flatten(), xs.flatten()], dim=1).double()
    kernel = torch.exp(-torch.cdist(points, points).square() / (2 * length**2))
    values, vectors = torch.linalg.eigh(kernel)
    factor = vectors * values.clamp_min(0).sqrt()  # factor @ factor.T == kernel
    n = grid * grid
    gen = torch_generator(seed)
    if width >= n:  # rotate the n coordinates into the model's width (orthonormal rows: the Gram is kept)
        rotation = torch.linalg.qr(torch.randn(width, n, generator=gen, dtype=torch.float64))[0].T
        embed = factor @ rotation
    else:  # keep the leading eigen-directions
        embed = factor[:, -width:]
    return (embed * (width / 2) ** 0.5).float()


@torch.no_grad()
def set_local_position_embedding(transformer: SD3Transformer2DModel, length: float = 1.0) -> None:
    patch = transformer.pos_embed
    grid = patch.pos_embed_max_size
    if grid is None:
        raise ValueError("a local position embedding needs pos_embed_max_size (SD3's persistent buffer)")
    width = patch.pos_embed.shape[-1]
    patch.pos_embed.copy_(local_position_embedding(grid, width, length).unsqueeze(0))


@torch.no_grad()
def mimetic_qk_init(
    transformer: SD3Transformer2DModel, alpha: float = 0.7, beta: float = 0.7, seed: int = 0
) -> None:
    """Image-stream ``to_q`` / ``to_k`` of every block: per head, ``W_q^T W_k`` = the top-``head_dim`` SVD part
    of ``alpha Z + beta I`` with ``Z ~ N(0, 1 / width)`` (biases zero)."""
    gen = torch_generator(seed)
    for block in transformer.transformer_blocks:
        attn = block.attn
        width = attn.to_q.in_features
        head_dim = attn.to_q.out_features // attn.heads
        for h in range(attn.heads):
            target = alpha * torch.randn(width, width, generator=gen) / width**0.5 + beta * torch.eye(width)
            u, s, vh = torch.linalg.svd(target)
            root = s[:head_dim].sqrt()
            rows = slice(h * head_dim, (h + 1) * head_dim)
            attn.to_q.weight[rows] = (u[:, :head_dim] * root).T
            attn.to_k.weight[rows] = vh[:head_dim] * root[:, None]
        attn.to_q.bias.zero_()
        attn.to_k.bias.zero_()
