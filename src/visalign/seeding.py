"""Every seed the library derives, in one place.

Two schemes, each kept bit for bit because shipped checkpoints and recorded results were made with them:

* ``seed_from_key(key)``: the first 8 bytes of SHA-256 of a text key, as a 63-bit integer. The engine's seeds
  (``sample_seed``: rollouts, prompt order, minibatch shuffles, forward-process draws) are keys of this kind, so
  they are stable across runs, processes and platforms and do not depend on how samples are batched.
* ``seed_from_ints(*parts)`` / ``numpy_rng(*parts)``: numpy's ``SeedSequence`` of a tuple of integers, as an
  integer seed or as a ``numpy.random.Generator`` (``numpy_rng(s)`` is ``np.random.default_rng(s)``): the scheme of
  the ShapesWorld data (prompt splits, scenes, reward-model pairs), the pretraining stages and ``visalign sample``.

``torch_generator(seed)`` is a CPU ``torch.Generator`` seeded with it (draws on the CPU are identical on every
device, which is what makes a GPU run repeat a CPU one).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

_MASK_63 = (1 << 63) - 1


def seed_from_key(key: str) -> int:
    """A 63-bit seed from a text key (SHA-256)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") & _MASK_63


def sample_seed(run_seed: int, iteration: int, rank: int, index: int, stream: str = "rollout") -> int:
    """The seed of sample ``index`` of ``iteration`` in a run seeded ``run_seed``, for one named ``stream``."""
    return seed_from_key(f"{stream}:{run_seed}:{iteration}:{rank}:{index}")


def seed_from_ints(*parts: int) -> int:
    """A seed from a tuple of integers through numpy's ``SeedSequence``."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def numpy_rng(*parts: int) -> np.random.Generator:
    """A numpy generator seeded by the ``SeedSequence`` of ``parts`` (one part: the same as ``default_rng(part)``)."""
    return np.random.default_rng([int(p) for p in parts])


def torch_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``."""
    import torch  # here: the world and its verifier use this module without torch

    return torch.Generator().manual_seed(int(seed))


def torch_generators(seeds: Iterable[int]) -> list[torch.Generator]:
    """One seeded CPU generator per seed (each sample draws from its own)."""
    return [torch_generator(int(s)) for s in seeds]
