"""Rule-based rewards: JPEG (sizes recomputed with PIL here), OCR (hand-computed distances), the contract."""

from __future__ import annotations

import io
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from visalign.errors import UserError
from visalign.rewards import Reward, RewardError, build_reward
from visalign.rewards.ocr import levenshtein, ocr_accuracy, target_text


def _jpeg_kb(array: np.ndarray) -> float:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return len(buffer.getvalue()) / 1000.0


def test_jpeg_sizes_match_pil_and_signs() -> None:
    rng = np.random.default_rng(0)
    flat = np.full((32, 48, 3), 90, dtype=np.uint8)
    noise = rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    images = torch.from_numpy(np.stack([flat, noise])).permute(0, 3, 1, 2).float() / 255
    expected = torch.tensor([_jpeg_kb(flat), _jpeg_kb(noise)])
    comp = build_reward("jpeg_compressibility")(images, ["a", "b"])
    incomp = build_reward("jpeg_incompressibility")(images, ["a", "b"])
    assert list(comp) == ["jpeg_compressibility"]
    torch.testing.assert_close(comp["jpeg_compressibility"], -expected)
    torch.testing.assert_close(incomp["jpeg_incompressibility"], expected)
    assert expected[1] > 3 * expected[0]  # noise does not compress; a flat image does


@pytest.mark.parametrize(
    ("a", "b", "d"),
    [("", "", 0), ("abc", "", 3), ("", "ab", 2), ("kitten", "sitting", 3), ("flaw", "lawn", 2), ("abc", "abc", 0),
     ("hello", "yellow", 2)],
)  # fmt: skip
def test_levenshtein_hand_values(a: str, b: str, d: int) -> None:
    assert levenshtein(a, b) == d
    assert levenshtein(b, a) == d


def test_ocr_accuracy_formula() -> None:
    # target "hello" (5 chars); read "yellow": distance 2 -> 1 - 2/5
    assert ocr_accuracy("yellow", "hello") == pytest.approx(0.6)
    # spaces and case are ignored: "Hel Lo" == "hello"
    assert ocr_accuracy("Hel Lo", "hello") == 1.0
    # distance is capped at len(target): reading 20 wrong chars for a 3-char target gives 0, not negative
    assert ocr_accuracy("x" * 20, "abc") == 0.0
    # nothing read: distance = len -> 0
    assert ocr_accuracy("", "42") == 0.0
    # "sign 7" vs "sign 1": one substitution out of 5 characters after removing the space
    assert ocr_accuracy("sign 1", "Sign 7") == pytest.approx(0.8)


def test_target_text_from_quotes_or_metadata() -> None:
    assert target_text('a sign that says "Open 24h" on a wall', {}) == "Open 24h"
    assert target_text('the number "7"', {"text": "42"}) == "42"
    assert target_text("no quotes here", {}) == "no quotes here"


def test_ocr_reward_with_pluggable_engine() -> None:
    read = iter(["hel lo", "yellow", ""])
    calls: list[int] = []

    def engine(images: list[Image.Image]) -> list[str]:
        calls.append(len(images))
        assert all(isinstance(im, Image.Image) and im.size == (16, 8) for im in images)
        return [next(read) for _ in images]

    reward = build_reward("ocr", engine=engine)
    prompts = ['a card reading "Hello"', 'a card reading "hello"', 'a card reading "hi"']
    out = reward(torch.rand(3, 3, 8, 16), prompts)
    torch.testing.assert_close(out["ocr"], torch.tensor([1.0, 0.6, 0.0]))
    assert calls == [3]


def test_ocr_engine_by_import_path(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("fake_ocr_engine")
    module.read = lambda images: ["7" for _ in images]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_ocr_engine", module)
    reward = build_reward("ocr", engine="fake_ocr_engine:read")
    out = reward(torch.rand(2, 3, 8, 8), ["x", "y"], [{"text": "7"}, {"text": "17"}])
    torch.testing.assert_close(out["ocr"], torch.tensor([1.0, 0.5]))


def test_ocr_missing_engine_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("paddleocr", "pytesseract", "rapidocr_onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    with pytest.raises(UserError, match="no OCR engine is installed"):
        build_reward("ocr")
    with pytest.raises(UserError, match="'tesseract' is not installed.*pytesseract"):
        build_reward("ocr", engine="tesseract")
    with pytest.raises(UserError, match="unknown OCR engine 'easy'"):
        build_reward("ocr", engine="easy")


def test_ocr_engine_returning_wrong_count_raises() -> None:
    reward = build_reward("ocr", engine=lambda images: ["1"])
    with pytest.raises(RewardError, match="returned 1 texts for 2 images"):
        reward(torch.rand(2, 3, 8, 8), ["1", "2"])


def test_contract_rejects_nan_and_unknown_names() -> None:
    class Bad(Reward):
        name = "bad"

        def score(self, images, prompts, metadata):  # type: ignore[no-untyped-def]
            return {"bad": torch.tensor([1.0, float("nan")])}

    with pytest.raises(RewardError, match="reward 'bad' score 'bad' is NaN/inf at batch positions \\[1\\]"):
        Bad()(torch.rand(2, 3, 4, 4), ["a", "b"])
    with pytest.raises(UserError, match="did you mean 'pickscore'"):
        build_reward("pickscor")
