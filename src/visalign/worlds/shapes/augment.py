"""Image degradations that stand in for what generators produce, used to measure verifier robustness.

``degrade`` applies, in order, colour jitter (independent per-channel gains within +-``jitter``),
Gaussian blur (``sigma`` px), Gaussian pixel noise (``noise``, in [0, 1] units) and a JPEG round trip
(``quality``); each is skipped when its strength is 0 / None. ``random_degradation`` draws strengths
uniformly up to the limits the verifier is specified for.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

LIMITS = {"sigma": 1.0, "noise": 0.05, "quality": 50, "jitter": 0.08}


@dataclass(frozen=True)
class Degradation:
    sigma: float = 0.0
    noise: float = 0.0
    quality: int | None = None
    jitter: float = 0.0


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a float (H, W, C) image with edge replication."""
    if sigma <= 0:
        return image
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    p = np.pad(image, ((r, r), (0, 0), (0, 0)), mode="edge")
    image = sum(k[i] * p[i : i + image.shape[0]] for i in range(2 * r + 1))
    p = np.pad(image, ((0, 0), (r, r), (0, 0)), mode="edge")
    return sum(k[i] * p[:, i : i + image.shape[1]] for i in range(2 * r + 1))


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """A JPEG encode/decode round trip of a uint8 image."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def degrade(image: np.ndarray, deg: Degradation, rng: np.random.Generator) -> np.ndarray:
    """Apply ``deg`` to a uint8 (H, W, 3) image; returns uint8."""
    x = image.astype(np.float32) / 255.0
    if deg.jitter:
        x = x * rng.uniform(1.0 - deg.jitter, 1.0 + deg.jitter, size=3).astype(np.float32)
    x = gaussian_blur(x, deg.sigma)
    if deg.noise:
        x = x + rng.normal(0.0, deg.noise, size=x.shape).astype(np.float32)
    out = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    return jpeg(out, deg.quality) if deg.quality is not None else out


def random_degradation(rng: np.random.Generator) -> Degradation:
    """All four degradations at once, each with a strength drawn uniformly up to its limit."""
    return Degradation(
        sigma=float(rng.uniform(0.0, LIMITS["sigma"])),
        noise=float(rng.uniform(0.0, LIMITS["noise"])),
        quality=int(rng.integers(LIMITS["quality"], 96)),
        jitter=float(rng.uniform(0.0, LIMITS["jitter"])),
    )
