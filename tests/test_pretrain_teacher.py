"""The diffusion teacher for flow pretraining maps flow noise levels and latent normalisations correctly.

An oracle UNet that knows the clean teacher-space latent answers with the exact epsilon / v / x0 for whatever
input and timestep it is given; if the mapping flow space -> teacher space -> flow space is right, the teacher
returns the student's clean latent exactly, and the noise it was shown has the size the chosen timestep implies.
"""

from __future__ import annotations

import math

import pytest
import torch

from visalign.errors import UserError
from visalign.pretrain.build import DiffusionSpec, build_diffusion_pipeline
from visalign.pretrain.teacher import DiffusionTeacher


class OracleUNet(torch.nn.Module):
    def __init__(self, z_teacher: torch.Tensor, abar: torch.Tensor, prediction_type: str) -> None:
        super().__init__()
        self.z, self.abar, self.kind = z_teacher, abar, prediction_type
        self.seen_noise_ratio: torch.Tensor | None = None
        self.seen_t: torch.Tensor | None = None

    def forward(self, x, t, encoder_hidden_states=None, return_dict=False):
        self.seen_t = t
        ab = self.abar[t].view(-1, 1, 1, 1).to(x.dtype)
        eps = (x - ab.sqrt() * self.z) / (1 - ab).sqrt()
        # the noise actually present, relative to what timestep t stands for (1.0: the right timestep)
        self.seen_noise_ratio = eps.flatten(1).pow(2).mean(1).sqrt()
        if self.kind == "sample":
            return (self.z,)
        if self.kind == "v_prediction":
            return (ab.sqrt() * eps - (1 - ab).sqrt() * self.z,)
        return (eps,)


def _teacher_and_student(prediction_type: str):
    teacher = build_diffusion_pipeline(DiffusionSpec(prediction_type=prediction_type), seed=0)
    student = build_diffusion_pipeline(DiffusionSpec(), seed=0).vae  # same seed: the same autoencoder weights
    teacher.vae.register_to_config(scaling_factor=0.2, shift_factor=0.0)  # SD1.5 convention
    student.register_to_config(scaling_factor=0.5, shift_factor=-0.3)  # SD3 convention
    return teacher, student


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_teacher_returns_the_clean_latent_through_both_normalisations(prediction_type):
    teacher_pipe, student_vae = _teacher_and_student(prediction_type)
    torch.manual_seed(0)
    z_f = torch.randn(6, 4, 8, 8)
    z_raw = z_f / 0.5 + (-0.3)  # undo the student's normalisation by hand
    z_t = z_raw * 0.2  # the teacher's normalisation
    abar = teacher_pipe.scheduler.alphas_cumprod
    oracle = OracleUNet(z_t, abar, prediction_type)
    teacher_pipe.unet = oracle
    teacher = DiffusionTeacher(teacher_pipe, student_vae, "t")
    sigma = torch.tensor([0.02, 0.1, 0.3, 0.5, 0.8, 0.99])
    eps = torch.randn_like(z_f)
    s = sigma.view(-1, 1, 1, 1)
    x_t = (1 - s) * z_f + s * eps
    x0, valid = teacher.x0(x_t, sigma, ["a red circle"] * 6)
    # the teacher's timesteps span noise-to-signal sqrt((1 - abar) / abar) = 0.029 ... 14.6; in teacher units the
    # flow's ratio is (0.2 / 0.5) * sigma / (1 - sigma): 0.008 at sigma 0.02 (below), 39.6 at 0.99 (beyond)
    assert valid.tolist() == [False, True, True, True, True, False]
    torch.testing.assert_close(x0[1:5], z_f[1:5], rtol=1e-4, atol=1e-4)
    # the noise shown to the oracle matches its timestep to within half a step of the 1,000-step schedule (the
    # steps are coarse in log noise-to-signal near t = 0, where 1 - abar grows like t + 1)
    log_nsr = 0.5 * torch.log((1 - abar.double()) / abar.double())
    for row in range(1, 5):
        t = int(oracle.seen_t[row])
        seen = oracle.seen_noise_ratio[row] / eps[row].pow(2).mean().sqrt()
        half_step = 0.5 * max(log_nsr[min(t + 1, 999)] - log_nsr[t], log_nsr[t] - log_nsr[max(t - 1, 0)])
        assert abs(math.log(float(seen))) <= float(half_step) + 1e-4, (row, t, float(seen))


def test_teacher_maps_timesteps_by_noise_to_signal_ratio():
    teacher_pipe, student_vae = _teacher_and_student("sample")
    abar = teacher_pipe.scheduler.alphas_cumprod.double()
    oracle = OracleUNet(torch.zeros(2, 4, 8, 8), teacher_pipe.scheduler.alphas_cumprod, "sample")
    teacher_pipe.unet = oracle
    teacher = DiffusionTeacher(teacher_pipe, student_vae, "t")
    # flow sigmas whose teacher-space ratio (0.2 / 0.5) * sigma / (1 - sigma) equals timesteps 500 and 20 exactly
    a = 0.2 / 0.5
    sigmas = []
    for t in (500, 20):
        target = math.sqrt((1 - abar[t]) / abar[t])
        sigmas.append(target / (a + target))
    teacher.x0(torch.zeros(2, 4, 8, 8), torch.tensor(sigmas, dtype=torch.float64), ["", ""])
    assert oracle.seen_t.tolist() == [500, 20]


def test_teacher_with_another_autoencoder_is_refused():
    teacher_pipe = build_diffusion_pipeline(DiffusionSpec(prediction_type="sample"), seed=0)
    other = build_diffusion_pipeline(DiffusionSpec(), seed=1).vae
    with pytest.raises(UserError, match="vae.init_from=shapes-diffusion"):
        DiffusionTeacher(teacher_pipe, other, "shapes-diffusion")
