"""Importing this module registers every built-in reward (one import line per reward module)."""

# Each reward module registers itself on import; add one line per new reward module.
# Model-based modules import transformers lazily (inside the constructors), so this stays cheap.
import visalign.rewards.aesthetic  # noqa: F401
import visalign.rewards.answers  # noqa: F401
import visalign.rewards.clipscore  # noqa: F401
import visalign.rewards.composite  # noqa: F401
import visalign.rewards.hps  # noqa: F401
import visalign.rewards.imagereward  # noqa: F401
import visalign.rewards.jpeg  # noqa: F401
import visalign.rewards.ocr  # noqa: F401
import visalign.rewards.pickscore  # noqa: F401
import visalign.rewards.remote  # noqa: F401
import visalign.rewards.shapes  # noqa: F401
import visalign.rewards.shapes_rm  # noqa: F401
import visalign.rewards.vlm_judge  # noqa: F401
