"""CLI subcommands, one module each.

Each module defines ``NAME`` (the subcommand, e.g. ``"serve-reward"``), ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. ``visalign.cli`` lists the modules below and
imports each one only when its subcommand runs, so ``visalign --help`` stays fast.
"""

# module name -> (subcommand, one-line help). Kept here, not discovered, so a typo is an import error in tests.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "run the quickstart on the embedded ShapesWorld"),
    "world": ("world", "ShapesWorld: render ground truth, regenerate prompt files"),
    "eval": ("eval", "score a folder of images in GenEval layout with the ShapesWorld verifier"),
    "pretrain": ("pretrain", "pretrain a tiny base model on ShapesWorld"),
    "sample": ("sample", "sample images from a diffusers pipeline folder into GenEval layout"),
    "train": ("train", "RL post-training from a recipe"),
    "report": ("report", "build the HTML report of a run directory"),
    "export": ("export", "export trained weights (LoRA or merged) in diffusers format"),
    "bench": ("bench", "run a benchmark script"),
    "serve_reward": ("serve-reward", "serve a registered reward over HTTP"),
    "rewards": ("rewards", "list rewards; train the learned ShapesWorld reward model"),
    "methods": ("methods", "list every algorithm with its family, paper, recipe and status"),
    "signal": ("signal", "measure a recipe's gradient signal-to-noise ratio at its base"),
}
