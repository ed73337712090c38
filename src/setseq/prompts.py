"""Conditioning as every module passes it: the text encoder's output for a batch of prompts, an
image-to-video DiT's first-frame condition, and putting batches together. A leaf: it imports nothing of
setseq, so any module can use the types."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PromptEmbeds:
    """Text-encoder output for a batch of prompts.

    embeds: (B, L, D) hidden states, padded the way the backbone's pipeline pads them (Wan zeroes them beyond
            each prompt's length; CogVideoX, LTX and HunyuanVideo keep the encoder's output at pad positions).
    mask:   (B, L) bool, True on real tokens (token masking only drops real tokens).
    pooled: (B, P) a second, pooled text embedding where the family has one (HunyuanVideo's CLIP), else None.
    """

    embeds: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor | None = None

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> PromptEmbeds:
        pooled = self.pooled
        if pooled is not None:
            pooled = pooled.to(device=device, dtype=dtype or pooled.dtype)
        return PromptEmbeds(
            self.embeds.to(device=device, dtype=dtype or self.embeds.dtype), self.mask.to(device), pooled
        )

    def expand(self, n: int) -> PromptEmbeds:
        """One prompt (batch 1) repeated as a batch of n (a view, no copy)."""
        pooled = None if self.pooled is None else self.pooled.expand(n, -1)
        return PromptEmbeds(self.embeds.expand(n, -1, -1), self.mask.expand(n, -1), pooled)


def cat_prompts(a: PromptEmbeds, b: PromptEmbeds) -> PromptEmbeds:
    """Two prompt batches as one (same padded length)."""
    pooled = None if a.pooled is None or b.pooled is None else torch.cat([a.pooled, b.pooled])
    return PromptEmbeds(
        torch.cat([a.embeds, b.embeds.to(a.embeds.dtype)]), torch.cat([a.mask, b.mask]), pooled
    )


def stack_prompts(prompts: list[PromptEmbeds]) -> PromptEmbeds:
    """Several prompt batches as one (same padded length); one batch-1 prompt repeated is an expanded
    view, not a copy (the single-concept hot path)."""
    if all(p is prompts[0] for p in prompts) and prompts[0].embeds.shape[0] == 1:
        return prompts[0].expand(len(prompts))
    out = prompts[0]
    for p in prompts[1:]:
        out = cat_prompts(out, p)
    return out


@dataclass
class ImageCondition:
    """An image-to-video DiT's first-frame condition for a batch of clips (Wan I2V, `setseq.backbones.wan`).

    latent: (B, Cc, f, h, w) extra input channels the DiT reads beside the noisy latents (Wan: a 4-channel
            first-frame mask, then the latent of the first frame followed by zero frames).
    tokens: (B, N, D) image-encoder tokens for the DiT's cross-attention (Wan 2.1's CLIP), or None.
    """

    latent: torch.Tensor
    tokens: torch.Tensor | None = None

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> ImageCondition:
        tokens = None if self.tokens is None else self.tokens.to(device, dtype or self.tokens.dtype)
        return ImageCondition(self.latent.to(device, dtype or self.latent.dtype), tokens)


def stack_images(images: list[ImageCondition]) -> ImageCondition:
    """Several conditions (batch 1 or more each) as one batch; one batch-1 condition repeated is an
    expanded view, not a copy."""
    if all(c is images[0] for c in images) and images[0].latent.shape[0] == 1:
        c, n = images[0], len(images)
        tokens = None if c.tokens is None else c.tokens.expand(n, -1, -1)
        return ImageCondition(c.latent.expand(n, *c.latent.shape[1:]), tokens)
    tokens = None if images[0].tokens is None else torch.cat([c.tokens for c in images])  # type: ignore[misc]
    return ImageCondition(torch.cat([c.latent for c in images]), tokens)
