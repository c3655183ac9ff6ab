"""Training curves as PNG bytes (matplotlib, Agg backend): reward and held-out eval over iterations."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def reward_curve(rows: list[dict[str, Any]]) -> bytes | None:
    pts = [(r["iteration"], r["reward/mean"], r.get("reward/std", 0.0)) for r in rows if "reward/mean" in r]
    if not pts:
        return None
    it, mean, std = zip(*pts, strict=True)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(it, mean, label="reward mean")
    ax.fill_between(it, [m - s for m, s in zip(mean, std, strict=True)],
                    [m + s for m, s in zip(mean, std, strict=True)], alpha=0.2, label="± std")
    ax.set_xlabel("iteration")
    ax.set_ylabel("train reward")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def eval_curve(rows: list[dict[str, Any]]) -> bytes | None:
    pts = [r for r in rows if "eval/overall" in r]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2))
    its = [r["iteration"] for r in pts]
    ax.plot(its, [r["eval/overall"] for r in pts], "o-", lw=2, label="overall")
    tags = sorted({k for r in pts for k in r if k.startswith("eval/tag/")})
    for key in tags:
        ax.plot(its, [r.get(key, float("nan")) for r in pts], "--", alpha=0.7, label=key.split("/")[-1])
    ax.set_xlabel("iteration")
    ax.set_ylabel("held-out score")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _png(fig)


def timing_bars(timings: dict[str, float]) -> bytes | None:
    parts = {k: v for k, v in timings.items() if k != "wall" and v > 0}
    if not parts:
        return None
    fig, ax = plt.subplots(figsize=(6, 1.8))
    left = 0.0
    for k, v in parts.items():
        ax.barh([0], [v], left=left, label=f"{k} {v:.0f}s")
        left += v
    ax.set_yticks([])
    ax.set_xlabel("seconds")
    ax.legend(fontsize=7, ncol=len(parts), loc="upper center", bbox_to_anchor=(0.5, 1.5))
    return _png(fig)
