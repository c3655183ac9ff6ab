"""Flow-GRPO (Liu et al., 2025, "Flow-GRPO: Training Flow Matching Models via Online RL", arXiv:2505.05470) and the
GRPO family built on it, as options of one algorithm.

Rollouts: the flow model's ODE is turned into a reverse SDE (kernel ``sde``; ``cps`` is the coefficients-preserving
variant, ``dance`` DanceGRPO's), so that each step is a Gaussian with mean mu_theta(x_t) and std s_t
(Flow-SDE: s_t = sigma_t sqrt(-dt), sigma_t = a sqrt(sigma / (1 - sigma))). A group of G images per prompt is scored;
the advantages are group z-scores (global std by default for SD3).

Loss, for every trained SDE step t (the same advantage A on every step of a sample):

    rho_t = exp(log p_theta(x_{t-1} | x_t) - log p_old(x_{t-1} | x_t))
    L     = mean w_t max(-A rho_t, -A clip(rho_t, 1 - eps, 1 + eps))
          + beta * mean (mu_theta - mu_ref)^2 / (2 sigma_t^2)

with eps ~ 1e-4 (1e-5 with CPS), beta = 0.04 (GenEval, OCR) / 0.01 (PickScore) / 0 (fast settings), w_t = 1; the
reference is the policy with LoRA adapters disabled (or a frozen copy under full fine-tuning).

The family, as options (the loss above is the only loss; variants change which steps are stochastic and trained,
the step weights w_t, or the ratio):

* ``sde_schedule="branch"`` — Flow-GRPO-Fast (flow_grpo's fast configs) and TempFlow-GRPO's trajectory branching
  (He et al., 2025, "TempFlow-GRPO: When Timing Matters for GRPO in Flow Models", arXiv:2508.04324): per iteration a
  branch step b is drawn from a generator seeded by (run seed, iteration), uniformly in ``branch_range`` (default:
  the first half of the steps); the ODE runs up to b, the SDE for ``sde_steps`` steps, the ODE after; only the SDE
  steps are trained. With ``share_initial_noise`` the members of a group are identical up to b and branch there.
* ``sde_schedule="sliding"`` — MixGRPO (Li et al., 2025, "MixGRPO: Unlocking Flow-based GRPO Efficiency with Mixed
  ODE-SDE", arXiv:2507.21802): SDE (and training) only in a window of w = ``sde_steps`` steps, ODE elsewhere; the
  window start moves progressively, l = ``window_stride`` * floor((iteration - 1) / ``window_every``).
  ``window_schedule="reference"`` (the default) is the authors' code (``grpo_states.get_current_timesteps``): for
  n sampling steps the window is {l .. min(l + w, n - 2) - 1}, so windows shrink at the end and steps n - 2 and
  n - 1 are never stochastic nor trained; once l passes n - 3 it rolls back to 0 (``window_end="wrap"``, their
  ``--roll_back``) or stays at the last start (``"stop"``). (Their code would next ask for the empty window at
  l = n - 2 before rolling back; that empty window is skipped here.) ``window_schedule="full"`` keeps every window
  w wide over the n - 1 noisy steps (starts 0 .. n - 1 - w, step n - 2 trained), wrapping after start n - 1 - w.
  ``ode_solver="dpm2m"`` (MixGRPO-Flash) samples the ODE part with the second-order DPM-Solver++(2M) instead of
  Euler.
* DanceGRPO (Xue et al., 2025, "DanceGRPO: Unleashing GRPO on Visual Generation", arXiv:2505.07818): kernel
  ``dance``, ``share_initial_noise``, and a random fraction of the steps (``sampling.timestep_fraction``).
* ``step_weighting="noise_aware"`` — TempFlow-GRPO's noise-aware weighting: w_t proportional to the step's std s_t
  (more weight where the step explores more); ``"inverse_dt"`` — GRPO-Guard's gradient reweighting w_t ~ 1 / |dt|.
  ``"output_normalized"`` — w_t ~ s_t / |d mean_t / d output|, every step the same log-prob change per unit of
  network output (``_policy_gradient.raw_step_weights``). All are normalised to mean 1 over the schedule's
  trainable steps (a constant that Adam absorbs anyway).
* ``ratio_norm="grpo_guard"`` — GRPO-Guard's RatioNorm (Wang et al., 2025, "GRPO-Guard: Mitigating Implicit
  Over-Optimization in Flow Matching via Regulated Clipping", arXiv:2510.22319): rho_t is replaced by
  exp((log rho_t + b_t) s_t), b_t = mean_d (mu_theta - mu_old)^2 / (2 s_t^2) (see ``_policy_gradient``).

The thin registered subclasses below only change defaults (and the paper they cite).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field, model_validator

from visalign.algorithms._policy_gradient import StepWeighting, StepWeights, clipped_pg_loss
from visalign.algorithms.base import Algorithm, RunContext, register_algorithm
from visalign.config_io import StrictModel
from visalign.seeding import sample_seed, torch_generator

if TYPE_CHECKING:
    from visalign.rollout import RolloutPlan


@register_algorithm("flow_grpo")
class FlowGRPO(Algorithm):
    approach = "policy gradient"
    paper = "Flow-GRPO: Training Flow Matching Models via Online RL (arXiv:2505.05470)"
    needs = frozenset({"likelihood"})
    families = ("flow",)
    kernels = ("sde", "cps", "dance")

    class Options(StrictModel):
        clip_range: float = 1e-4
        kl_beta: float = 0.0
        # which steps are stochastic (and trained): all (the config's windows apply), a random branch, a sliding window
        sde_schedule: Literal["all", "branch", "sliding"] = "all"
        sde_steps: int = Field(2, ge=1)  # width of the SDE window (branch / sliding)
        branch_range: list[int] | None = None  # [first, last+1] of branch steps; None: the first half of the steps
        window_every: int = Field(25, ge=1)  # sliding: iterations between moves (MixGRPO's tau)
        window_stride: int = Field(1, ge=1)  # sliding: steps per move
        window_end: Literal["wrap", "stop"] = "wrap"
        window_schedule: Literal["reference", "full"] = "reference"  # sliding: shrinking windows up to n - 2 / full
        share_initial_noise: bool = False  # every member of a group starts from the same noise
        ode_solver: Literal["euler", "dpm2m"] = "euler"  # the deterministic sampler outside the SDE window
        step_weighting: StepWeighting = "none"
        ratio_norm: Literal["none", "grpo_guard"] = "none"

        @model_validator(mode="after")
        def _check(self) -> Any:
            r = self.branch_range
            if r is not None and (len(r) != 2 or not 0 <= r[0] < r[1]):
                raise ValueError("branch_range must be [first, last+1] with 0 <= first < last+1")
            return self

    def __init__(self, options: StrictModel) -> None:
        super().__init__(options)
        # GRPO-Guard's ratio needs the rollout's step means (the trainer stores them for "means")
        self.step_weights = StepWeights(options.step_weighting)
        self._ode_kernel = None

    def bind(self, context: RunContext) -> None:
        super().bind(context)
        o = self.options
        self.step_weights.bind(context.kernel, context.schedule)
        if o.ode_solver != "euler":
            from visalign.sampling import build_kernel

            self._ode_kernel = build_kernel(o.ode_solver)

    # ---- rollout schedule ----------------------------------------------------------------------------------
    def _num_noisy_steps(self) -> int:
        """Steps that can carry noise: all but the last (sigma' = 0), which is deterministic under every kernel."""
        schedule = self.context.schedule
        return int((schedule.c_next > 0).sum())

    def sde_window(self, iteration: int) -> tuple[int, int] | None:
        """The [first, last+1] of stochastic (and trained) steps of an iteration; None: every step."""
        o = self.options
        if o.sde_schedule == "all":
            return None
        last = self._num_noisy_steps()  # window ends may not pass this
        width = min(o.sde_steps, last)
        if o.sde_schedule == "branch":
            lo, hi = o.branch_range if o.branch_range is not None else (0, max(1, len(self.context.schedule) // 2))
            hi = min(hi, last - width + 1)  # last possible branch start, +1
            lo = min(lo, hi - 1)
            g = torch_generator(sample_seed(self.context.seed, iteration, 0, 0, stream="branch"))
            start = lo + int(torch.randint(hi - lo, (1,), generator=g))
        else:
            moves = (max(iteration, 1) - 1) // o.window_every
            if o.window_schedule == "reference":
                end = max(last - 1, 1)  # n - 2 for n sampling steps: the authors' max_timesteps
                starts = range(0, end, o.window_stride)
                index = moves % len(starts) if o.window_end == "wrap" else min(moves, len(starts) - 1)
                start = starts[index]
                return start, min(start + width, end)
            positions = last - width + 1  # window starts 0 .. last - width
            start = o.window_stride * moves
            start = start % positions if o.window_end == "wrap" else min(start, positions - 1)
        return start, start + width

    def rollout_plan(self, iteration: int, plan: RolloutPlan) -> RolloutPlan:
        o = self.options
        changes: dict[str, Any] = {}
        window = self.sde_window(iteration)
        if window is not None:
            changes["sde_window"] = window
            changes["train_window"] = window
        if o.share_initial_noise:
            changes["share_initial_noise"] = True
        if self._ode_kernel is not None:
            changes["deterministic_kernel"] = self._ode_kernel
        if o.ratio_norm == "grpo_guard":  # its ratio normalisation reads the stored step means
            changes["store_mean"] = True
        return dataclasses.replace(plan, **changes)

    # ---- loss ----------------------------------------------------------------------------------------------
    def loss(self, batch, generator):
        o = self.options
        return clipped_pg_loss(batch, generator, o.clip_range, o.kl_beta, step_weights=self.step_weights(batch),
                               ratio_norm=o.ratio_norm)


# ---------------------------------------------------------------------------------------------------------------
# The family's named configurations: defaults only (the recipes in recipes/ set the sampler and rewards).


@register_algorithm("flow_grpo_fast")
class FlowGRPOFast(FlowGRPO):
    paper = "Flow-GRPO (arXiv:2505.05470), fast configuration: ODE to a random branch step, SDE for 1-2 steps"

    class Options(FlowGRPO.Options):
        clip_range: float = 1e-5
        sde_schedule: Literal["all", "branch", "sliding"] = "branch"
        sde_steps: int = Field(2, ge=1)
        share_initial_noise: bool = True


@register_algorithm("mixgrpo")
class MixGRPO(FlowGRPO):
    paper = "MixGRPO: Unlocking Flow-based GRPO Efficiency with Mixed ODE-SDE (arXiv:2507.21802)"

    class Options(FlowGRPO.Options):
        sde_schedule: Literal["all", "branch", "sliding"] = "sliding"
        sde_steps: int = Field(4, ge=1)


@register_algorithm("dancegrpo")
class DanceGRPO(FlowGRPO):
    paper = "DanceGRPO: Unleashing GRPO on Visual Generation (arXiv:2505.07818)"
    kernels = ("dance",)
    # the reference divides by the group's torch.std (Bessel-corrected) + 1e-8
    advantage_defaults = {"std": "group", "std_correction": 1, "eps": 1e-8}

    class Options(FlowGRPO.Options):
        share_initial_noise: bool = True


@register_algorithm("tempflow_grpo")
class TempFlowGRPO(FlowGRPO):
    paper = "TempFlow-GRPO: When Timing Matters for GRPO in Flow Models (arXiv:2508.04324)"

    class Options(FlowGRPO.Options):
        sde_schedule: Literal["all", "branch", "sliding"] = "branch"
        sde_steps: int = Field(1, ge=1)
        share_initial_noise: bool = True
        step_weighting: StepWeighting = "noise_aware"


@register_algorithm("grpo_guard")
class GRPOGuard(FlowGRPO):
    paper = "GRPO-Guard: Mitigating Implicit Over-Optimization in Flow Matching via Regulated Clipping (arXiv:2510.22319)"

    class Options(FlowGRPO.Options):
        ratio_norm: Literal["none", "grpo_guard"] = "grpo_guard"
        step_weighting: StepWeighting = "inverse_dt"
