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

# ---- LEAD: wire these two to the backbone registry once it exposes its families (branch r32core); they are
# the only place the command line names them (train/generate --backbone, --model, bench --shape).
FAMILY_NAMES: tuple[str, ...] = (
    "toy",
    "wan",
    "cogvideox",
    "ltx",
    "hunyuan",
    "hunyuan15",
    "ltx2",
    "minimax-h3",
)
SHAPE_NAMES: tuple[str, ...] = (
    "wan-1.3b",
    "wan-14b",
    "cogvideox-5b",
    "ltx",
    "hunyuan",
    "hunyuan-1.5",
    "ltx-2",
    "minimax-h3",
)
# ----
