"""OCR accuracy (Flow-GRPO's text-rendering reward, Liu et al., 2025, "Flow-GRPO").

target = the text between the first pair of double quotes of the prompt (or ``metadata["text"]``),
recognised = the OCR engine's text; both lower-cased with spaces removed; then

    reward = 1 - min(Levenshtein(recognised, target), len(target)) / len(target)       (in [0, 1])

The OCR engine is pluggable (``OCREngine``: PIL images in, strings out). Built-in adapters: ``paddleocr``
(Flow-GRPO's choice), ``tesseract`` (pytesseract), ``rapidocr``; or ``engine="module:function"`` naming any
callable ``f(list[PIL.Image]) -> list[str]``. None of these engines is a dependency of visalign: if the one
asked for is not installed, building the reward raises a ``UserError`` saying what to install.
Not differentiable.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from PIL import Image

from visalign.errors import UserError
from visalign.rewards._images import to_pil
from visalign.rewards.base import Reward, RewardError, register_reward


class OCREngine(Protocol):
    """Anything that reads the text of each image."""

    def __call__(self, images: Sequence[Image.Image]) -> list[str]: ...


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def normalise_text(text: str) -> str:
    return text.replace(" ", "").lower()


def ocr_accuracy(recognised: str, target: str) -> float:
    """``1 - min(lev, len) / len`` on normalised strings; an empty target scores 1 if nothing is read, else 0."""
    recognised, target = normalise_text(recognised), normalise_text(target)
    if not target:
        return 1.0 if not recognised else 0.0
    return 1.0 - min(levenshtein(recognised, target), len(target)) / len(target)


def target_text(prompt: str, meta: dict[str, Any]) -> str:
    """``metadata["text"]`` if present, else the first double-quoted span of the prompt, else the prompt."""
    if "text" in meta:
        return str(meta["text"])
    parts = prompt.split('"')
    return parts[1] if len(parts) >= 3 else prompt


def _paddleocr() -> OCREngine:
    import numpy as np
    from paddleocr import PaddleOCR  # type: ignore[import-not-found]

    ocr = PaddleOCR(use_angle_cls=False, lang="en", use_gpu=False, show_log=False)

    def read(images: Sequence[Image.Image]) -> list[str]:
        texts = []
        for img in images:
            result = ocr.ocr(np.asarray(img), cls=False)
            lines = result[0] if result and result[0] else []
            texts.append("".join(line[1][0] for line in lines if line[1][1] > 0))
        return texts

    return read


def _tesseract() -> OCREngine:
    import pytesseract  # type: ignore[import-not-found]

    return lambda images: [pytesseract.image_to_string(img).strip() for img in images]


def _rapidocr() -> OCREngine:
    import numpy as np
    from rapidocr_onnxruntime import RapidOCR  # type: ignore[import-not-found]

    engine = RapidOCR()

    def read(images: Sequence[Image.Image]) -> list[str]:
        out = []
        for img in images:
            result, _ = engine(np.asarray(img))
            out.append("".join(item[1] for item in result or []))
        return out

    return read


ENGINES: dict[str, tuple[Callable[[], OCREngine], str]] = {
    "paddleocr": (_paddleocr, "pip install paddlepaddle paddleocr"),
    "tesseract": (_tesseract, "pip install pytesseract (and the tesseract binary)"),
    "rapidocr": (_rapidocr, "pip install rapidocr_onnxruntime"),
}


def load_engine(engine: str | OCREngine | None) -> OCREngine:
    """Resolve ``engine``: a callable, a built-in name, ``"module:function"``, or ``None`` (first installed)."""
    if callable(engine):
        return engine
    if engine is None:
        for factory, _hint in ENGINES.values():
            try:
                return factory()
            except ImportError:
                continue
        hints = "; ".join(f"{n}: {h}" for n, (_f, h) in ENGINES.items())
        raise UserError(f"reward 'ocr': no OCR engine is installed ({hints}), or pass engine='module:function'")
    if engine in ENGINES:
        factory, hint = ENGINES[engine]
        try:
            return factory()
        except ImportError as err:
            raise UserError(f"reward 'ocr': OCR engine '{engine}' is not installed ({hint}): {err}") from err
    if ":" in engine:
        module_name, _, attr = engine.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise UserError(f"reward 'ocr': cannot import OCR engine '{engine}': {err}") from err
        if not callable(fn):
            raise UserError(f"reward 'ocr': '{engine}' is not callable")
        return fn
    raise UserError(f"reward 'ocr': unknown OCR engine '{engine}'; known: {', '.join(ENGINES)} or 'module:function'")


@register_reward("ocr")
class OCRAccuracy(Reward):
    """Flow-GRPO OCR reward in [0, 1]; ``engine``: see module docstring."""

    name = "ocr"
    summary = "OCR accuracy 1-min(lev,len)/len (Flow-GRPO); pluggable engine"
    differentiable = False
    groupwise = False
    output_range = (0.0, 1.0)

    def __init__(self, engine: str | OCREngine | None = None) -> None:
        self.engine = load_engine(engine)

    def score(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        texts = self.engine(to_pil(images))
        if len(texts) != len(prompts):
            raise RewardError(f"reward 'ocr': the OCR engine returned {len(texts)} texts for {len(prompts)} images")
        values = [ocr_accuracy(str(t), target_text(p, m)) for t, p, m in zip(texts, prompts, metadata, strict=True)]
        return {self.name: torch.tensor(values, dtype=torch.float32)}
