"""The paper's regularizers that act on tensors, as pure functions.

- DropConnect on the coefficient matrix ("high rank + high dropout"): `B' = B * M`, M ~ Bernoulli(1 - p),
  inverted scaling 1 / (1 - p) so the expected update is unchanged; p = 0.8 in stage 1, 0.5 in stage 2.
- Token masking ("context-aware"): each real prompt token is dropped with probability p = 0.1. On cached
  text embeddings a dropped token's hidden state is zeroed, which is how Wan-style pipelines pad, so the
  DiT's cross-attention sees it as padding.
"""

from __future__ import annotations

import torch

from setseq.prompts import PromptEmbeds


def dropconnect_mask(
    shape: torch.Size | tuple[int, ...],
    p: float,
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    scaled: bool = True,
) -> torch.Tensor:
    """A DropConnect mask: entries are 0 with probability p, else 1 / (1 - p) (inverted scaling), or 1 when
    `scaled` is False (the caller folds 1 / (1 - p) into a scalar)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"drop probability must be in [0, 1), got {p}")
    # Drawn on CPU: the same mask on any device for a seed.
    keep = torch.empty(shape, dtype=torch.float32).bernoulli_(1.0 - p, generator=generator)
    keep = keep.to(device=device, dtype=dtype)
    return keep / (1.0 - p) if scaled else keep


def token_mask(prompt: PromptEmbeds, p: float, generator: torch.Generator | None = None) -> PromptEmbeds:
    """Drop each real token of each prompt with probability p (zero its hidden state, clear its mask)."""
    if p <= 0.0:
        return prompt
    drop = (torch.rand(prompt.mask.shape, generator=generator) < p).to(prompt.mask.device) & prompt.mask
    keep = ~drop
    # A pooled embedding (HunyuanVideo's CLIP) summarises the whole prompt and is kept as it is.
    return PromptEmbeds(
        prompt.embeds * keep.unsqueeze(-1).to(prompt.embeds.dtype), prompt.mask & keep, prompt.pooled
    )
