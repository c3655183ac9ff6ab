"""How well a reward model agrees with the verifier: Pearson / Spearman, MAE, strict accuracy and AUC.

``heldout_agreement`` scores every named held-out ``PairSet`` with the model and compares the predictions with
the verifier's labels of the same pairs (``agreement``).
"""

from __future__ import annotations

import numpy as np
import torch

from visalign.rewards.shapes_rm_model import ShapesRM
from visalign.rewards.shapes_rm_train.pairs import PairSet


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (for Spearman's rho)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC: the chance that a verifier-correct pair scores above a verifier-incorrect one (ties: 1/2)."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = _ranks(np.asarray(score, np.float64)) + 1.0
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def agreement(
    pred_soft: np.ndarray, pred_strict: np.ndarray, soft: np.ndarray, strict: np.ndarray
) -> dict[str, float]:
    """Agreement of predictions with the verifier: Pearson / Spearman of soft scores, MAE, strict accuracy."""
    pred_soft, soft = np.asarray(pred_soft, np.float64), np.asarray(soft, np.float64)
    hit = (np.asarray(pred_strict) > 0.5) == (np.asarray(strict) > 0.5)
    return {
        "n": int(len(soft)),
        "pearson": _pearson(pred_soft, soft),
        "spearman": _pearson(_ranks(pred_soft), _ranks(soft)) if len(soft) > 1 else float("nan"),
        "mae": float(np.abs(pred_soft - soft).mean()) if len(soft) else float("nan"),
        "strict_accuracy": float(hit.mean()) if len(soft) else float("nan"),
        "strict_auc": _auc(pred_soft, np.asarray(strict) > 0.5),
        "verifier_strict_rate": float((np.asarray(strict) > 0.5).mean()) if len(soft) else float("nan"),
        "verifier_soft_mean": float(soft.mean()) if len(soft) else float("nan"),
    }


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def predict(model: ShapesRM, pairs: PairSet, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(soft score, strict probability) predicted for every pair."""
    model.eval()
    soft, strict = [], []
    for start in range(0, len(pairs), batch_size):
        sl = slice(start, start + batch_size)
        out = model(to_tensor(pairs.images[sl]), [m["prompt"] for m in pairs.metadata[sl]])
        soft.append(torch.sigmoid(out["soft"]).numpy())
        strict.append(torch.sigmoid(out["strict"]).numpy())
    if not soft:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(soft), np.concatenate(strict)


def heldout_agreement(model: ShapesRM, sets: dict[str, PairSet]) -> dict[str, dict[str, float]]:
    """``agreement`` of the model with the verifier on each named held-out set (empty sets are skipped)."""
    out = {}
    for name, pairs in sets.items():
        if len(pairs):
            ps, pt = predict(model, pairs)
            out[name] = agreement(ps, pt, pairs.soft, pairs.strict)
    return out
