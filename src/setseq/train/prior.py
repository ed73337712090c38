"""Prior preservation: videos the base model itself generates for the class, reconstructed in both stages.

The paper's first regularizer: besides the concept, each stage also denoises videos that the *frozen base
model* generated from two-part class prompts ("A man in a blue t-shirt. He is walking in a park."), so the
LoRA keeps what the model already knew about the class. They are generated once, before any LoRA is
injected, encoded like the concept (every frame as a 1-frame latent for stage 1, the clip for stage 2) and
cached in the run folder under a key of (model, prompts, count, size, frames, sampler settings).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from setseq import lora as L
from setseq.backbones.base import Backbone
from setseq.config import RunConfig
from setseq.data.cache import cache_key, encode_latents, prompt_from, prompt_tensors, read_keyed, write_keyed
from setseq.prompts import PromptEmbeds, stack_prompts
from setseq.train.distributed import Processes


def prior_prompts(cfg: RunConfig) -> list[str]:
    """The class prompts: configured, or "a {class}." plus "the {class} is {action}." when there is one.

    With `regularizers.prior_backgrounds`, each of them on every colour of `data.swap_backgrounds` in turn
    ("a diamond on a gray background.", ...): the backgrounds the composites may use, never a colour the
    bench or the demo left out of them."""
    rc, cc = cfg.regularizers, cfg.concept
    if rc.prior_prompts:
        texts = list(rc.prior_prompts)
    else:
        texts = [f"a {cc.class_word}." + (f" the {cc.class_word} is {cc.action}." if cc.action else "")]
    if not rc.prior_backgrounds:
        return texts
    return [on_background(t, c) for c in cfg.data.swap_backgrounds for t in texts]


def on_background(text: str, colour: str) -> str:
    """`text` with "on a {colour} background" ending its first sentence."""
    head, dot, rest = text.strip().partition(".")
    return f"{head.rstrip()} on a {colour} background{dot or '.'}{rest}"


class PriorData:
    """The cached prior videos as latents. Video i was generated from prompts[i % len(prompts)].

    set_latents:  (N * F, C, 1, h, w), every frame of every video as a 1-frame latent (stage 1).
    clip_latents: (N, C, f, h, w), the videos (stage 2).
    prompt:       (N, L, D) the embedding of each video's prompt.
    """

    def __init__(self, set_latents: torch.Tensor, clip_latents: torch.Tensor, prompt: PromptEmbeds) -> None:
        self.set_latents, self.clip_latents, self.prompt = set_latents, clip_latents, prompt
        self.frames_per_video = set_latents.shape[0] // clip_latents.shape[0]

    def __len__(self) -> int:
        return self.clip_latents.shape[0]

    def _prompts(self, video_idx: list[int]) -> PromptEmbeds:
        p = self.prompt
        return PromptEmbeds(
            p.embeds[video_idx], p.mask[video_idx], None if p.pooled is None else p.pooled[video_idx]
        )

    def frames(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, PromptEmbeds]:
        """n random prior frames (n, C, 1, h, w) with their prompts, drawn from `gen`."""
        idx = torch.randint(0, self.set_latents.shape[0], (n,), generator=gen).tolist()
        return self.set_latents[idx], self._prompts([i // self.frames_per_video for i in idx])

    def clips(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, PromptEmbeds]:
        """n random prior videos (n, C, f, h, w) with their prompts, drawn from `gen`."""
        idx = torch.randint(0, len(self), (n,), generator=gen).tolist()
        return self.clip_latents[idx], self._prompts(idx)


def _save(path, data: PriorData, canon: str) -> None:
    tensors = {"set_latents": data.set_latents.contiguous(), "clip_latents": data.clip_latents.contiguous()}
    write_keyed(path, tensors | prompt_tensors("prompt", data.prompt), canon)


def _load(path, canon: str) -> PriorData | None:
    t = read_keyed(path, canon, "the prior cache")
    return None if t is None else PriorData(t["set_latents"], t["clip_latents"], prompt_from(t, "prompt"))


def prepare_prior(
    cfg: RunConfig,
    bb: Backbone,
    frames: int,
    height: int,
    width: int,
    cache_dir,
    log=print,
    progress: bool = True,
    save: bool = True,
) -> PriorData | None:
    """Generate (or read from the cache) the prior videos; None when prior preservation is off. `save`: write
    generated videos to the cache (off on the processes other than 0 of a sharded model).

    The prior is the *base* model's: any LoRA layers must be switched off (`base_model_prior`)."""
    rc = cfg.regularizers
    if rc.prior_videos == 0 or rc.prior_weight == 0:
        return None
    prompts = prior_prompts(cfg)
    canon, short = cache_key(
        {
            "kind": "prior",
            "backbone": bb.info.name,
            "fingerprint": bb.info.fingerprint,
            "model_id": bb.info.model_id,
            "prompts": prompts,
            "count": rc.prior_videos,
            "frames": frames,
            "size": [height, width],
            "steps": rc.prior_steps,
            "guidance_scale": cfg.train.guidance_scale,
            "seed": cfg.train.seed,
        }
    )
    path = cache_dir / f"prior-{short}.safetensors"
    cached = _load(path, canon)
    if cached is not None:
        log(f"prior: reusing {rc.prior_videos} cached videos from {path}")
        return cached
    clips, sets, embeds = [], [], []
    prompt_embeds = [bb.encode_prompt([p]) for p in prompts]
    for i in tqdm(range(rc.prior_videos), desc="prior videos", disable=not progress, leave=False):
        with torch.no_grad():
            video = bb.generate(
                prompts[i % len(prompts)],
                frames=frames,
                height=height,
                width=width,
                steps=rc.prior_steps,
                guidance_scale=cfg.train.guidance_scale,
                seed=cfg.train.seed * 100_003 + i,
            )  # (F, 3, H, W) in [-1, 1]
        frame_lat, clip_lat = encode_latents(bb, video)
        sets.append(frame_lat)
        clips.append(clip_lat)
        embeds.append(prompt_embeds[i % len(prompts)].to("cpu"))
    prompt = stack_prompts(embeds)
    data = PriorData(torch.cat(sets), torch.cat(clips), prompt)
    if save:
        _save(path, data, canon)
    log(f"prior: generated {rc.prior_videos} videos from {prompts} and cached them in {path}")
    return data


def base_model_prior(
    cfg: RunConfig,
    bb: Backbone,
    shape: tuple[int, int, int],
    cache_dir: Path,
    log: Callable[[str], None],
    progress: bool,
    procs: Processes,
    sharded: bool,
) -> PriorData | None:
    """The prior videos of the base model alone, for (frames, height, width) = `shape`, generated with every
    LoRA layer switched off (each skips its LoRA: the base model's forward, bit for bit).

    Not sharded (one process, or data parallel): process 0 generates and caches, then the others read its
    cache. Sharded by FSDP2 (`sharded`: `model.fsdp` with several processes, or `model.fsdp_offload`): every
    process runs each block together, so all generate; process 0 alone saves, and the others then read what
    it saved (the same videos)."""
    frames, h, w = shape
    progress = progress and procs.is_main
    if not sharded:
        with procs.main_first(), L.switched_off(bb.transformer):
            return prepare_prior(cfg, bb, frames, h, w, cache_dir, log, progress)
    with L.switched_off(bb.transformer):
        prior = prepare_prior(cfg, bb, frames, h, w, cache_dir, log, progress, save=procs.is_main)
    procs.barrier()
    if not procs.is_main and prior is not None:  # the same videos as process 0's, from its cache
        prior = prepare_prior(cfg, bb, frames, h, w, cache_dir, log, False)
    return prior
