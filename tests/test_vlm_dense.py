"""The dense loss of the vision tokens: the patch labels are the scene's, in the order of the processor's patches,
and the loss is the mean of three cross-entropies."""

from __future__ import annotations

import math

import numpy as np
import torch

from visalign.models.vlm_build import TinyVLMSpec
from visalign.models.vlm_image import process_images
from visalign.pretrain.vlm.dense import CLASSES, COLOR_CLASSES, DenseHead, patch_targets
from visalign.worlds.shapes.render import draw_scene
from visalign.worlds.shapes.scene import Scene, SceneObject, TextItem
from visalign.worlds.shapes.vocab import BACKGROUND


def _grid(targets: torch.Tensor) -> torch.Tensor:
    """[16 tokens, 4 patches, 3] in window order back to the 8 x 8 patch grid, by hand."""
    grid = torch.zeros(8, 8, 3, dtype=torch.long)
    for token in range(16):
        wy, wx = divmod(token, 4)
        for sub in range(4):
            sy, sx = divmod(sub, 2)
            grid[2 * wy + sy, 2 * wx + sx] = targets[token, sub]
    return grid


def test_a_square_labels_the_patches_it_covers_and_marks_its_centre():
    # a red square covering pixels 16..32 x 40..56 exactly: patch rows 5-6, columns 2-3; centre (24, 48)
    scene = Scene(64, (SceneObject("square", "red", 24.0, 48.0, 8.0),))
    grid = _grid(patch_targets(scene, 8, 2))
    covered = torch.zeros(8, 8, dtype=torch.bool)
    covered[5:7, 2:4] = True
    assert (grid[..., 0][covered] == CLASSES.index("square")).all() and (grid[..., 0][~covered] == 0).all()
    assert (grid[..., 1][covered] == COLOR_CLASSES.index("red")).all() and (grid[..., 1][~covered] == 0).all()
    assert grid[..., 2].sum() == 1 and grid[6, 3, 2] == 1  # centre pixel (24, 48): column 3, row 6


def test_a_number_labels_each_glyph_with_its_digit():
    scene = Scene(64, text=TextItem("17", "blue", 32.0, 32.0, 3.0))
    labels = set(_grid(patch_targets(scene, 8, 2))[..., 0].flatten().tolist())
    assert labels == {0, CLASSES.index("digit 1"), CLASSES.index("digit 7")}


def test_labelled_patches_are_the_ones_the_processor_sees_drawn():
    """Token ``i``, patch ``j`` of the targets is the ``4i + j``-th patch of the processor's ``pixel_values``:
    the labelled ones differ from the grey background, the others are plain grey."""
    scene = Scene(64, (SceneObject("square", "white", 12.0, 12.0, 8.0), SceneObject("circle", "black", 44.0, 40.0,
                                                                                      10.0)))
    spec = TinyVLMSpec()
    image = draw_scene(scene)
    pixels, grid = process_images([image], spec.image_settings())  # [64 patches, 3 * 2 * 8 * 8]
    grey = process_images([np.full_like(image, BACKGROUND)], spec.image_settings())[0][0]
    assert grid.tolist() == [[1, 8, 8]]
    drawn = (pixels - grey).abs().amax(-1) > 0.5
    labelled = patch_targets(scene, spec.patch_size, spec.merge_size)[..., 0].reshape(-1) > 0
    assert labelled.sum() >= 8 and drawn[labelled].all()
    assert (drawn & labelled).sum() >= 0.5 * drawn.sum()  # drawn but unlabelled: edges under MIN_COVER only


def test_the_loss_of_a_zero_head_is_the_mean_log_of_the_class_counts():
    head = DenseHead(hidden_size=8, merge=2)
    torch.nn.init.zeros_(head.proj.weight)
    torch.nn.init.zeros_(head.proj.bias)
    targets = torch.zeros(3, 4, 3, dtype=torch.long)
    expected = (math.log(len(CLASSES)) + math.log(len(COLOR_CLASSES)) + math.log(2)) / 3
    assert math.isclose(head.loss(torch.randn(3, 8), targets).item(), expected, rel_tol=1e-6)
