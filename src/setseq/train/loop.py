"""Shared pieces of the two stage recipes: the per-step RNG, the flow-matching step, the optimizer loop with
its progress (a bar on a terminal, else plain lines), TensorBoard scalars, NaN detection, checkpoints, sample
videos and the end-of-run summary.

Randomness: every micro-step draws from a fresh `torch.Generator` seeded by (seed, stage, step, micro). A
resumed run therefore replays exactly the same noise, timesteps, frame order and masks as an uninterrupted
one, without depending on how many random numbers earlier steps consumed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from setseq import lora as L
from setseq.backbones.base import Backbone, noisy_latents, training_target
from setseq.config import RunConfig, StageConfig
from setseq.data.cache import EncodedConcept
from setseq.dtensors import local
from setseq.errors import SetseqError
from setseq.functional import flow_matching as fm
from setseq.functional.regularizers import token_mask
from setseq.io import disk_error, write_text
from setseq.prompts import ImageCondition, PromptEmbeds, cat_prompts, stack_images
from setseq.train import checkpoint as C
from setseq.train.distributed import SINGLE, Processes, sync_gradients
from setseq.train.embeddings import DELTA_KEY, TokenEmbeddings
from setseq.train.prior import PriorData


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
    experts = getattr(backbone, "expert_sigmas", None)
    if not experts:
        return None
    share = backbone.sigma_share  # type: ignore[attr-defined]  (a backbone of experts has it)
    shares = torch.tensor([share(lo, hi) for _, lo, hi in experts], dtype=torch.float64)
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
        lat, cat_prompts(batch.prompt, prompt), w, texts=batch.texts, element_weights=ew, subject=subj
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


@dataclass
class StageContext:
    """What a recipe needs; built once by `setseq.train.run.train`."""

    cfg: RunConfig
    backbone: Backbone
    data: EncodedConcept
    run_dir: Path
    writer: Any = None  # TensorBoard SummaryWriter or None
    log_file: Path | None = None
    progress: bool = True
    extra_state: dict[str, Any] = field(default_factory=dict)  # recorded in every checkpoint (cache key, ...)
    on_sample: Callable[[int, int], None] | None = None
    prior: PriorData | None = None  # when prior preservation is on
    concepts: list[EncodedConcept] = field(default_factory=list)  # every concept (multi-concept runs)
    stitched: list[EncodedConcept] = field(default_factory=list)  # stitched concept pairs
    self_conditioning: float = 0.0  # resolved probability (see `setseq.train.setup.self_conditioning_p`)
    embeddings: TokenEmbeddings | None = None  # when token embeddings train
    texts: list[tuple[str, str]] = field(default_factory=list)  # (T_static, T_motion) of each concept
    procs: Processes = SINGLE  # data-parallel processes (`setseq.train.distributed`)
    log: Callable[[str], None] = print  # the run's log: the plain progress lines go there


def denoising_loss(
    backbone: Backbone,
    batch: Batch,
    gen: torch.Generator,
    token_mask_p: float,
    self_conditioning_p: float = 0.0,
    encode_prompt: Callable[[list[str]], PromptEmbeds] | None = None,
    sigma_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """One denoising loss on a batch: noise, timesteps, token masks and self-conditioning drawn from `gen`.
    `sigma_range`: the timesteps drawn within it only (one expert's, `step_expert`).

    Flow matching (velocity target) unless the backbone defines its own forward process and target
    (`noisy` / `training_target`, e.g. CogVideoX's v-prediction DDPM): see `setseq.backbones.base`.
    Self-conditioning (FIT): each sample, with probability `self_conditioning_p`, gets the model's own x0
    estimate from a first, gradient-free pass as its self-conditioning input; the others get zeros.
    With `encode_prompt` (token embeddings training), the batch's `texts` are encoded here, with gradients."""
    x0 = batch.latents.to(backbone.device, torch.float32)
    noise = torch.randn(x0.shape, generator=gen).to(backbone.device)
    if sigma_range is None:
        sigmas = backbone.sample_sigmas(x0.shape[0], generator=gen)
    else:  # (a backbone of several experts takes the range: see `step_expert`)
        draw = backbone.sample_sigmas
        sigmas = draw(x0.shape[0], generator=gen, between=sigma_range)  # type: ignore[call-arg]
    noisy = noisy_latents(backbone, x0, noise, sigmas)
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
    pred = backbone.predict(noisy, sigmas, prompt, **extra)
    weights = None if batch.weights is None else batch.weights.to(backbone.device)
    target = training_target(backbone, x0, noise, sigmas)
    if batch.subject is not None:  # off the subject, the frozen base model's own prediction is the target
        with torch.no_grad(), lora_off(backbone.transformer):
            base = backbone.predict(noisy, sigmas, prompt, **extra)
        target = fm.background_target(target, base, batch.subject)
    return fm.regression_loss(pred, target, weights, batch.element_weights)


@contextlib.contextmanager
def lora_off(model: torch.nn.Module) -> Iterator[None]:
    """Every LoRA layer of `model` at scale 0 (the base model's own forward) within the block; the scales
    are restored after."""
    layers = list(L.get_layers(model).values())
    scales = [(layer.identity_scale, layer.motion_scale) for layer in layers]
    for layer in layers:
        layer.identity_scale = layer.motion_scale = 0.0
    try:
        yield
    finally:
        for layer, (i, m) in zip(layers, scales):
            layer.identity_scale, layer.motion_scale = i, m


def make_optimizer(params: list, sc: StageConfig) -> torch.optim.AdamW:
    """AdamW with the stage's settings over parameters, or parameter groups (dicts) with their own."""
    return torch.optim.AdamW(params, lr=sc.lr, betas=tuple(sc.betas), weight_decay=sc.weight_decay)


def trainable_state(model: torch.nn.Module, stage: int) -> dict[str, torch.Tensor]:
    state = L.identity_state(model)
    if stage == 2:
        state |= L.motion_state(model)
    return state


def _finite(params: list[torch.nn.Parameter]) -> bool:
    """Whether this process's part of every parameter is finite."""
    return bool(torch.stack([torch.isfinite(local(p)).all() for p in params]).all()) if params else True


def _blow_up(ctx: StageContext, stage: int, step: int, what: str) -> SetseqError:
    """The message for a non-finite loss, gradient or weight: it names the newest checkpoint whose weights
    are all finite (checkpoints of non-finite weights are never written, see `checkpoint.save_checkpoint`)."""
    last = C.latest_checkpoint(ctx.run_dir, finite=True)
    keep = f"the last good checkpoint is {last.path}" if last else "no checkpoint was written yet"
    return SetseqError(
        f"{what} at stage {stage} step {step + 1}; training stopped and {keep}",
        C.lower_lr_advice(ctx.run_dir, stage, (ctx.cfg.stage1 if stage == 1 else ctx.cfg.stage2).lr),
    )


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


def run_stage(
    ctx: StageContext,
    stage: int,
    sc: StageConfig,
    params: list[torch.nn.Parameter],
    make_batch: Callable[[int, int, torch.Generator], Batch],
    resume: C.Checkpoint | None = None,
) -> list[float]:
    """The optimizer loop of one stage. `make_batch(step, micro, gen)` gives each micro-batch.

    Returns the per-step losses of this invocation."""
    model = ctx.backbone.transformer
    emb = ctx.embeddings
    groups: list[dict[str, Any]] = [{"params": params}] if params else []
    if emb is not None:  # the concept tokens' embedding offsets, at their own lr and without weight decay
        groups.append({"params": [emb.delta], "lr": emb.lr, "weight_decay": 0.0})
        emb.train_rows(emb.stage_rows[stage])
        params = [*params, emb.delta]
    opt = make_optimizer(groups, sc)
    start = 0
    if resume is not None and resume.stage == stage:
        C.restore_optimizer(opt, resume.optimizer(), resume.state["param_groups"])
        start = resume.step
    losses: list[float] = []
    if ctx.log_file is not None:
        trim_log(ctx.log_file, stage, start)
    if start >= sc.steps:
        return losses
    tc = ctx.cfg.train
    model.train()
    report = Progress(ctx, stage, sc.steps, start)
    bar = tqdm(
        total=sc.steps,
        initial=start,
        desc=f"stage {stage} ({'set' if stage == 1 else 'sequence'})",
        disable=not report.bar,
        dynamic_ncols=True,
        unit="step",
    )
    t0 = time.perf_counter()
    try:
        for step in range(start, sc.steps):
            opt.zero_grad(set_to_none=True)
            total = _accumulate(ctx, stage, sc, step, make_batch)
            gnorm = torch.nn.utils.clip_grad_norm_(params, sc.grad_clip)
            if not torch.isfinite(gnorm):  # before the update: the weights are still those of the last step
                raise _blow_up(ctx, stage, step, f"the gradient norm became {float(gnorm)}")
            opt.step()
            # A huge step can overflow the weights while loss and gradients were finite.
            if not ctx.procs.all_true(_finite(params)):
                raise _blow_up(ctx, stage, step, "the weights became non-finite")
            losses.append(total)
            done = step + 1
            bar.update(1)
            report.step(bar, done, total, opt.param_groups[0]["lr"])
            if done % tc.log_every == 0 or done == sc.steps:  # (the last: the summary's final loss)
                _log_step(ctx, stage, done, total, float(gnorm), time.perf_counter() - t0)
            if done % tc.checkpoint_every == 0 or done == sc.steps:
                _checkpoint(ctx, stage, done, opt)
            if ctx.on_sample is not None and tc.sample_every and done % tc.sample_every == 0:
                model.eval()
                ctx.on_sample(stage, done)
                model.train()
    finally:
        bar.close()
    model.eval()
    return losses


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

    def __init__(self, ctx: StageContext, stage: int, steps: int, start: int) -> None:
        self.ctx, self.stage, self.steps, self.start = ctx, stage, steps, start
        self.bar = ctx.progress and sys.stdout.isatty() and sys.stderr.isatty()
        self.every = ctx.cfg.train.progress_every or max(1, steps // 20)
        # Stage 2's steps, in stage-1 steps: a clip costs at least a frame, so with a batch no smaller a step
        # costs at least a stage-1 step, and with a smaller one at least its share of the batch.
        s1, s2 = ctx.cfg.stage1, ctx.cfg.stage2
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
            self.ctx.log(self.line(done, loss, lr))


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


def _accumulate(
    ctx: StageContext,
    stage: int,
    sc: StageConfig,
    step: int,
    make_batch: Callable[[int, int, torch.Generator], Batch],
) -> float:
    """Forward and backward of this process's micro-batches of `step`; returns the step's loss, summed over
    the processes (their gradients are summed by the engine, `distributed.parallelize`). A non-finite loss on
    any process stops every process, with the step named."""
    model, procs, emb = ctx.backbone.transformer, ctx.procs, ctx.embeddings
    last_mine = max(m for m in range(sc.accumulation) if procs.mine(m))
    seed = ctx.cfg.train.seed
    expert = step_expert(ctx.backbone, seed, stage, step) if ctx.cfg.model.step_routing else None
    total, bad = 0.0, None
    for micro in range(sc.accumulation):
        if not procs.mine(micro):  # another process's share of the step
            continue
        gen = step_generator(seed, stage, step, micro)
        L.draw_masks(model, gen)
        loss = denoising_loss(
            ctx.backbone,
            make_batch(step, micro, gen),
            gen,
            ctx.cfg.regularizers.token_mask,
            ctx.self_conditioning,
            ctx.backbone.encode_prompt if emb is not None else None,
            expert,
        )
        if not torch.isfinite(loss):
            bad = loss.item() if bad is None else bad
            if procs.world == 1:
                break
            # Several processes: go on, so that every one runs the same forwards and backwards (the
            # engine's collectives); the summed loss below is then non-finite and all stop together.
        sync_gradients(model, micro == last_mine)  # the engine reduces in the last backward only
        (loss / sc.accumulation).backward()
        total += loss.item() / sc.accumulation
    total = procs.sum_scalar(float("nan") if bad is not None else total)
    if bad is not None or not math.isfinite(total):
        raise _blow_up(ctx, stage, step, f"the loss became {bad if bad is not None else total}")
    return total


def _log_step(ctx: StageContext, stage: int, done: int, loss: float, gnorm: float, elapsed: float) -> None:
    """The step's loss and gradient norm to TensorBoard and `logs/loss.jsonl` (process 0)."""
    if ctx.writer is not None:
        ctx.writer.add_scalar(f"stage{stage}/loss", loss, done)
        ctx.writer.add_scalar(f"stage{stage}/grad_norm", gnorm, done)
    if ctx.log_file is None:
        return
    record = {"stage": stage, "step": done, "loss": loss, "grad_norm": gnorm, "elapsed_s": round(elapsed, 3)}
    try:
        with open(ctx.log_file, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as exc:
        raise disk_error(ctx.log_file, exc) from None


def _checkpoint(ctx: StageContext, stage: int, done: int, opt: torch.optim.Optimizer) -> None:
    """A checkpoint after step `done`. Every process takes part in gathering sharded state (whole tensors);
    process 0 writes it."""
    emb = ctx.embeddings
    lora = trainable_state(ctx.backbone.transformer, stage) | (
        {DELTA_KEY: emb.delta.detach()} if emb is not None else {}
    )
    opt_state = C.optimizer_tensors(opt)
    if ctx.procs.is_main:
        C.save_checkpoint(
            ctx.run_dir,
            stage,
            done,
            lora,
            opt_state,
            {"config": ctx.cfg.to_dict(), "processes": ctx.procs.world, **ctx.extra_state},
            keep=ctx.cfg.train.keep_checkpoints,
        )
