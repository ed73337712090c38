"""The toy model's sampler: Euler steps on the flow-matching ODE with classifier-free guidance and
self-conditioning."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from setseq.backbones.base import Backbone
from setseq.functional.flow_matching import shift_sigmas, x0_from_velocity


def seeded_noise(shape: tuple[int, ...], seeds: list[int]) -> torch.Tensor:
    """(B, *shape) fp32 standard normal noise, sample b from `torch.Generator().manual_seed(seeds[b])`, so a
    prompt gives the same video alone or in a batch."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def euler_cfg_sample(
    model: Backbone,
    prompts: list[str],
    negative_prompt: str,
    noise: torch.Tensor,
    *,
    steps: int,
    guidance_scale: float,
    shift: float,
    self_conditioning: bool,
    progress: bool = False,
) -> torch.Tensor:
    """Clean latents (B, C, F, h, w), fp32 on `model.device`, from `noise` of that shape.

    Euler steps from sigma=1 to 0 with the time shift; classifier-free guidance with cond and uncond in one
    batch (none when `guidance_scale` is 1); self-conditioning on each branch's own previous x0 estimate."""
    b = len(prompts)
    # 1. prompts: cond then uncond
    use_cfg = guidance_scale != 1.0
    embeds = model.encode_prompt(list(prompts) + ([negative_prompt] * b if use_cfg else []))
    lat = noise.to(model.device, torch.float32)  # (B, C, F, h, w); the ODE state is kept in fp32
    # 2. Euler steps
    sig = shift_sigmas(torch.linspace(1.0, 0.0, steps + 1), shift).tolist()
    x0_prev = torch.zeros_like(torch.cat([lat, lat]) if use_cfg else lat)
    it = range(steps)
    if progress:
        it = tqdm(it, desc="toy generate", leave=False)
    for i in it:
        s, s_next = sig[i], sig[i + 1]
        inp = torch.cat([lat, lat]) if use_cfg else lat
        sig_t = torch.full((inp.shape[0],), s, device=model.device)
        v = model.predict(inp, sig_t, embeds, self_cond=x0_prev if self_conditioning else None).float()
        if self_conditioning:
            x0_prev = x0_from_velocity(inp, v, sig_t)
        if use_cfg:
            v_c, v_u = v.chunk(2)
            v = v_u + guidance_scale * (v_c - v_u)
        lat = lat + (s_next - s) * v
    return lat
