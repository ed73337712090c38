"""Names that both the command line and the config check against, in a module that imports nothing, so that
`setseq --help` can name them without loading `setseq.config` (dataclasses, YAML)."""

from __future__ import annotations

# `method`: setseq or a baseline of the paper, each a change of the config (`setseq.train.methods`).
METHODS: dict[str, str] = {
    "setseq": "Set-and-Sequence: identity on the frames, then a motion residual on the clip",
    "dreambooth": "DreamBooth-LoRA: one LoRA trained on the video in one stage",
    "lora1": "DreamBooth-LoRA with rank 1 (the paper's LoRA-1)",
    "two_stage": "the two stages without regularization",
    "dreammix": "DreamMix-style: one stage, alternating single frames and the clip",
    "textual_inversion": "textual inversion: only the concept tokens' embeddings, on the video",
}

# The built-in backbone families: registry name -> the module that defines its `FAMILY`, one line a family
# (`setseq.backbones.registry.BUILTIN`). Kept here, where nothing is imported, so that `setseq --help` names the
# families without importing torch; the family files themselves are imported when first asked for.
FAMILIES: dict[str, str] = {
    "wan": "setseq.backbones.wan",
    "cogvideox": "setseq.backbones.cogvideox",
    "ltx": "setseq.backbones.ltx",
    "hunyuan": "setseq.backbones.hunyuan",
    "ltx2": "setseq.backbones.ltx2",
    "hunyuan15": "setseq.backbones.hunyuan15",
    "skyreels-v2": "setseq.backbones.skyreels_v2",
    "sana-video": "setseq.backbones.sana_video",
    "kandinsky5": "setseq.backbones.kandinsky5",
    "minimax-h3": "setseq.backbones.minimax_h3",
    "toy": "setseq.backbones.toy",
}
