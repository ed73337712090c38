"""Run configuration: the typed dataclasses of every section, each field's check, and its help (the comment
beside it, which `setseq train --list-keys` reads: `setseq.config_keys`).

Building one from a YAML file, flags and dotted `key=value` overrides, and the shipped recipes by name, is
`setseq.config_load`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from setseq.names import METHODS

#: How a LoRA layer is applied (see setseq.lora): the one list the config and the layer check against.
LORA_PATHS: tuple[str, ...] = ("auto", "fused", "per_token")

# The largest learning rate accepted. Far larger ones overflow float32 inside AdamW's step (lr / bias
# correction, ~3e38) with a traceback; up to here a rate that blows training up stops it with the checkpointed
# one-line message (`train.loop`).
MAX_LR = 1e30
ONE_STAGE = ("dreambooth", "lora1", "dreammix", "textual_inversion")
ON_CLIP = ("dreambooth", "lora1", "textual_inversion")  # one-stage modes that train on the clip every step


@dataclass
class ModelConfig:
    """Which base model to personalize."""

    backbone: str = "toy"  # the family's name in the backbone registry (`setseq train --help` lists them)
    path: str = "toy"  # local folder or hub id ("toy" is the shipped toy model)
    dtype: str = "float32"  # float32 | bfloat16 | float16: compute dtype of the frozen weights
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Store the frozen weights of the LoRA-targeted linears in float8_e4m3fn with a per-row scale (half of
    # bf16's bytes; the layer upcasts inside its op). For large models on small cards; under model.fsdp each
    # process holds 1/P of them, gathered in fp8.
    fp8: bool = False
    # Block swap: the linear weights of the DiT's last N blocks stay in host memory and are streamed to the
    # device layer by layer, in forward and backward (setseq.offload). For a 14B DiT on a card smaller than it.
    block_swap: int = 0
    # Under a launcher with several processes: shard the DiT with FSDP2 (`torch.distributed.fsdp.fully_shard`),
    # one unit per transformer block plus the rest; each process keeps 1/P of every weight (base and LoRA) and
    # a unit's whole weights exist only while it runs (setseq.train.distributed.parallelize). One process: no-op.
    fsdp: bool = False
    # FSDP2: free a block's gathered weights after its forward (True: least memory, gathered again in backward;
    # False: kept until backward, one gather less per block and step).
    fsdp_reshard_after_forward: bool = True
    # FSDP2: how many blocks ahead to gather in forward (and behind in backward) while one computes; 0 leaves
    # FSDP2's own default (the next block). Each one more costs one block's whole weights in memory.
    fsdp_prefetch: int = 1
    # FSDP2 MixedPrecisionPolicy: the dtype the gathered weights compute in ("auto": as stored, i.e. model.dtype
    # for the base and float32 for the LoRA, the one-process numbers) and the dtype gradients are reduced in.
    fsdp_param_dtype: str = "auto"  # auto | bfloat16 | float32
    fsdp_reduce_dtype: str = "float32"  # float32 | bfloat16
    # One process: FSDP2's CPUOffloadPolicy instead of block swap. Every base weight of the DiT stays in
    # (pinned) host memory and FSDP2 copies each block's to the device while it runs, prefetched
    # `model.fsdp_prefetch` blocks ahead (settings as under model.fsdp); the LoRA, its optimizer and the
    # activations stay on the device. For a DiT larger than the card (setseq.train.distributed.parallelize).
    fsdp_offload: bool = False
    # A DiT of several experts (Wan 2.2 A14B): "sample" sends each sample to the expert of its timestep;
    # "step" picks one expert per optimizer step for every sample on every process (with probability its
    # share of the timesteps; the timesteps then drawn in its range, so their distribution is unchanged),
    # which FSDP2 needs: every process must gather the same blocks. "auto": step under model.fsdp, else
    # sample (setseq.train.loop.step_expert).
    expert_routing: str = "auto"  # auto | sample | step

    def __post_init__(self) -> None:
        if not isinstance(self.block_swap, int) or self.block_swap < 0:
            raise ValueError(f"model.block_swap must be an integer >= 0, got {self.block_swap!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if not isinstance(self.fsdp_prefetch, int) or self.fsdp_prefetch < 0:
            raise ValueError(f"model.fsdp_prefetch must be an integer >= 0, got {self.fsdp_prefetch!r}")
        if self.fsdp_param_dtype not in ("auto", "bfloat16", "float32"):
            raise ValueError(
                f"model.fsdp_param_dtype must be auto, bfloat16 or float32, got {self.fsdp_param_dtype!r}"
            )
        if self.fsdp_reduce_dtype not in ("float32", "bfloat16"):
            raise ValueError(
                f"model.fsdp_reduce_dtype must be float32 or bfloat16, got {self.fsdp_reduce_dtype!r}"
            )
        if self.fsdp_offload and self.block_swap:
            raise ValueError(
                "model.fsdp_offload=true and model.block_swap are two ways to keep the DiT in host memory: "
                "set one of them"
            )
        if self.expert_routing not in ("auto", "sample", "step"):
            raise ValueError(
                f"model.expert_routing must be auto, sample or step, got {self.expert_routing!r}"
            )
        for name in ("backbone", "path", "device"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ValueError(f"model.{name} must be a non-empty string, got {getattr(self, name)!r}")

    @property
    def step_routing(self) -> bool:
        """Whether a model of several experts trains one expert per step (`expert_routing`, auto resolved)."""
        return self.expert_routing == "step" or (self.expert_routing == "auto" and self.fsdp)


@dataclass
class DataConfig:
    """The one input video and how it is sampled."""

    video: str | None = None  # any container PyAV reads
    frames: int | None = None  # clip length for stage 2 (4k+1 for Wan); None: the backbone's default
    fps: float | None = None  # resample to this rate; None: the source rate
    start: float = 0.0  # seconds
    end: float | None = None  # seconds; None: to the end
    size: list[int] | None = None  # [height, width]; None: the backbone's default
    # Subject mask (optional): a mask video or a folder of per-frame mask images (white = the subject), with
    # the video's frame count and size; sampled, resized and cached with the video. Used by
    # `stageN.background_weight` and `stageN.background_swap` (`setseq.data.masks`).
    mask: str | None = None
    # `mask: auto` (`setseq.data.segment`): the mask is made from a word, `mask_prompt` (default: the class
    # word), by `segmenter` (SAM 2 / 2.1 video, with the Grounding DINO `detector` for the first box, or SAM 3
    # video), local folders or hub ids; `mask_threshold`: the detection score the subject needs.
    mask_prompt: str | None = None
    segmenter: str = "facebook/sam2.1-hiera-large"
    detector: str = "IDEA-Research/grounding-dino-base"
    mask_threshold: float = 0.35
    # Experiments on imperfect masks (BENCHMARKS.md): "KIND:IOU" degrades the mask as sampled for training
    # (`setseq.data.degrade`: dilate, erode, shift, blur or drop) to that IoU with the given one.
    mask_degrade: str | None = None
    # A real mask's halo (a ring of the old background around the subject) goes into every composite. Before
    # the mask is composited and weighted: `mask_erode` shrinks it by that many pixels (of the training size),
    # `mask_feather` blends its edge over a Gaussian of that many pixels (`setseq.data.degrade.edge`).
    mask_erode: int = 0
    mask_feather: float = 0.0
    # The plain backgrounds `stageN.background_swap` composites the subject onto (colour names; a colour too
    # close to the subject's own is skipped).
    # With a drawn or image source (`swap_source`), the colours a background may show: one that shows another
    # colour of the palette (as the toy detector reads it) is not used.
    swap_backgrounds: list[str] = field(
        default_factory=lambda: ["white", "gray", "green", "yellow", "blue", "purple", "black"]
    )
    # Where the composite backgrounds come from (`setseq.data.masks.SWAP_SOURCES`): named (the plain colours of
    # swap_backgrounds), random (plain colours), gradient (two colours blended), noise (a smooth colour
    # texture), each drawn `swap_count` times, seeded; textures (the images of the folder `swap_textures`); or
    # generated (`swap_count` videos the base model draws from `swap_prompts`, cached with the concept).
    swap_source: str = "named"
    swap_count: int = 8
    swap_textures: str | None = None
    # The generated scenes' prompts (cycled); None: the class on each colour of swap_backgrounds ("a person on
    # a gray background"), the prior's videos used as backgrounds.
    swap_prompts: list[str] | None = None
    # Whether a composited sample's prompt names its background ("... on a {colour} background").
    swap_named: bool = True

    def __post_init__(self) -> None:
        # (here, not at the top: setseq.data.masks loads numpy, which `setseq train --help` must not)
        from setseq.data.masks import SWAP_COLOURS, SWAP_SOURCES

        unknown = [c for c in self.swap_backgrounds if c not in SWAP_COLOURS]
        if unknown or not self.swap_backgrounds:
            raise ValueError(
                f"data.swap_backgrounds must name some of {', '.join(SWAP_COLOURS)}, got {self.swap_backgrounds}"
            )
        if self.mask_degrade is not None:
            from setseq.data.degrade import parse_degrade  # (torch: not at --help, see above)

            parse_degrade(self.mask_degrade)
        if self.mask_erode < 0 or self.mask_feather < 0:
            raise ValueError(
                f"data.mask_erode and data.mask_feather are pixels, 0 or more, got {self.mask_erode} and "
                f"{self.mask_feather}"
            )
        if not 0.0 <= self.mask_threshold <= 1.0:
            raise ValueError(f"data.mask_threshold must be in [0, 1], got {self.mask_threshold}")
        if self.swap_source not in SWAP_SOURCES:
            raise ValueError(
                f"data.swap_source must be one of {', '.join(SWAP_SOURCES)}, got {self.swap_source!r}"
            )
        if self.swap_count < 1:
            raise ValueError(f"data.swap_count must be >= 1, got {self.swap_count}")
        if (self.swap_source == "textures") != bool(self.swap_textures):
            raise ValueError(
                "data.swap_textures (a folder of background images) goes with data.swap_source=textures, "
                f"got swap_source={self.swap_source!r}, swap_textures={self.swap_textures!r}"
            )
        if self.swap_prompts is not None and (
            self.swap_source != "generated"
            or not self.swap_prompts
            or not all(isinstance(t, str) and t.strip() for t in self.swap_prompts)
        ):
            raise ValueError(
                "data.swap_prompts (a non-empty list of scene prompts) goes with data.swap_source=generated, "
                f"got swap_source={self.swap_source!r}, swap_prompts={self.swap_prompts!r}"
            )
        if self.frames is not None and self.frames < 1:
            raise ValueError(f"data.frames must be >= 1, got {self.frames}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"data.fps must be > 0, got {self.fps}")
        if self.size is not None:
            if isinstance(self.size, int):
                self.size = [self.size, self.size]
            if len(self.size) != 2 or min(self.size) < 1:
                raise ValueError(f"data.size must be [height, width] of positive ints, got {self.size}")
            self.size = [int(s) for s in self.size]


@dataclass
class ConceptConfig:
    """The identifier tokens and the two training prompts (T_static for stage 1, T_motion for stage 2)."""

    token: str = "sks"  # appearance identifier [v]
    class_word: str = "person"  # the class noun of the prompts
    motion_token: str = "zwx"  # motion identifier [u]
    action: str = ""  # coarse action words, e.g. "dancing"
    camera: str = ""  # camera words, e.g. "static camera"
    static_prompt: str | None = None  # default: "a {token} {class_word}"
    # Optional: also optimise the tokens' input embeddings (stage 1: token, stage 2: motion_token), saved as
    # embedding_<token>.safetensors (diffusers' textual-inversion layout). The paper's lr is 1e-5.
    train_embedding: bool = False
    embedding_lr: float = 1e-5  # the token embeddings' learning rate

    def __post_init__(self) -> None:
        for name in ("token", "class_word", "motion_token"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip() or len(v.split()) != 1:
                raise ValueError(f"concept.{name} must be one word, got {v!r}")
        if self.token == self.motion_token:
            raise ValueError("concept.token and concept.motion_token must differ")
        if not (0 < self.embedding_lr <= MAX_LR):
            raise ValueError(
                f"concept.embedding_lr must be a number in (0, {MAX_LR:g}], got {self.embedding_lr}"
            )
        if self.static_prompt is not None and self.token not in self.static_prompt.split():
            raise ValueError(f"concept.static_prompt must contain the concept token '{self.token}'")

    @property
    def t_static(self) -> str:
        return self.static_prompt or f"a {self.token} {self.class_word}"

    @property
    def t_motion(self) -> str:
        """T_motion = T_static + "in [u] motion" + the action and camera words."""
        parts = [f"{self.t_static} in {self.motion_token} motion"] + [
            w for w in (self.action, self.camera) if w
        ]
        return ", ".join(parts)


@dataclass
class LoraConfig:
    """The Set-and-Sequence LoRA layer."""

    rank: int = 128  # the rank of the identity basis and of the motion residual
    alpha: float | None = None  # None: alpha = rank (scale 1)
    basis: str = "down"  # down: basis = down-projection, coefficients = up; up: the reverse
    targets: list[str] | None = None  # regexes on DiT module names; None: the backbone's default
    # How the layer is applied: fused (one matmul with W + U D), per_token (W x + U D x, as peft), or auto
    # (the one with fewer multiply-adds for each forward, lora.choose_path). Same values, gradients.
    path: str = "auto"

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        if self.path not in LORA_PATHS:
            raise ValueError(f"lora.path must be one of {', '.join(LORA_PATHS)}, got {self.path!r}")
        if self.basis not in ("down", "up"):
            raise ValueError(f"lora.basis must be 'down' or 'up', got {self.basis!r}")

    @property
    def scale_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank)


BACKGROUND_TARGETS = ("data", "base")
# The stage options that need a subject mask (`data.mask`), each at its value that turns it off.
MASK_OPTIONS_OFF: dict[str, float | str] = {
    "background_weight": 1.0,
    "background_swap": 0.0,
    "background_target": "data",
    "attention_loss": 0.0,
}


@dataclass
class StageConfig:
    """One training stage: AdamW with the paper's settings."""

    steps: int = 600  # optimizer steps of this stage
    lr: float = 1e-4  # AdamW learning rate
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])  # AdamW betas
    weight_decay: float = 0.01  # AdamW weight decay
    grad_clip: float = 0.05  # the gradient norm is clipped to this
    batch_size: int = 8  # samples per optimizer step
    micro_batch: int | None = None  # samples per forward; batch_size / micro_batch accumulation steps
    dropconnect: float = 0.8  # drop probability on this stage's trainable coefficients
    # Subject masks (`data.mask`): the loss weight of latent positions outside the subject (1.0: a plain loss;
    # the subject's weight is 1), and the probability that a sample shows the subject composited onto a plain
    # background of `data.swap_backgrounds`, its prompt ending "on a {colour} background". Both need data.mask.
    background_weight: float = 1.0
    background_swap: float = 0.0
    # The loss target off the subject (needs data.mask): data (the video's, as everywhere) or base (the frozen
    # base model's own prediction, the LoRA off, no gradient), so the LoRA learns nothing about any background.
    background_target: str = "data"
    # With background_target=base: -1, the frozen model's target wherever the subject is not in that frame;
    # k >= 0, the data's target kept on the subject's path (its positions in any frame of the clip) widened
    # by k latent cells, the frozen model's beyond it (`functional.flow_matching.subject_band`).
    background_band: int = -1
    # Break-A-Scene's cross-attention loss (Avrahami et al. 2023; needs data.mask), its weight beside the
    # denoising loss (0: off; Break-A-Scene's own is 0.01): the concept token's cross-attention map (averaged
    # over heads, the token's sub-tokens and the DiT's cross-attention layers, scaled to a maximum of 1 in each
    # frame) regressed (MSE) onto the subject mask on the token grid (`setseq.train.attention`).
    attention_loss: float = 0.0

    def __post_init__(self) -> None:
        if self.background_target not in BACKGROUND_TARGETS:
            raise ValueError(
                f"background_target must be one of {', '.join(BACKGROUND_TARGETS)}, got {self.background_target!r}"
            )
        if self.background_band < -1:
            raise ValueError(
                f"background_band must be -1 (off) or >= 0 latent cells, got {self.background_band}"
            )
        if not 0.0 <= self.background_weight <= 1.0:
            raise ValueError(f"background_weight must be in [0, 1], got {self.background_weight}")
        if not 0.0 <= self.background_swap <= 1.0:
            raise ValueError(f"background_swap must be in [0, 1], got {self.background_swap}")
        if not (self.attention_loss >= 0 and math.isfinite(self.attention_loss)):
            raise ValueError(f"attention_loss must be a number >= 0, got {self.attention_loss}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.lr > MAX_LR:
            raise ValueError(
                f"lr must be at most {MAX_LR:g}, beyond which AdamW overflows (the paper's is 1e-4), got {self.lr:g}"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.micro_batch is not None and (self.micro_batch < 1 or self.batch_size % self.micro_batch):
            raise ValueError(f"micro_batch ({self.micro_batch}) must divide batch_size ({self.batch_size})")
        if not 0.0 <= self.dropconnect < 1.0:
            raise ValueError(f"dropconnect must be in [0, 1), got {self.dropconnect}")
        if len(self.betas) != 2 or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in self.betas
        ):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not (self.grad_clip > 0 and math.isfinite(self.grad_clip)):
            raise ValueError(f"grad_clip must be a positive number, got {self.grad_clip}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay must be a number >= 0, got {self.weight_decay}")

    @property
    def accumulation(self) -> int:
        return self.batch_size // (self.micro_batch or self.batch_size)


@dataclass
class RegularizerConfig:
    """The paper's regularizers beside DropConnect (which is `stage*.dropconnect`)."""

    token_mask: float = 0.1  # probability of dropping each prompt token
    # Probability of a self-conditioning step (FIT): None = 0.9 on a backbone with a self-conditioning input,
    # off on one without; an explicit value > 0 on a backbone without one is an error.
    self_conditioning: float | None = None
    # Prior preservation: `prior_videos` videos generated by the base model from `prior_prompts` (default:
    # "a {class_word}." plus "the {class_word} is {action}." when an action is given), cached, and
    # reconstructed in both stages with loss weight `prior_weight`. 0 videos: off.
    prior_videos: int = 0
    prior_weight: float = 1.0  # loss weight of the prior videos
    prior_prompts: list[str] | None = None  # the prior videos' prompts; None: from class_word and action
    prior_steps: int | None = None  # sampler steps for the prior videos; None: the backbone's default
    # Each prior prompt is also asked on every background of `data.swap_backgrounds` (its first sentence gets
    # "on a {colour} background", the composites' wording), so the prior shows the class on the scenes the
    # concept is composited onto, and only there (issue #29's "prior preservation with prompts whose
    # backgrounds vary").
    prior_backgrounds: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.token_mask < 1.0:
            raise ValueError(f"regularizers.token_mask must be in [0, 1), got {self.token_mask}")
        if self.self_conditioning is not None and not 0.0 <= self.self_conditioning <= 1.0:
            raise ValueError(
                f"regularizers.self_conditioning must be in [0, 1], got {self.self_conditioning}"
            )
        if self.prior_videos < 0:
            raise ValueError(f"regularizers.prior_videos must be >= 0, got {self.prior_videos}")
        if not (self.prior_weight >= 0 and math.isfinite(self.prior_weight)):
            raise ValueError(f"regularizers.prior_weight must be a number >= 0, got {self.prior_weight}")
        if self.prior_prompts is not None and (
            not self.prior_prompts or not all(isinstance(t, str) and t.strip() for t in self.prior_prompts)
        ):
            raise ValueError("regularizers.prior_prompts must be a non-empty list of prompts")
        if self.prior_steps is not None and self.prior_steps < 1:
            raise ValueError(f"regularizers.prior_steps must be >= 1, got {self.prior_steps}")
        if self.prior_backgrounds and not self.prior_videos:
            raise ValueError(
                "regularizers.prior_backgrounds names backgrounds in the prior videos' prompts, "
                "but prior preservation is off: set regularizers.prior_videos too (8, say)"
            )


CONCEPT_KEYS = ("video", "token", "motion_token", "class_word", "action", "camera", "static_prompt")


@dataclass
class MultiConfig:
    """Several dynamic concepts trained jointly. The first is `data.video` with `concept.*`; `concepts` lists
    the others, each a mapping with `video` and `token` (and optionally motion_token, class_word, action,
    camera, static_prompt). One identity basis is shared, the motion residual is learned on every clip, and
    with probability `stitch_rate` a step trains on the concepts' videos stitched side by side."""

    concepts: list[dict[str, Any]] = field(default_factory=list)  # the other concepts: {video, token, ...}
    stitch_rate: float = 0.2  # share of the steps that show two concepts' videos side by side

    def __post_init__(self) -> None:
        if not 0.0 <= self.stitch_rate < 1.0:
            raise ValueError(f"multi.stitch_rate must be in [0, 1), got {self.stitch_rate}")
        for i, c in enumerate(self.concepts):
            if not isinstance(c, dict) or not c.get("video") or not c.get("token"):
                raise ValueError(f"multi.concepts[{i}] must be a mapping with at least 'video' and 'token'")
            unknown = sorted(set(c) - set(CONCEPT_KEYS))
            if unknown:
                raise ValueError(
                    f"multi.concepts[{i}] has unknown key '{unknown[0]}' (known: {', '.join(CONCEPT_KEYS)})"
                )
            if not all(isinstance(v, str) for v in c.values()):
                raise ValueError(f"multi.concepts[{i}]: every value must be text")


@dataclass
class TrainConfig:
    """Logging, checkpoints, samples."""

    seed: int = 0  # seeds the LoRA's initialisation and every step's noise, timesteps and masks
    checkpoint_every: int = 100  # optimizer steps; the end of each stage is always checkpointed
    keep_checkpoints: int = 2  # per stage
    log_every: int = 1  # optimizer steps between records of logs/loss.jsonl and TensorBoard
    sample_every: int = 0  # 0: no sample videos during training
    sample_steps: int | None = None  # None: the backbone's default
    guidance_scale: float | None = None  # samples during training and the run's default; None: the backbone's
    tensorboard: bool = True  # write TensorBoard events to logs/
    gradient_checkpointing: bool = (
        False  # recompute DiT blocks in backward: less activation memory, more time
    )
    # Before training: estimate each stage's peak memory and refuse a run that cannot fit the device.
    memory_check: bool = True
    # Optimizer steps between the plain progress lines (step, loss, lr, s/step, time left) printed when the
    # output is not a terminal or with --no-progress; 0: about 20 per stage.
    progress_every: int = 0

    def __post_init__(self) -> None:
        for name in ("checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("seed", "keep_checkpoints", "sample_every", "progress_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.guidance_scale is not None and not math.isfinite(self.guidance_scale):
            raise ValueError(f"train.guidance_scale must be a finite number, got {self.guidance_scale}")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    concept: ConceptConfig = field(default_factory=ConceptConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    stage1: StageConfig = field(default_factory=lambda: StageConfig(steps=600, dropconnect=0.8))
    stage2: StageConfig = field(default_factory=lambda: StageConfig(steps=900, dropconnect=0.5))
    regularizers: RegularizerConfig = field(default_factory=RegularizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    multi: MultiConfig = field(default_factory=MultiConfig)
    # setseq (the method) or a baseline of the paper, trained by the same tool: see setseq.train.methods
    method: str = "setseq"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            near = did_you_mean(str(self.method), METHODS)
            raise ValueError(
                f"method must be one of {', '.join(METHODS)}, got {self.method!r}{'; ' + near if near else ''}"
            )
        seen: dict[str, int] = {}
        for i, (_, c) in enumerate(self.concepts()):
            for tok in (c.token, c.motion_token):
                if tok in seen:
                    raise ValueError(
                        f"concepts {seen[tok] + 1} and {i + 1} share the token '{tok}'; give each concept its own "
                        "token and motion_token"
                    )
                seen[tok] = i

    def concepts(self) -> list[tuple[str | None, ConceptConfig]]:
        """(video, concept) of every concept trained: the main one first, then `multi.concepts`."""
        out: list[tuple[str | None, ConceptConfig]] = [(self.data.video, self.concept)]
        for i, c in enumerate(self.multi.concepts):
            fields = {k: v for k, v in c.items() if k != "video"}
            fields.setdefault("class_word", self.concept.class_word)
            fields.setdefault("motion_token", f"{fields['token']}m")
            try:
                out.append((c["video"], ConceptConfig(**fields)))
            except ValueError as exc:
                raise ValueError(f"multi.concepts[{i}]: {exc}") from None
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def did_you_mean(word: str, choices: Any, prefix: str = "") -> str | None:
    """'did you mean X?' for the closest of `choices` to a misspelt `word` (difflib), or None."""
    near = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{prefix}{near[0]}'?" if near else None


# The sections of a run config: its fields whose type is a config dataclass (read from the annotations).
_SECTIONS: dict[tuple[type, str], type] = {
    (RunConfig, name): hint
    for name, hint in typing.get_type_hints(RunConfig).items()
    if dataclasses.is_dataclass(hint)
}
