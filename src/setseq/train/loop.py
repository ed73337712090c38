"""The pieces both stages share, as functions of their inputs (the recipe object, `setseq.train.recipe`, runs
them): the per-step RNG, the micro-batch of a stage's samples (background swap, subject weights, prior
samples), the denoising loss, the optimizer, the progress report (a bar on a terminal, else plain lines) and
the end-of-run summary.

Randomness: every micro-step draws from a fresh `torch.Generator` seeded by (seed, stage, step, micro). A
resumed run therefore replays exactly the same noise, timesteps, frame order and masks as an uninterrupted
one, without depending on how many random numbers earlier steps consumed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from setseq import lora as L
from setseq.backbones.base import Backbone
from setseq.config import RunConfig, StageConfig
from setseq.data.cache import EncodedConcept
from setseq.data.masks import swap_prompt
from setseq.functional import flow_matching as fm
from setseq.functional.regularizers import token_mask
from setseq.io import disk_error, write_text
from setseq.prompts import ImageCondition, PromptEmbeds, cat_prompts, stack_images, stack_prompts
from setseq.train.attention import AttentionLoss


def step_generator(seed: int, stage: int, step: int, micro: int = 0) -> torch.Generator:
    h = hashlib.sha256(f"{seed}:{stage}:{step}:{micro}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))


def step_expert(backbone: Backbone, seed: int, stage: int, step: int) -> tuple[float, float] | None:
    """Per-step expert routing (`model.expert_routing=step`) on a model of several experts (Wan 2.2 A14B): the
    range of sigmas (lowest, highest) of the one expert every sample of `step` trains, on every process; None
    for a model of one DiT.

    The expert is drawn with probability equal to its share of the backbone's sigma distribution, from a
    generator seeded by (seed, stage, step) alone (the same on every process; micro-batch -1, which no
    micro-batch uses), and each sample's sigma is then drawn within its range (`denoising_loss`): the
    distribution of a sample's sigma is the backbone's own, while every process runs the same expert, so
    FSDP2 gathers the same blocks on all of them. A step's samples no longer mix experts: each expert's
    LoRA is stepped in the share of the steps that falls to it, with the whole batch."""
    experts = backbone.expert_sigmas
    if not experts:
        return None
    shares = torch.tensor([backbone.sigma_share(lo, hi) for _, lo, hi in experts], dtype=torch.float64)
    pick = int(torch.multinomial(shares, 1, generator=step_generator(seed, stage, step, -1)))
    return experts[pick][1], experts[pick][2]


@dataclass
class Batch:
    latents: torch.Tensor  # (B, C, f, h, w) clean latents
    prompt: PromptEmbeds  # (B, L, D)
    weights: torch.Tensor | None = None  # (B,) per-sample loss weights (prior samples); None: all 1
    # The prompts of the first len(texts) samples as text: re-encoded in the step when token embeddings train.
    texts: list[str] | None = None
    # (B, 1, f, h, w) loss weights of latent positions (the subject-weighted loss, `stageN.background_weight`)
    element_weights: torch.Tensor | None = None
    # An image-to-video DiT's first-frame condition of each sample (stage 2 on the clip); None: dropped
    image: ImageCondition | None = None
    # (B, 1, f, h, w) the subject's share of each latent position, when the target off the subject is the
    # frozen base model's prediction (`stageN.background_target=base`); None: the data's target everywhere
    subject: torch.Tensor | None = None
    # (n, 1, f, h, w) the subject's share of each latent position of the first n samples (the concept's, whose
    # prompts are `texts`), when the stage has an attention loss (`stageN.attention_loss`, its weight here)
    attention_subject: torch.Tensor | None = None
    attention_weight: float = 0.0


def stack_latents(latents: list[torch.Tensor]) -> torch.Tensor:
    """Several latent batches as one; one batch-1 tensor repeated is an expanded view, not a copy."""
    if all(t is latents[0] for t in latents) and latents[0].shape[0] == 1:
        return latents[0].expand(len(latents), *latents[0].shape[1:])
    return torch.cat(latents)


def stitched_batch(pairs: list[EncodedConcept], n: int, gen: torch.Generator, clip: bool) -> Batch:
    """A micro-batch of stitched concept pairs (multi-concept training): one pair drawn from `gen`, its clip
    (`clip`) or n of its frames drawn from `gen`, with the pair's "A and B" prompt. No prior samples: their
    width differs."""
    pair = pairs[int(torch.randint(len(pairs), (1,), generator=gen))]
    if clip:  # (an image-to-video DiT: the stitched clip's own first frame, as for a concept's clip)
        image = None if pair.clip_image is None else stack_images([pair.clip_image] * n)
        return Batch(pair.clip_latents.expand(n, -1, -1, -1, -1), pair.motion.expand(n), image=image)
    idx = torch.randint(pair.set_latents.shape[0], (n,), generator=gen).tolist()
    return Batch(pair.set_latents[idx], pair.static.expand(n))


def with_prior(batch: Batch, latents: torch.Tensor, prompt: PromptEmbeds, weight: float) -> Batch:
    """The batch followed by prior samples, weighted so that the loss is
    mean(concept losses) + weight * mean(prior losses)."""
    n, k = batch.latents.shape[0], latents.shape[0]
    w = torch.cat([torch.full((n,), (n + k) / n), torch.full((k,), weight * (n + k) / k)])
    lat = torch.cat([batch.latents, latents.to(batch.latents.dtype)])
    ew = batch.element_weights
    if ew is not None:  # the prior's videos have no mask: every position counts
        ew = torch.cat([ew, torch.ones((k, *ew.shape[1:]), dtype=ew.dtype)])
    subj = batch.subject
    if subj is not None:  # ... and every position is the data's (the base model's own video)
        subj = torch.cat([subj, torch.ones((k, *subj.shape[1:]), dtype=subj.dtype)])
    return Batch(
        lat,
        cat_prompts(batch.prompt, prompt),
        w,
        texts=batch.texts,
        element_weights=ew,
        subject=subj,
        attention_subject=batch.attention_subject,  # (the prior's samples take no part)
        attention_weight=batch.attention_weight,
    )


def swap_draw(concept: EncodedConcept, p: float, gen: torch.Generator) -> int | None:
    """With probability `p`, which of the concept's swapped backgrounds a sample shows (drawn from `gen`);
    None: its own background."""
    if float(torch.rand((), generator=gen)) >= p:
        return None
    return int(torch.randint(len(concept.swap_names), (1,), generator=gen))


def background_weighted(subject: torch.Tensor, background_weight: float) -> torch.Tensor:
    """Loss weights of latent positions from the subject's share of each (`setseq.data.masks`): 1 on the
    subject, `background_weight` elsewhere, linear in between."""
    return background_weight + (1.0 - background_weight) * subject


# One sample of a micro-batch: a concept and one of its frames (stage 1), or None: its clip (stage 2 and the
# one-stage baselines).
Sample = tuple[EncodedConcept, int | None]


def _view(c: EncodedConcept, frame: int | None, swap: int | None) -> tuple[torch.Tensor, PromptEmbeds]:
    """A sample's latents (1, C, f, h, w) and prompt, on its own background (`swap` None) or swapped one."""
    if frame is None:
        return (c.clip_latents, c.motion) if swap is None else (c.swap_clip[swap], c.swap_motion[swap])
    if swap is None:
        return c.set_latents[frame : frame + 1], c.static
    return c.swap_set[swap, frame : frame + 1], c.swap_static[swap]


