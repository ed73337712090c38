"""Rectified-flow (flow-matching) math as pure functions.

Convention (Wan, SD3, Hunyuan, LTX): x_sigma = (1 - sigma) * x0 + sigma * noise, sigma in [0, 1], and the
DiT predicts the velocity v = noise - x0. The DiT's timestep input is sigma * 1000.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def unshift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """The inverse of `shift_sigmas`: u = sigma / (shift - (shift - 1) sigma)."""
    return sigmas / (shift - (shift - 1.0) * sigmas)


def _u_cdf(u: torch.Tensor, weighting: str) -> torch.Tensor:
    """P(U <= u) for the u that `sample_sigmas` draws before the shift."""
    if weighting == "uniform":
        return u.clamp(0.0, 1.0)
    if weighting == "logit_normal":  # U = sigmoid(N(0, 1)): P(U <= u) = Phi(logit u)
        return torch.special.ndtr(torch.logit(u.clamp(0.0, 1.0)))
    raise ValueError(f"unknown timestep weighting '{weighting}' (use uniform or logit_normal)")


def sigma_share(lo: float, hi: float, *, shift: float = 1.0, weighting: str = "logit_normal") -> float:
    """P(lo <= sigma <= hi) for the sigmas `sample_sigmas` draws (0 <= lo <= hi <= 1): the share of training
    samples whose noise level falls in [lo, hi]. The shift is monotone, so this is the share of u in
    [unshift(lo), unshift(hi)]."""
    edges = _u_cdf(unshift_sigmas(torch.tensor([lo, hi], dtype=torch.float64), shift), weighting)
    return float(edges[1] - edges[0])


def sample_sigmas(
    batch: int,
    *,
    shift: float = 1.0,
    weighting: str = "logit_normal",
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    eps: float = 1e-3,
    between: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Draw training noise levels (B,): `uniform` or `logit_normal` u, then the backbone's time shift.

    `between=(lo, hi)`: the same distribution conditioned on lo <= sigma <= hi, drawn by inverting its CDF
    over that range (one uniform number per sample), so that drawing the range with probability
    `sigma_share(lo, hi)` and then a sigma in it leaves the distribution of sigma unchanged."""
    if between is not None:
        lo, hi = _u_cdf(unshift_sigmas(torch.tensor(between, dtype=torch.float64), shift), weighting)
        q = lo + (hi - lo) * torch.rand(batch, generator=generator, dtype=torch.float64)  # a quantile
        u = q if weighting == "uniform" else torch.sigmoid(torch.special.ndtri(q))
        sigmas = shift_sigmas(u, shift).clamp(eps, 1.0 - eps).clamp(*between)
        return sigmas.float().to(device)
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


def background_target(
    target: torch.Tensor, base_prediction: torch.Tensor, subject: torch.Tensor
) -> torch.Tensor:
    """The regression target that leaves the background to the base model (`stageN.background_target=base`):
    the data's `target` on the subject, the frozen model's own `base_prediction` off it, blended by the
    subject's share of each position (`subject`, broadcastable, in [0, 1]). The base prediction carries no
    gradient: off the subject the LoRA is only pulled back to the base model."""
    s = subject.to(target.device, torch.float32)
    return s * target.float() + (1.0 - s) * base_prediction.detach().float()


def subject_band(subject: torch.Tensor, cells: int) -> torch.Tensor:
    """Where the data's target is kept under `stageN.background_band` (`cells` >= 0): every latent position
    within `cells` cells (Chebyshev distance, in space) of the subject in ANY frame of the clip, as 1 at every
    frame, else 0. `subject` (B, 1, f, h, w) is the subject's share of each position. Taking the union over the
    clip's frames keeps the data's "the subject is not here" along the subject's path, which the frozen
    model's target alone loses (BENCHMARKS.md, issue #29: reproduced motion 0.40 with it in stage 2)."""
    if cells < 0:
        raise ValueError(f"background_band must be >= 0 cells, got {cells}")
    path = (subject.float() > 0).float().amax(2, keepdim=True)  # (B, 1, 1, h, w): the subject's path
    k = 2 * cells + 1
    band = F.max_pool3d(path, (1, k, k), stride=1, padding=(0, cells, cells))
    return band.expand_as(subject).to(subject.dtype)


def flow_matching_loss(
    prediction: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error between the prediction and the velocity target; optional per-sample weight (B,)."""
    return regression_loss(prediction, velocity_target(x0, noise), weight)
