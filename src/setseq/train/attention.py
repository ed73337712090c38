"""Break-A-Scene's cross-attention loss (Avrahami et al., "Break-A-Scene", SIGGRAPH Asia 2023) on a DiT:
`stageN.attention_loss` (its weight beside the denoising loss; needs a subject mask).

It regresses the concept token's cross-attention map onto the subject mask, so that the token (and the LoRA
that shapes its keys and the video tokens' queries) attends to the subject and not to the scene around it.
The math is `setseq.functional.regularizers.concept_attention` and `attention_mask_loss`; this module reads
the maps from the DiT:

- the layers are the backbone's own (`Backbone.cross_attention`): forward hooks on each layer's `norm_q` and
  `norm_k` keep the query and key of the forward that the denoising loss backpropagates through (not the
  gradient-free self-conditioning or base-model forwards), and the softmax is recomputed from them;
- the concept token's positions in each sample's prompt come from the backbone's tokenizer
  (`Backbone.token_positions`: every sub-token of a word the tokenizer splits), cached per prompt;
- the subject mask on the latent grid is averaged over each token's latent cells (the DiT's patch).

Memory: the softmax is recomputed from the query and key (which the attention keeps anyway), one layer at a
time, in the forward and again in the backward (activation checkpointing), so what stays is each layer's (n, N)
map. The transient peak is heads x N x L floats per concept sample (N video tokens, L text tokens): nothing on the
toy model (4 x 144 x 32), about 0.8 GB on Wan at 81 frames of 480x832 (12 x 32,760 x 512).

With gradient checkpointing (`train.gradient_checkpointing`: diffusers' non-reentrant checkpoint of each block)
the hooks see the forward's query and key as they are, part of the graph; the backward through them recomputes
the block as for the denoising loss (the hooks are gone by then), so the gradients are the same as without it.
Each layer's query and key then stay until the backward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.utils.checkpoint import checkpoint

from setseq.backbones.base import Backbone, CrossAttention
from setseq.config import RunConfig
from setseq.errors import SetseqError
from setseq.functional.regularizers import attention_mask_loss, concept_attention

OFF_HINT = "set stage1.attention_loss=0 and stage2.attention_loss=0"


class AttentionLoss:
    """What `denoising_loss` needs to add the attention loss: `capture()` around the forward, then `loss`."""

    def __init__(self, backbone: Backbone, site: CrossAttention, word: str) -> None:
        self.backbone, self.site, self.word = backbone, site, word
        self._positions: dict[str, list[int]] = {}

    @classmethod
    def for_run(cls, cfg: RunConfig, backbone: Backbone) -> AttentionLoss | None:
        """The run's attention loss, None when no stage has one; refused in one line where the DiT has no
        separate cross-attention or the prompts lack the concept token."""
        if not any(sc.attention_loss > 0 for sc in (cfg.stage1, cfg.stage2)):
            return None
        site = backbone.cross_attention()
        if site is None or not site.layers:
            raise SetseqError(
                f"stageN.attention_loss needs a DiT whose video tokens attend to the text in layers of their "
                f"own (Wan, SkyReels V2, the toy model); the {backbone.info.name} DiT attends to both at once",
                OFF_HINT,
            )
        loss = cls(backbone, site, cfg.concept.token)
        for text in (cfg.concept.t_static, cfg.concept.t_motion):
            loss.positions(text)  # (refused here, before training, if the token is missing)
        return loss

    def positions(self, text: str) -> list[int]:
        """The prompt's token positions of the concept token (cached)."""
        if text not in self._positions:
            found = self.backbone.token_positions(text, self.word)
            if not found:
                raise SetseqError(
                    f"the attention loss looks for the concept token {self.word!r} in the prompt {text!r} and "
                    "the tokenizer does not find it there",
                    f"put {self.word!r} in the prompt as a word, or {OFF_HINT}",
                )
            self._positions[text] = found
        return self._positions[text]

    @contextlib.contextmanager
    def capture(self) -> Iterator[dict[int, list[torch.Tensor]]]:
        """Keep each layer's (query, key) of the forward run inside (a layer a forward skips, as one of two
        experts, keeps nothing)."""
        kept: dict[int, list[torch.Tensor]] = {}
        handles = []
        for i, layer in enumerate(self.site.layers):

            def keep(_m, _inp, out, i=i) -> None:
                kept.setdefault(i, []).append(out)

            handles += [layer.norm_q.register_forward_hook(keep), layer.norm_k.register_forward_hook(keep)]
        try:
            yield kept
        finally:
            for h in handles:
                h.remove()

    def loss(
        self,
        kept: dict[int, list[torch.Tensor]],
        texts: list[str],
        subject: torch.Tensor,
        latent_shape: tuple,
    ) -> torch.Tensor:
        """The loss of the first len(texts) samples (the concept's; prior samples follow), from the kept
        queries and keys, against `subject` (n, 1, f, h, w), the subject's share of each latent position of
        latents shaped `latent_shape` (B, C, f, h, w)."""
        n = len(texts)
        positions = [self.positions(t) for t in texts]
        maps = []
        for i, qk in kept.items():
            if len(qk) != 2 or qk[0].shape[0] < n or qk[1].shape[0] < n:
                raise SetseqError(
                    "the attention loss saw a cross-attention layer run on part of the batch (two experts in "
                    "one step)",
                    f"set model.expert_routing=step, or {OFF_HINT}",
                )
            q, k = qk
            heads = int(self.site.layers[i].heads)
            # (recomputed in the backward: only the (n, N) map is kept, not the (n, heads, N, L) softmax)
            maps.append(checkpoint(concept_attention, q[:n], k[:n], heads, positions, use_reentrant=False))
        if not maps:
            raise SetseqError("the attention loss saw no cross-attention layer run in the forward", OFF_HINT)
        pt, ph, pw = self.site.patch
        f, h, w = latent_shape[2:]
        grid = (f // pt, h // ph, w // pw)
        on_grid = torch.nn.functional.avg_pool3d(subject.float(), (pt, ph, pw))[:, 0]  # (n, f', h', w')
        return attention_mask_loss(torch.stack(maps).mean(0), on_grid.to(maps[0].device), grid)
