"""The shipped toy models' codec: a tiny diffusers `AutoencoderKLWan` trained by `scripts/train_toy_vae.py`.

4x spatial compression, 8 channels, frame-wise (`scale_factor_temporal` 1: every frame encoded alone, as
stage 1 sees it) or, for the first clip VAE, 2x temporal. A clip (B, 9, 3, 32, 32) in [-1, 1] becomes latents
(B, 8, 9, 8, 8) (frame-wise) or (B, 8, 5, 8, 8) (temporal), normalised with the VAE config's `latents_mean` /
`latents_std`. It is causal in time, so a 1-frame video is a 1-frame latent, which is what stage 1 needs.
"""

from __future__ import annotations

from typing import Any

import torch

from setseq.errors import SetseqError


class VaeCodec:
    """Encode with the posterior mean and normalise; decode with the VAE's decoder (in [-1, 1])."""

    def __init__(
        self, vae: torch.nn.Module, config: dict[str, Any], device: torch.device, dtype: torch.dtype
    ) -> None:
        self.vae = vae.eval().requires_grad_(False)  # already on `device` in `dtype`
        self.cell = int(config["vae"]["scale_factor_spatial"])
        # latent frames per pixel frame group: a temporal VAE halves time after the first frame
        self.temporal = int(config["vae"]["scale_factor_temporal"])
        self.channels = int(config["vae"]["z_dim"])
        self.device, self.dtype = device, dtype
        vcfg = self.vae.config
        # (1, C, 1, 1, 1): broadcast over (B, C, F, h, w)
        self.mean = torch.tensor(vcfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(vcfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, F, 3, H, W) in [-1, 1] -> normalised latents (B, C, F', H/c, W/c): the posterior mean."""
        b, f = video.shape[:2]
        if self.temporal == 1:  # frame-wise VAE: every frame alone, as a 1-frame video
            x = video.reshape(b * f, 1, *video.shape[2:])
        elif (f - 1) % 4:
            raise SetseqError(f"the toy VAE encodes 4k+1 frames, got {f}")
        else:
            x = video
        x = x.to(self.device, self.dtype).permute(0, 2, 1, 3, 4)  # (B', 3, F', H, W)
        mu = self.vae.encode(x).latent_dist.mode().float()
        lat = (mu - self.mean.to(mu.device)) / self.std.to(mu.device)
        if self.temporal == 1:
            lat = lat.reshape(b, f, *lat.shape[1:]).squeeze(3).permute(0, 2, 1, 3, 4)
        return lat.contiguous().to(self.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, F', h, w) -> video (B, F, 3, h*c, w*c) in [-1, 1]."""
        b, ch, f, h, w = latents.shape
        c = self.cell
        if ch != self.channels:
            raise SetseqError(f"expected {self.channels} latent channels, got {ch}")
        z = latents.float() * self.std.to(latents.device) + self.mean.to(latents.device)
        if self.temporal == 1:  # frame-wise: (B*F, C, 1, h, w)
            z = z.permute(0, 2, 1, 3, 4).reshape(b * f, ch, 1, h, w)
        out = self.vae.decode(z.to(self.device, self.dtype)).sample.float()  # (B', 3, F', H, W)
        if self.temporal == 1:
            out = out.reshape(b, f, 3, h * c, w * c)
            return out.contiguous()
        return out.permute(0, 2, 1, 3, 4).contiguous()
