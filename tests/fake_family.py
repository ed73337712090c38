"""A minimal model family in one file, as a new family is added (issue #32): its backbone (the hooks that
differ from `DiffusersBackbone`'s), its ComfyUI names, its tiny model, and its `FAMILY` record. It joins with
one registry line (`setseq.backbones.registry.BUILTIN`) or, as here, `registry.register(FAMILY)` at test time.

"fake" runs a Wan 2.1 checkpoint (`WanPipeline`) under another name, with a LoRA on the self-attention's
query and value only."""

from __future__ import annotations

from typing import Any

import torch

from setseq.backbones.base import Family, TinyModel
from setseq.backbones.diffusers_backbone import DiffusersBackbone
from setseq.backbones.wan import build_tiny_wan
from setseq.prompts import PromptEmbeds


class FakeBackbone(DiffusersBackbone):
    name, label, pipeline_class = "fake", "Fake", "WanPipeline"
    default_steps, default_guidance = 4, 5.0
    text_length = 64  # the tiny tokenizer's length

    def setup(self, model_id: str) -> dict[str, Any]:
        vcfg = self.vae.config
        self.latents_mean = torch.tensor(vcfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.latents_std = torch.tensor(vcfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.sigma_shift = 3.0
        return dict(
            height=32,
            width=32,
            frames=9,
            frame_multiple=4,
            spatial_multiple=16,
            lora_targets=(r"^blocks\.\d+\.attn1\.to_(q|v)$",),
        )

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        ids, mask = self.tokenize(prompts)
        hidden = self.text_encoder(ids, mask).last_hidden_state.float()  # (B, L, D)
        return PromptEmbeds(hidden * mask.unsqueeze(-1), mask.bool())

    def forward(self, noisy: torch.Tensor, sigmas: torch.Tensor, prompt: PromptEmbeds) -> torch.Tensor:
        out = self.transformer(
            hidden_states=noisy.to(self.dtype),
            timestep=sigmas.to(self.device).float() * 1000.0,
            encoder_hidden_states=prompt.embeds.to(self.dtype),
            return_dict=False,
        )[0]
        return out.float()  # (B, C, f, h, w)


def comfyui_slot(module: str) -> tuple[str, int]:
    """The fake family's ComfyUI names: its diffusers names under `fake.`."""
    return f"fake.{module}", 0


FAMILY = Family(
    "fake",
    FakeBackbone.load,
    comfyui=comfyui_slot,
    tiny=(TinyModel("fake", build_tiny_wan, "WanPipeline", 9, (32, 32), 2 * 2),),
    backbone=FakeBackbone,
)
