"""DDPM v-prediction math as pure functions (CogVideoX's objective).

Convention (Salimans and Ho 2022; diffusers' `add_noise` / `get_velocity` with `prediction_type="v_prediction"`):
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, and the DiT predicts v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0,
where abar_t is the scheduler's `alphas_cumprod[t]` for an integer timestep t in [0, num_train_timesteps).

The plain MSE on v equals the x0-space MSE weighted by 1 / (1 - abar_t) that diffusers' CogVideoX LoRA
training example uses (x0_hat - x0 = -sqrt(1 - abar_t) (v_hat - v)).
"""

from __future__ import annotations

import torch


def _expand(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # (B,) -> (B, 1, 1, ...) to broadcast over a latent of any rank
    return a.reshape(-1, *([1] * (like.ndim - 1))).to(like.device, like.dtype)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar) x0 + sqrt(1 - abar) noise, abar (B,)."""
    return _expand(abar.sqrt(), x0) * x0 + _expand((1.0 - abar).sqrt(), x0) * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """v = sqrt(abar) noise - sqrt(1 - abar) x0, abar (B,)."""
    return _expand(abar.sqrt(), x0) * noise - _expand((1.0 - abar).sqrt(), x0) * x0


def x0_from_velocity(noisy: torch.Tensor, v: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """The clean-latent estimate implied by a v prediction: x0 = sqrt(abar) x_t - sqrt(1 - abar) v."""
    return _expand(abar.sqrt(), noisy) * noisy - _expand((1.0 - abar).sqrt(), noisy) * v


def sample_timesteps(
    batch: int, num_train_timesteps: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Integer training timesteps (B,), uniform over [0, num_train_timesteps), as DDPM training draws them."""
    return torch.randint(0, num_train_timesteps, (batch,), generator=generator)
