"""The paper's regularizers that act on tensors, as pure functions.

- DropConnect on the coefficient matrix ("high rank + high dropout"): `B' = B * M`, M ~ Bernoulli(1 - p),
  inverted scaling 1 / (1 - p) so the expected update is unchanged; p = 0.8 in stage 1, 0.5 in stage 2.
- Token masking ("context-aware"): each real prompt token is dropped with probability p = 0.1. On cached
  text embeddings a dropped token's hidden state is zeroed, which is how Wan-style pipelines pad, so the
  DiT's cross-attention sees it as padding.
- Break-A-Scene's attention loss (not the paper's; `stageN.attention_loss`): the concept token's
  cross-attention map, scaled to a maximum of 1 in each frame, regressed onto the subject mask.
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


def concept_attention(
    query: torch.Tensor, key: torch.Tensor, heads: int, positions: list[list[int]]
) -> torch.Tensor:
    """A cross-attention layer's map of the concept token (Break-A-Scene's attention loss): query (B, N, heads
    x d) of the video tokens, key (B, L, heads x d) of the text tokens -> (B, N), each video token's attention
    softmax(q k^T / sqrt(d)) over the L text tokens, summed over `positions[b]` (the concept token's sub-tokens
    in sample b's prompt) and averaged over the heads. In float32."""
    q = query.float().unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, H, N, d)
    k = key.float().unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, H, L, d)
    probs = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)  # (B, H, N, L)
    pick = torch.zeros(k.shape[0], k.shape[2], dtype=probs.dtype, device=probs.device)  # (B, L)
    for b, pos in enumerate(positions):
        pick[b, pos] = 1.0
    return torch.einsum("bhnl,bl->bn", probs, pick) / heads


def attention_mask_loss(
    maps: torch.Tensor, subject: torch.Tensor, grid: tuple[int, int, int]
) -> torch.Tensor:
    """Break-A-Scene's attention loss: maps (B, N) over the video tokens in (f, h, w) order of `grid`, each
    latent frame's map divided by its maximum, against `subject` (B, f, h, w), the subject's share of each
    token in [0, 1]: the mean squared error over the frames where the subject is (a frame without it takes
    no part)."""
    b, f = maps.shape[0], grid[0]
    m = maps.reshape(b, f, -1)  # (B, f, h*w)
    m = m / m.amax(-1, keepdim=True).clamp_min(1e-12)
    s = subject.reshape(b, f, -1).to(m.dtype)
    present = (s.amax(-1) > 0).to(m.dtype)  # (B, f)
    err = (m - s).pow(2).mean(-1)  # (B, f)
    return (err * present).sum() / present.sum().clamp_min(1.0)