def _band(samples: list[Sample], subject: torch.Tensor, cells: int) -> torch.Tensor:
    """`stageN.background_band`: the data's target kept within `cells` latent cells of the subject's path, the
    union over the video's frames (a single frame's band is its whole set's, taken as one clip)."""
    if samples[0][1] is None:  # clips: the path over each clip's own frames
        return fm.subject_band(subject, cells)
    return torch.cat([fm.subject_band(c.subject_set.transpose(0, 2), cells)[:, :, :1] for c, _ in samples])


def sample_batch(
    samples: list[Sample],
    texts: list[str] | None,
    sc: StageConfig,
    gen: torch.Generator,
    subject_aware: bool = True,
) -> Batch:
    """The micro-batch of `samples`, both stages' logic written once. With `subject_aware` (the Set-and-Sequence
    stages; not the one-stage baselines on the clip): each sample shown on a swapped plain background with
    probability `stageN.background_swap` (drawn from `gen`, its text's background words swapped too), the loss
    weighted off the subject (`background_weight`), the base model's target there (`background_target`), and
    the concept token's attention tied to the subject (`attention_loss`). An image-to-video DiT's clips carry
    their own first frame; single frames drop it."""
    views = [_view(c, f, None) for c, f in samples]
    lat, prompts = [v[0] for v in views], [v[1] for v in views]
    if subject_aware and sc.background_swap > 0:
        for j, (c, f) in enumerate(samples):
            k = swap_draw(c, sc.background_swap, gen)
            if k is not None:
                lat[j], prompts[j] = _view(c, f, k)
                if texts is not None:
                    texts[j] = swap_prompt(texts[j], c.swap_names[k])
    weights = base = subject = None
    if subject_aware and (
        sc.background_weight < 1.0 or sc.background_target == "base" or sc.attention_loss > 0
    ):
        # (B, 1, f, h, w) the subject's share of each latent position
        subject = torch.cat([c.subject_clip if f is None else c.subject_set[f : f + 1] for c, f in samples])
        if sc.background_weight < 1.0:
            weights = background_weighted(subject, sc.background_weight)
        if sc.background_target == "base":  # off the subject: the base model's target
            base = subject if sc.background_band < 0 else _band(samples, subject, sc.background_band)
    batch = Batch(
        stack_latents(lat), stack_prompts(prompts), texts=texts, element_weights=weights, subject=base
    )
    if subject is not None and sc.attention_loss > 0 and texts is not None:
        batch.attention_subject, batch.attention_weight = subject, sc.attention_loss
    first, frame = samples[0]
    if frame is None and first.clip_image is not None:
        batch.image = stack_images([c.clip_image for c, _ in samples])
    return batch


