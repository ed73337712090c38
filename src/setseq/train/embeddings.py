"""Concept-token embedding optimisation (textual inversion), optional beside the LoRA, and a baseline alone.

The paper optionally optimises the concept tokens' embeddings at lr 1e-5 (it also works without). Here the
text encoder stays frozen; a trainable offset per concept token is added to the token's input embedding by a
forward hook on the encoder's embedding table, so only those rows change. Stage 1 learns the appearance token
[v], stage 2 the motion token [u]; the `textual_inversion` method learns both in its one stage, with no LoRA.

Saved next to the LoRA as one file per token, `embedding_<token>.safetensors` = `{token: embedding (D,)}`, the
layout diffusers' `load_textual_inversion` reads for a single token.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from setseq.backbones.base import Backbone
from setseq.errors import SetseqError
from setseq.io import atomic_path

DELTA_KEY = "text_embedding.delta"


def _embedding_module(backbone: Backbone) -> torch.nn.Embedding:
    table = backbone.text_embeddings()
    if table is None:
        raise SetseqError(
            f"the {backbone.info.name} backbone exposes no text encoder embedding table to optimise",
            "set concept.train_embedding=false (and do not use method=textual_inversion) with this backbone",
        )
    return table


def token_id(backbone: Backbone, token: str) -> int:
    """The one vocabulary id of a concept token; a token the tokenizer splits into pieces is refused."""
    _embedding_module(backbone)  # a backbone with no tokenizer and table to train through: refused first
    ids = backbone.tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise SetseqError(
            f"the concept token '{token}' is {len(ids)} tokens for this text encoder's tokenizer",
            "choose an identifier that is a single token of the tokenizer (e.g. sks), or set concept.train_embedding=false",
        )
    unk = backbone.tokenizer.unk_token_id  # (a transformers tokenizer: None when it has no unknown token)
    if unk is not None and ids[0] == unk:
        raise SetseqError(
            f"the concept token '{token}' is unknown to this tokenizer", "choose a token of its vocabulary"
        )
    return int(ids[0])


class TokenEmbeddings:
    """Trainable offsets of the concept tokens' input embeddings, added by a forward hook."""

    def __init__(self, backbone: Backbone, tokens: list[str], lr: float) -> None:
        self.module = _embedding_module(backbone)
        self.tokens = list(tokens)
        self.ids = [token_id(backbone, t) for t in tokens]
        dim = self.module.weight.shape[1]
        self.delta = torch.nn.Parameter(torch.zeros(len(tokens), dim, device=self.module.weight.device))
        self.lr = lr
        self.stage_rows: dict[int, list[int]] = {1: list(range(len(tokens))), 2: list(range(len(tokens)))}
        self._rows = torch.ones(len(tokens), 1, device=self.delta.device)
        self.delta.register_hook(lambda g: g * self._rows)  # only the rows of the current stage learn
        # The hook goes on every embedding module that shares the table's weight: some encoders (UMT5) look
        # tokens up through their stack's own module, tied to `get_input_embeddings()`.
        table = self.module.weight
        shared = [
            m
            for m in backbone.text_encoder.modules()
            if isinstance(m, torch.nn.Embedding) and m.weight.data_ptr() == table.data_ptr()
        ]
        self._handles = [m.register_forward_hook(self._add) for m in shared or [self.module]]

    def _add(self, module, inputs, output):
        ids = inputs[0]
        add = torch.zeros_like(output)
        for k, tid in enumerate(self.ids):
            add = add + (ids == tid).unsqueeze(-1).to(output.dtype) * self.delta[k].to(output.dtype)
        return output + add

    def train_rows(self, rows: list[int]) -> None:
        """Which tokens (indices into `tokens`) receive gradients from now on."""
        self._rows = torch.zeros_like(self._rows)
        self._rows[rows] = 1.0

    def embeddings(self) -> dict[str, torch.Tensor]:
        """{token: the learned input embedding (D,)}: the table's row plus the offset."""
        with torch.no_grad():
            return {
                t: (self.module.weight[i].float() + self.delta[k].float()).cpu().contiguous()
                for k, (t, i) in enumerate(zip(self.tokens, self.ids))
            }

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def save_embeddings(run_dir: Path, emb: TokenEmbeddings) -> list[Path]:
    """One diffusers textual-inversion file per token; returns the paths."""
    paths = []
    for token, vec in emb.embeddings().items():
        path = run_dir / f"embedding_{token}.safetensors"
        with atomic_path(path) as tmp:
            save_file({token: vec}, str(tmp))
        paths.append(path)
    return paths


def load_embeddings(backbone, folder: Path) -> list[str]:
    """Write the learned embeddings found in a run folder (`embedding_*.safetensors`) into the backbone's
    embedding table; returns the tokens set."""
    files = sorted(Path(folder).glob("embedding_*.safetensors"))
    if not files:
        return []
    module = _embedding_module(backbone)
    done = []
    for f in files:
        tensors = load_file(str(f))
        if len(tensors) != 1:
            raise SetseqError(
                f"{f} should hold one token's embedding, it holds {len(tensors)}", "re-train or delete it"
            )
        token, vec = next(iter(tensors.items()))
        if tuple(vec.shape) != (module.weight.shape[1],):
            raise SetseqError(
                f"{f} holds a {tuple(vec.shape)} embedding; this text encoder's are ({module.weight.shape[1]},)",
                "use embeddings trained on this model",
            )
        with torch.no_grad():
            module.weight[token_id(backbone, token)] = vec.to(module.weight.dtype)
        done.append(token)
    return done
