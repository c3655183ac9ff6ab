"""Training data, training loop and model card of the learned ShapesWorld reward model (``visalign rewards
train-shapes-rm``).

Every training pair is an (image, prompt metadata) pair labelled by the ShapesWorld verifier
(``verify_batch``): the target is the verifier's soft score and its strict verdict on that exact pair.
The pairs come from five sources:

* ``rendered``: a ground-truth scene of the prompt (``render_scene``), so a correct pair;
* ``mismatched``: a scene of a corrupted prompt (``mismatch.corrupt``: wrong colour, count, relation,
  shape, digit, a missing object) scored against the original prompt;
* ``shuffled``: the scene of another prompt (of the same tag 70% of the time) scored against this prompt;
* ``extra``: the prompt's scene with one more random object (which fails counting prompts and passes others);
* ``generated``: images sampled from a generator (GenEval-layout folders written by ``visalign sample``, or
  sampled by the command from ``--model``), each scored against its own prompt and once against another
  prompt of the same tag.

Synthetic images are degraded at random: 40% within the limits the verifier is specified for
(``augment.random_degradation``), 20% harder (blur up to 2.5 px, noise up to 0.15, colour gains up to
+-25%, JPEG quality 20-95), which is where the verifier itself starts to fail and where blurry generated
images live. Training prompts come from the ``train`` split; held-out evaluation uses the ``test`` split
(unseen prompts and compositions) and held-out generated images.

The loss is binary cross-entropy of the soft logit against the soft score plus ``strict_weight`` times
binary cross-entropy of the strict logit against the strict verdict; AdamW with a cosine schedule.

Modules, one job each: ``pairs`` (labelled pairs, the synthetic sources), ``generated`` (generated images as
pairs), ``loop`` (the training loop), ``agreement`` (agreement with the verifier on held-out sets),
``reward_hacking`` (the pixel attack), ``card`` (the model card), ``command`` (the command), ``streams`` (the
run's random streams).
"""

from visalign.rewards.shapes_rm_train.agreement import agreement, heldout_agreement, predict, to_tensor
from visalign.rewards.shapes_rm_train.card import metrics_table, model_card
from visalign.rewards.shapes_rm_train.command import run_command
from visalign.rewards.shapes_rm_train.generated import (
    generated_pairs,
    read_generated,
    sample_generated,
    split_generated,
)
from visalign.rewards.shapes_rm_train.loop import TrainSettings, lr_at, train
from visalign.rewards.shapes_rm_train.pairs import (
    HARSH,
    SOURCES,
    SYNTHETIC_MIX,
    PairSet,
    label,
    synthetic_pairs,
)
from visalign.rewards.shapes_rm_train.reward_hacking import pixel_attack

__all__ = [
    "HARSH",
    "SOURCES",
    "SYNTHETIC_MIX",
    "PairSet",
    "TrainSettings",
    "agreement",
    "generated_pairs",
    "heldout_agreement",
    "label",
    "lr_at",
    "metrics_table",
    "model_card",
    "pixel_attack",
    "predict",
    "read_generated",
    "run_command",
    "sample_generated",
    "split_generated",
    "synthetic_pairs",
    "to_tensor",
    "train",
]
