"""Prompt embeddings as every module passes them: the text encoder's output for a batch of prompts, and
putting batches together. A leaf: it imports nothing of setseq, so any module can use the type."""

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
