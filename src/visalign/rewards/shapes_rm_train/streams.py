"""The random streams of a ``train-shapes-rm`` run: each is the run's ``--seed`` plus a fixed offset.

A numpy stream is ``numpy_rng(seed + OFFSET)`` (``visalign.seeding``; the same generator as
``np.random.default_rng(seed + OFFSET)``); ``--model``'s samples are seeded
``image_seed(seed + OFFSET, ...)``.
The offsets are arbitrary but fixed: the shipped ``shapes-rm`` was trained with them, and a retraining with
other offsets would draw other pairs and other minibatches.
"""

from __future__ import annotations

# The data: the synthetic training pairs, the pairing of generated images (training and held-out) with another
# prompt, the ``--holdout`` split of ``--generated``, ``--model``'s samples of the train prompts and the pixel
# attack's corrupted scenes all draw from the seed itself (each from a generator of its own).
DATA = 0
# ``--model``'s held-out samples of the test prompts.
HELDOUT_SAMPLES = 1
# The held-out synthetic pairs over the test prompts.
HELDOUT_SYNTHETIC = 1_000
# The training loop's minibatch draws (torch's global seed, which initialises the weights, is the seed
# itself).
MINIBATCHES = 17
# Scene ``k`` of ``synthetic_pairs(..., seed)`` is rendered with the scene seed ``seed * SCENE_STRIDE + k``.
SCENE_STRIDE = 1_000_003