def denoising_loss(
    backbone: Backbone,
    batch: Batch,
    gen: torch.Generator,
    token_mask_p: float,
    self_conditioning_p: float = 0.0,
    encode_prompt: Callable[[list[str]], PromptEmbeds] | None = None,
    sigma_range: tuple[float, float] | None = None,
    attention: AttentionLoss | None = None,
) -> torch.Tensor:
    """One denoising loss on a batch: noise, timesteps, token masks and self-conditioning drawn from `gen`.
    `sigma_range`: the timesteps drawn within it only (one expert's, `step_expert`).

    The backbone's forward process and target (`Backbone.noisy` / `training_target`): flow matching (velocity
    target) unless its family says otherwise (e.g. a v-prediction DDPM).
    Self-conditioning (FIT): each sample, with probability `self_conditioning_p`, gets the model's own x0
    estimate from a first, gradient-free pass as its self-conditioning input; the others get zeros.
    With `encode_prompt` (token embeddings training), the batch's `texts` are encoded here, with gradients.
    With `attention` and a batch that asks for it (`Batch.attention_subject`), Break-A-Scene's attention loss
    of the forward is added, times `Batch.attention_weight` (`setseq.train.attention`)."""
    x0 = batch.latents.to(backbone.device, torch.float32)
    noise = torch.randn(x0.shape, generator=gen).to(backbone.device)
    sigmas = backbone.sample_sigmas(x0.shape[0], generator=gen, between=sigma_range)
    noisy = backbone.noisy(x0, noise, sigmas)
    prompt = batch.prompt
    if encode_prompt is not None and batch.texts:
        n = len(batch.texts)
        rest = PromptEmbeds(
            prompt.embeds[n:], prompt.mask[n:], None if prompt.pooled is None else prompt.pooled[n:]
        )
        fresh = encode_prompt(list(batch.texts)).to(prompt.embeds.device)
        prompt = cat_prompts(fresh, rest) if n < prompt.embeds.shape[0] else fresh
    prompt = token_mask(prompt, token_mask_p, gen).to(backbone.device)
    extra: dict[str, Any] = {} if batch.image is None else {"image": batch.image}  # an image-to-video DiT's
    if self_conditioning_p > 0.0:
        use = (torch.rand(x0.shape[0], generator=gen) < self_conditioning_p).to(backbone.device)
        with torch.no_grad():
            estimate = fm.x0_from_velocity(
                noisy, backbone.predict(noisy, sigmas, prompt, **extra).float(), sigmas
            )
        extra["self_cond"] = estimate * use.reshape(-1, *([1] * (x0.ndim - 1))).to(estimate.dtype)
    tie = attention is not None and batch.attention_subject is not None and batch.texts
    with attention.capture() if tie else contextlib.nullcontext({}) as kept:
        pred = backbone.predict(noisy, sigmas, prompt, **extra)
    weights = None if batch.weights is None else batch.weights.to(backbone.device)
    target = backbone.training_target(x0, noise, sigmas)
    if batch.subject is not None:  # off the subject, the frozen base model's own prediction is the target
        with torch.no_grad(), lora_off(backbone.transformer):
            base = backbone.predict(noisy, sigmas, prompt, **extra)
        target = fm.background_target(target, base, batch.subject)
    loss = fm.regression_loss(pred, target, weights, batch.element_weights)
    if tie:
        assert attention is not None and batch.attention_subject is not None and batch.texts  # (tie says so)
        tied = attention.loss(kept, list(batch.texts), batch.attention_subject, tuple(x0.shape))
        loss = loss + batch.attention_weight * tied
    return loss


lora_off = L.switched_off  # (the name the tests and `denoising_loss` know)


def make_optimizer(params: list, sc: StageConfig) -> torch.optim.AdamW:
    """AdamW with the stage's settings over parameters, or parameter groups (dicts) with their own."""
    return torch.optim.AdamW(params, lr=sc.lr, betas=tuple(sc.betas), weight_decay=sc.weight_decay)


