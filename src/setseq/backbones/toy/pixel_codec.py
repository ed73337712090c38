"""The toy model's first codec (shipped until 2026-11-24), kept for the pixel-codec models it trained and for
the tests' tiny models: lossless and fixed, no weights.

Each frame is cut into c x c pixel cells (space-to-depth): a clip (B, F, 3, H, W) becomes latents
(B, 3*c*c, F, H/c, W/c), normalised per colour channel with `pixel_mean` / `pixel_std` of toy_config.json;
`decode` is the exact inverse. Its 192 numbers per DiT token (c = 4) made the 128-wide DiT render sprites as
8x8 blocks (BENCHMARKS.md), which is why the shipped models use the VAE codec.
"""

from __future__ import annotations

from typing import Any

import torch

from setseq.errors import SetseqError


class PixelCodec:
    """Space-to-depth with per-colour normalisation; frames are encoded alone (no temporal mixing)."""

    temporal = 1  # latent frames per pixel frame: one each

    def __init__(self, config: dict[str, Any], device: torch.device, dtype: torch.dtype) -> None:
        self.cell = int(config["cell"])
        self.channels = 3 * self.cell * self.cell
        self.device, self.dtype = device, dtype
        # (1, 3, 1, 1, 1): broadcast over (B, 3, F, H, W)
        self.mean = torch.tensor(config["pixel_mean"], dtype=torch.float32).view(1, 3, 1, 1, 1)
        self.std = torch.tensor(config["pixel_std"], dtype=torch.float32).view(1, 3, 1, 1, 1)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, F, 3, H, W) in [-1, 1] -> normalised latents (B, 3*c*c, F, H/c, W/c)."""
        b, f, _, h, w = video.shape
        c = self.cell
        x = video.to(torch.float32).permute(0, 2, 1, 3, 4)  # (B, 3, F, H, W)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        x = x.reshape(b, 3, f, h // c, c, w // c, c).permute(0, 1, 4, 6, 2, 3, 5)  # (B, 3, c, c, F, h, w)
        return x.reshape(b, 3 * c * c, f, h // c, w // c).to(self.device, self.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, 3*c*c, F, h, w) -> video (B, F, 3, h*c, w*c): the exact inverse of `encode`, not clamped."""
        b, ch, f, h, w = latents.shape
        c = self.cell
        if ch != 3 * c * c:
            raise SetseqError(f"expected {3 * c * c} latent channels, got {ch}")
        x = (
            latents.to(torch.float32).reshape(b, 3, c, c, f, h, w).permute(0, 1, 4, 5, 2, 6, 3)
        )  # (B,3,F,h,c,w,c)
        x = x.reshape(b, 3, f, h * c, w * c)
        x = x * self.std.to(x.device) + self.mean.to(x.device)
        return x.permute(0, 2, 1, 3, 4).contiguous()  # (B, F, 3, H, W)
