"""Rectified-flow (flow-matching) math as pure functions.

Convention (Wan, SD3, Hunyuan, LTX): x_sigma = (1 - sigma) * x0 + sigma * noise, sigma in [0, 1], and the
DiT predicts the velocity v = noise - x0. The DiT's timestep input is sigma * 1000.
"""

from __future__ import annotations

import torch


def _expand(sigmas: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # (B,) -> (B, 1, 1, ...) to broadcast over a latent of any rank
    return sigmas.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def interpolate(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """The interpolant x_sigma = (1 - sigma) x0 + sigma noise."""
    s = _expand(sigmas, x0)
    return (1.0 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The regression target v = noise - x0."""
    return noise - x0


def x0_from_velocity(noisy: torch.Tensor, velocity: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Clean-latent estimate implied by a velocity prediction: x0 = x_sigma - sigma v."""
    return noisy - _expand(sigmas, noisy) * velocity


def shift_sigmas(u: torch.Tensor, shift: float) -> torch.Tensor:
    """The time shift used by Wan/SD3 schedulers: sigma = shift u / (1 + (shift - 1) u)."""
    return shift * u / (1.0 + (shift - 1.0) * u)


def sample_sigmas(
    batch: int,
    *,
    shift: float = 1.0,
    weighting: str = "logit_normal",
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    eps: float = 1e-3,
) -> torch.Tensor:
    """Draw training noise levels (B,): `uniform` or `logit_normal` u, then the backbone's time shift."""
    if weighting == "uniform":
        u = torch.rand(batch, generator=generator)
    elif weighting == "logit_normal":
        u = torch.sigmoid(torch.randn(batch, generator=generator))
    else:
        raise ValueError(f"unknown timestep weighting '{weighting}' (use uniform or logit_normal)")
    return shift_sigmas(u, shift).clamp(eps, 1.0 - eps).to(device)


def regression_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    element_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error between a prediction and its target, per sample then over the batch; optional
    per-sample weight (B,). `element_weight` (broadcastable to the prediction, e.g. (B, 1, f, h, w)) makes
    each sample's error a weighted mean, sum(m * err) / sum(m) (the subject-weighted loss).
    `flow_matching_loss` is this with the velocity target."""
    err = (prediction.float() - target.float()) ** 2
    if element_weight is None:
        per_sample = err.flatten(1).mean(1)
    else:
        m = element_weight.to(err.device, err.dtype).expand_as(err)
        per_sample = (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1e-12)
    if weight is not None:
        per_sample = per_sample * weight
    return per_sample.mean()


def flow_matching_loss(
    prediction: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error between the prediction and the velocity target; optional per-sample weight (B,)."""
    return regression_loss(prediction, velocity_target(x0, noise), weight)
