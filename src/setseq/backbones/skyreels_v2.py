"""SkyReels V2 through diffusers (`SkyReelsV2Pipeline`, `SkyReelsV2ImageToVideoPipeline`,
`SkyReelsV2Transformer3DModel`): Wan 2.1's architecture under other pipeline classes, so `WanBackbone` drives it.

- The DiT's parameters are named as Wan's, its forward takes the same inputs (the noisy latent, sigma x 1000 per
  sample, UMT5 text), and the text encoder and VAE are Wan's: the LoRA targets, the ComfyUI names (ComfyUI runs
  SkyReels V2 on its Wan model) and the training hooks are Wan's. What differs is the loader (the pipeline class
  and its `SkyReelsV2LoraLoaderMixin`) and how a folder is recognised.
- Image-to-video (`SkyReelsV2ImageToVideoPipeline`) builds its condition as Wan 2.1 I2V does: the first frame's
  latent followed by zeros, a 4-channel first-frame mask, 36 input channels, plus CLIP image tokens. It is the
  `ImageCondition` path of Wan's file.
- The diffusion-forcing checkpoints (`SkyReelsV2DiffusionForcing*Pipeline`: a timestep per latent frame, fps
  conditioning) are not supported: their folders are refused by name (`registry.guess_backbone`), and a DiT with
  `inject_sample_info` (the fps embedding they use) is refused when it loads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from setseq.backbones.base import Family, TinyModel
from setseq.backbones.wan import WanBackbone, build_tiny_wan, build_tiny_wan_i2v, comfyui_slot, wan_shape
from setseq.errors import SetseqError


class SkyReelsV2Backbone(WanBackbone):
    """SkyReels V2 (T2V, I2V): Wan's hooks, SkyReels V2's pipelines."""

    name, label, pipeline_class = "skyreels-v2", "SkyReels V2", "SkyReelsV2Pipeline"
    _i2v_class = "SkyReelsV2ImageToVideoPipeline"
    # SkyReelsV2Pipeline's own defaults: 544x960, 97 frames, guidance 6.0 (its docstring's 50 steps)
    default_steps, default_guidance = 50, 6.0

    @classmethod
    def pipeline_for(cls, model_id: str) -> type:
        """Wan's choice between the two pipelines, after refusing a diffusion-forcing DiT (its config's
        `inject_sample_info`: fps-conditioned) before anything loads."""
        config = Path(model_id) / "transformer" / "config.json"
        try:
            fps_conditioned = bool(json.loads(config.read_text()).get("inject_sample_info"))
        except (OSError, ValueError, AttributeError):  # a hub id, or unreadable: the loader reports it
            fps_conditioned = False
        if fps_conditioned:
            raise SetseqError(
                f"{model_id} is a SkyReels V2 diffusion-forcing DiT (fps-conditioned), which setseq does not train",
                "use a SkyReels V2 text-to-video or image-to-video checkpoint (SkyReelsV2Pipeline, "
                "SkyReelsV2ImageToVideoPipeline)",
            )
        return super().pipeline_for(model_id)

    def setup(self, model_id: str) -> dict[str, Any]:
        info = super().setup(model_id)
        if not self.is_tiny():
            info.update(height=544, width=960, frames=97)
        return info


def _as_skyreels(wan_folder: Path, folder: Path, i2v: bool) -> Path:
    """A tiny Wan folder rewritten as a SkyReels V2 one: the same components and weights, the DiT as
    `SkyReelsV2Transformer3DModel` (its parameters are named as Wan's), under SkyReels V2's pipeline class."""
    # (heavy to import: loaded where used)
    import diffusers

    wan = (diffusers.WanImageToVideoPipeline if i2v else diffusers.WanPipeline).from_pretrained(
        wan_folder, use_safetensors=True
    )
    config = {k: v for k, v in wan.transformer.config.items() if not k.startswith("_")}
    dit = diffusers.SkyReelsV2Transformer3DModel.from_config(config).eval()
    dit.load_state_dict(wan.transformer.state_dict(), strict=True)
    parts = dict(wan.components, transformer=dit)
    cls = diffusers.SkyReelsV2ImageToVideoPipeline if i2v else diffusers.SkyReelsV2Pipeline
    cls(**{k: v for k, v in parts.items() if k in cls._get_signature_keys(cls)[0]}).save_pretrained(
        folder, safe_serialization=True
    )
    shutil.rmtree(wan_folder)
    return folder


def build_tiny_skyreels_v2(folder: str | Path, seed: int = 0, *, layers: int = 2) -> Path:
    """Write a tiny random SkyReels V2 T2V pipeline (`SkyReelsV2Pipeline`): the tiny Wan parts."""
    folder = Path(folder)
    return _as_skyreels(
        build_tiny_wan(folder.with_name(folder.name + ".wan"), seed, layers=layers), folder, False
    )


def build_tiny_skyreels_v2_i2v(folder: str | Path, seed: int = 0, *, layers: int = 2) -> Path:
    """Write a tiny random SkyReels V2 I2V pipeline (`SkyReelsV2ImageToVideoPipeline`): the tiny Wan 2.1 I2V
    parts (36 input channels, a CLIP image encoder)."""
    folder = Path(folder)
    wan = build_tiny_wan_i2v(folder.with_name(folder.name + ".wan"), seed, layers=layers)
    return _as_skyreels(wan, folder, True)


FAMILY = Family(
    "skyreels-v2",
    SkyReelsV2Backbone.load,
    fps=24.0,  # SkyReelsV2Pipeline's export example
    pipelines=("SkyReelsV2Pipeline", "SkyReelsV2ImageToVideoPipeline"),
    comfyui=comfyui_slot,  # ComfyUI loads SkyReels V2 as a Wan model: Wan's original names
    shapes={
        # 540P: 544x960 at 97 frames is 25 latent frames x 34 x 60 = 51,000 tokens (--size 544x960 --frames 97)
        "skyreels-v2-1.3b": wan_shape(12, 8960, 30, "SkyReels V2 1.3B (Wan 2.1 1.3B's shape)"),
        "skyreels-v2-14b": wan_shape(40, 13824, 40, "SkyReels V2 14B (Wan 2.1 14B's shape)"),
    },
    tiny=(
        TinyModel("skyreels_v2", build_tiny_skyreels_v2, "SkyReelsV2Pipeline", 9, (32, 32), 2 * (4 + 4 + 2)),
        TinyModel(
            "skyreels_v2_i2v",
            build_tiny_skyreels_v2_i2v,
            "SkyReelsV2ImageToVideoPipeline",
            9,
            (32, 32),
            2 * (4 + 6 + 2),
        ),
    ),
    backbone=SkyReelsV2Backbone,
)
