"""The shipped model cards hold what ``visalign sample`` + ``visalign eval`` measure on the shipped folders.

Each card (``final_eval.json``, the table in the folder's README) is redrawn from scratch: the whole held-out
test split, 4 images per prompt, seed 0, the card's sampler, through the same CLI a user runs. A checkpoint
replaced without its card, or a sampler / verifier change that silently moves the bases' scores, fails here.
"""

from __future__ import annotations

import json

import pytest

from visalign.cli import main
from visalign.models.loading import ASSETS_DIR


@pytest.mark.parametrize("alias", ["shapes-flow", "shapes-diffusion"])
def test_shipped_card_is_what_sample_and_eval_measure(alias, tmp_path):
    card = json.loads((ASSETS_DIR / alias / "final_eval.json").read_text())
    out = tmp_path / "samples"
    args = ["sample", "--model", alias, "--split", "test", "--seed", str(card["seed"]),
            "--images-per-prompt", str(card["images_per_prompt"]), "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert main(["eval", str(out)]) == 0
    measured = json.loads((out / "results.json").read_text())

    assert measured["n_images"] == card["n_images"] == 280
    assert measured["n_per_tag"] == card["n_per_tag"]
    # Strict verdicts are counts of images: equal fractions mean the same number of passes per tag.
    assert measured["per_tag"] == pytest.approx(card["per_tag"], abs=1e-9)
    assert measured["overall"] == pytest.approx(card["overall"], abs=1e-9)
    # The band the issue asks of a base model, read from the measurement rather than from the card's text.
    assert 0.30 <= measured["overall"] <= 0.70
    assert min(measured["per_tag"].values()) > 0
