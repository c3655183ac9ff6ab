"""The network of the learned ShapesWorld reward model: a prompt-conditioned (FiLM) CNN.

``ShapesRM(images, prompts)`` scores (image, prompt) pairs. It returns two logits per pair:

* ``soft``: ``sigmoid(soft)`` regresses the ShapesWorld verifier's soft score (partial credit, in [0, 1]);
* ``strict``: ``sigmoid(strict)`` is the probability that the verifier's strict (GenEval) verdict is correct.

Architecture (all sizes live in ``RMConfig`` and are saved in the shipped ``config.json``):

* **prompt**: the prompt is lower-cased, quotes and punctuation become spaces, and it is split on whitespace;
  a number is split into its digits (``"the number 307"`` -> ``the number 3 0 7``). Tokens index a closed
  vocabulary (every word the ShapesWorld phrasings can produce, ``build_vocab``); an unknown word is a
  ``UserError`` naming the word and the prompt (a learned reward scores ShapesWorld prompts only, and a
  silent unknown token would make its score meaningless). Tokens are embedded and read by a one-layer
  bidirectional GRU; its two final states form the prompt vector.
* **image**: ``[B, 3, H, W]`` in [0, 1] (resized to ``image_size`` with bilinear antialiased interpolation when
  needed, differentiably), normalised, with two coordinate channels appended (CoordConv: positions matter for
  "left of" / "above"), then a stack of 3x3 convolutions; after each, GroupNorm without affine parameters,
  then a FiLM modulation (per-channel scale and shift computed from the prompt vector), then SiLU.
* **head**: global mean and max pooling of the last feature map plus a prompt-queried attention pooling,
  concatenated with the prompt vector, into a two-layer MLP with two outputs.

Everything is differentiable in the image (no argmax, no thresholds), so reward back-propagation methods
(ReFL, DRaFT, AlignProp) can optimise the score. Pure torch, no batch-dependent layers: a pair's score does
not depend on the rest of the batch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visalign.errors import UserError

PAD, BOS = "<pad>", "<bos>"
_SPLIT = re.compile(r"[^a-z0-9]+")


def build_vocab() -> list[str]:
    """Every token a ShapesWorld prompt can contain (sorted), after ``<pad>`` and ``<bos>``."""
    from visalign.worlds.shapes import phrasings as ph
    from visalign.worlds.shapes.vocab import COLORS, NUMBER_WORDS, PLURALS, RELATIONS, SHAPES

    words: set[str] = set("0123456789") | {"a", "an"}
    for templates in ph.PHRASINGS.values():
        for template in templates:
            words |= set(_SPLIT.split(re.sub(r"\{[^}]*\}", " ", template.lower())))
    for group in (
        SHAPES,
        PLURALS.values(),
        COLORS,
        NUMBER_WORDS.values(),
        RELATIONS,
        ph._LONG_RELATION.values(),
    ):
        for phrase in group:
            words |= set(_SPLIT.split(phrase.lower()))
    words.discard("")
    return [PAD, BOS, *sorted(words)]


def tokenize(prompt: str) -> list[str]:
    """Lower-case words of ``prompt``; numbers split into digits (see the module docstring)."""
    out: list[str] = []
    for word in _SPLIT.split(prompt.lower()):
        if not word:
            continue
        out.extend(list(word) if word.isdigit() else [word])
    return out


@dataclass
class RMConfig:
    """Sizes of the reward model; saved as ``config.json`` next to the weights."""

    vocab: list[str] = field(default_factory=build_vocab)
    image_size: int = 64
    embed_dim: int = 48
    text_dim: int = 64  # per GRU direction; the prompt vector has 2 * text_dim features
    channels: tuple[int, ...] = (32, 64, 96, 128)
    strides: tuple[int, ...] = (2, 2, 2, 1)
    head_dim: int = 128
    max_tokens: int = 24
    groups: int = 8

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["strides"] = list(self.strides)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RMConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown reward-model config key(s): {sorted(unknown)}")
        data = dict(data)
        for key in ("channels", "strides"):
            if key in data:
                data[key] = tuple(int(x) for x in data[key])
        return cls(**data)


class ShapesRM(nn.Module):
    """Prompt-conditioned CNN scoring (image, prompt) pairs; see the module docstring."""

    def __init__(self, config: RMConfig | None = None) -> None:
        super().__init__()
        self.config = config or RMConfig()
        c = self.config
        if len(c.channels) != len(c.strides):
            raise ValueError("channels and strides must have the same length")
        self.index = {w: i for i, w in enumerate(c.vocab)}
        self.embed = nn.Embedding(len(c.vocab), c.embed_dim, padding_idx=0)
        self.gru = nn.GRU(c.embed_dim, c.text_dim, batch_first=True, bidirectional=True)
        text = 2 * c.text_dim
        convs = []
        in_ch = 3 + 2  # RGB + coordinate channels
        for ch, stride in zip(c.channels, c.strides, strict=True):
            convs.append(nn.Conv2d(in_ch, ch, 3, stride=stride, padding=1))
            in_ch = ch
        self.convs = nn.ModuleList(convs)
        self.film = nn.Linear(text, 2 * sum(c.channels))
        self.query = nn.Linear(text, in_ch)
        self.head = nn.Sequential(
            nn.Linear(3 * in_ch + text, c.head_dim),
            nn.SiLU(),
            nn.Linear(c.head_dim, 2),
        )
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    # -- prompts -------------------------------------------------------------------------------------------
    def token_ids(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [B, T], lengths [B]) for ``prompts``; an unknown word is a ``UserError``."""
        rows = []
        for prompt in prompts:
            tokens = tokenize(prompt)
            unknown = [t for t in tokens if t not in self.index]
            if unknown:
                raise UserError(
                    f"shapes_rm: prompt {prompt!r} has word(s) outside the ShapesWorld vocabulary: "
                    f"{', '.join(sorted(set(unknown)))} (the learned reward model scores ShapesWorld prompts only)"
                )
            ids = [self.index[BOS]] + [self.index[t] for t in tokens]
            rows.append(ids[: self.config.max_tokens])
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return ids, torch.tensor([len(r) for r in rows])

    def encode_prompts(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Prompt vectors [B, 2 * text_dim] from token ids."""
        packed = nn.utils.rnn.pack_padded_sequence(
            self.embed(ids.to(self.embed.weight.device)),
            lengths.cpu(),
            batch_first=True,
            enforce_sorted=False,
        )
        _, h = self.gru(packed)  # [2, B, text_dim]
        return torch.cat([h[0], h[1]], dim=-1)

    # -- images --------------------------------------------------------------------------------------------
    def prepare_images(self, images: torch.Tensor) -> torch.Tensor:
        """Resize to ``image_size`` (differentiably) and normalise; ``images`` in [0, 1], [B, 3, H, W]."""
        size = self.config.image_size
        x = images.to(self.embed.weight.dtype)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return (x - 0.5) / 0.25

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Logits ``{"soft": [B], "strict": [B]}`` for (image, prompt) pairs.

        Each distinct prompt of the batch is encoded once (RL batches repeat a prompt per group member).
        """
        unique = list(dict.fromkeys(prompts))
        ids, lengths = self.token_ids(unique)
        row = {p: i for i, p in enumerate(unique)}
        which = torch.tensor([row[p] for p in prompts], dtype=torch.long)
        return self.forward_ids(images, ids, lengths, which)

    def forward_ids(
        self,
        images: torch.Tensor,
        ids: torch.Tensor,
        lengths: torch.Tensor,
        which: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """As ``forward``, from token ids of distinct prompts; ``which[i]`` is the prompt row of image i
        (default: row i)."""
        c = self.config
        t = self.encode_prompts(ids, lengths)
        if which is not None:
            t = t[which.to(t.device)]
        x = self.prepare_images(images)
        b, _, h, w = x.shape
        ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype)
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")).expand(b, 2, h, w)
        x = torch.cat([x, grid], dim=1)
        gammas_betas = self.film(t).split([2 * ch for ch in c.channels], dim=-1)
        for conv, gb in zip(self.convs, gammas_betas, strict=True):
            x = conv(x)
            x = F.group_norm(x, c.groups)
            gamma, beta = gb.chunk(2, dim=-1)
            x = x * (1.0 + gamma[:, :, None, None]) + beta[:, :, None, None]
            x = F.silu(x)
        flat = x.flatten(2)  # [B, C, N]
        q = self.query(t)  # [B, C]
        attn = torch.softmax(torch.einsum("bc,bcn->bn", q, flat) / flat.shape[1] ** 0.5, dim=-1)
        pooled = torch.cat([flat.mean(-1), flat.amax(-1), torch.einsum("bn,bcn->bc", attn, flat), t], dim=-1)
        out = self.head(pooled)
        return {"soft": out[:, 0], "strict": out[:, 1]}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# -- files ---------------------------------------------------------------------------------------------------
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = "visalign-shapes-rm"


def save_rm(model: ShapesRM, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (the model sizes, plus ``extra`` facts) to ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS), metadata={"format": FORMAT})
    config = {"format": FORMAT, "version": 1, "model": model.config.to_dict(), **(extra or {})}
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return folder


def load_rm(folder: str | Path, device: str | torch.device = "cpu") -> ShapesRM:
    """Load a reward model folder written by ``save_rm``; every missing or corrupt file is a ``UserError``
    naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such reward-model folder (expected {CONFIG} and {WEIGHTS} inside)")
    config_file, weights_file = folder / CONFIG, folder / WEIGHTS
    for f in (config_file, weights_file):
        if not f.is_file():
            raise UserError(f"{f}: missing (a shapes_rm folder holds {CONFIG} and {WEIGHTS})")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{config_file}: corrupt JSON ({err})") from None
    if (
        not isinstance(config, dict)
        or config.get("format") != FORMAT
        or not isinstance(config.get("model"), dict)
    ):
        raise UserError(
            f'{config_file}: not a shapes_rm config (expected "format": "{FORMAT}" and a "model" object)'
        )
    try:
        model = ShapesRM(RMConfig.from_dict(config["model"]))
    except (TypeError, ValueError) as err:
        raise UserError(f"{config_file}: bad model config ({err})") from None
    try:
        state = load_file(str(weights_file))
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{weights_file}: corrupt or unreadable safetensors file ({err})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise UserError(f"{weights_file}: weights do not match {config_file} ({first})") from None
    return model.to(device).eval()