def trainable_state(model: torch.nn.Module, stage: int) -> dict[str, torch.Tensor]:
    state = L.identity_state(model)
    if stage == 2:
        state |= L.motion_state(model)
    return state


def trim_log(path: Path, stage: int, step: int) -> None:
    """Drop from loss.jsonl what a killed run logged past the checkpoint it resumes from (stage `stage`, step
    `step`), and a torn last line, so a resumed run's log reads like an uninterrupted one."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise disk_error(path, exc) from None
    keep = []
    for line in text.splitlines(keepends=True):
        try:
            rec = json.loads(line)
            s, st = int(rec["stage"]), int(rec["step"])
        except (ValueError, KeyError, TypeError):
            continue  # torn by a kill
        if not line.endswith("\n"):
            continue
        if s < stage or (s == stage and st <= step):
            keep.append(line)
    new = "".join(keep)
    if new != text:
        write_text(path, new)


def duration(seconds: float) -> str:
    """12.3 -> '12s', 760 -> '12m40s', 7500 -> '2h05m'."""
    s = int(round(seconds))
    return (
        f"{s}s"
        if s < 60
        else f"{s // 60}m{s % 60:02d}s"
        if s < 3600
        else f"{s // 3600}h{s % 3600 // 60:02d}m"
    )


class Progress:
    """How a stage reports its steps: a tqdm bar when asked for and both stdout and stderr are terminals,
    else a plain line (`line`) to the run's log every `train.progress_every` steps (and at the first and last),
    so a redirected log holds readable lines rather than a bar's carriage returns.

    Time left counts this stage's remaining steps at its speed so far and, in stage 1, stage 2's steps at
    stage 1's speed: a lower bound ("at least"), since a step on clips costs more than one on frames (by how
    much depends on the model: little more on the toy model, where each step's fixed costs dominate; about the
    clip's latent frames times more in a large DiT, where compute grows with the tokens)."""

    def __init__(self, cfg: RunConfig, stage: int, start: int, bar: bool, log: Callable[[str], None]) -> None:
        self.stage, self.start, self.log = stage, start, log
        self.steps = steps = (cfg.stage1 if stage == 1 else cfg.stage2).steps
        self.bar = bar and sys.stdout.isatty() and sys.stderr.isatty()
        self.every = cfg.train.progress_every or max(1, steps // 20)
        # Stage 2's steps, in stage-1 steps: a clip costs at least a frame, so with a batch no smaller a step
        # costs at least a stage-1 step, and with a smaller one at least its share of the batch.
        s1, s2 = cfg.stage1, cfg.stage2
        self.later = s2.steps * min(1.0, s2.batch_size / s1.batch_size) if stage == 1 else 0.0
        self.t0 = time.perf_counter()

    def per_step(self, done: int) -> float:
        """Seconds per step of this invocation so far."""
        return (time.perf_counter() - self.t0) / max(1, done - self.start)

    def left(self, done: int) -> float:
        """Seconds left in this stage and the next, at this invocation's speed so far."""
        return self.per_step(done) * (self.steps - done + self.later)

    def line(self, done: int, loss: float, lr: float) -> str:
        per = self.per_step(done)
        name = "set" if self.stage == 1 else "sequence"
        left = (
            f"at least {duration(self.left(done))} left (both stages)"
            if self.later
            else f"{duration(self.left(done))} left"
        )
        return f"stage {self.stage} ({name}) step {done}/{self.steps}  loss {loss:.4f}  lr {lr:.2g}  {per:.3g} s/step  {left}"

    def step(self, bar: Any, done: int, loss: float, lr: float) -> None:
        if self.bar:
            left = duration(self.left(done)) + ("+ (both stages)" if self.later else "")
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2g}", left=left)
        elif done == self.start + 1 or done == self.steps or done % self.every == 0:
            self.log(self.line(done, loss, lr))


def run_summary(run_dir: Path, seconds: float, written: list[Path], resumed: bool) -> str:
    """The end-of-run line: how long this start took, each stage's final loss (`logs/loss.jsonl`), and where
    the outputs are."""
    final: dict[int, float] = {}
    try:
        for line in (run_dir / "logs" / "loss.jsonl").read_text().splitlines():
            rec = json.loads(line)
            final[int(rec["stage"])] = float(rec["loss"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no log (another process, or none written): no losses to show
    losses = ", ".join(f"stage {s} {v:.4f}" for s, v in sorted(final.items())) or "not logged"
    files = ", ".join(p.name for p in written) or "none"
    return (
        f"done in {duration(seconds)}{' (this start; resumed)' if resumed else ''}; final loss: {losses}; "
        f"outputs in {run_dir}: {files} (logs in {run_dir / 'logs'}; `setseq info {shlex.quote(str(run_dir))}` "
        "describes the run)"
    )
