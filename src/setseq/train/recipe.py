"""`setseq train` as one object, in the shape of torchtune's single-device LoRA recipe: one video in, a
personalized model out.

    recipe = Recipe(cfg, out)            # a new run      (Recipe.from_run(out) resumes one)
    recipe.setup()                       # folder, processes, model, inputs, layers, engine, prior: once each
    recipe.train()                       # stage 1, stage 2, the files written: top to bottom

`setup` builds each component once, as an attribute; `train` reads top to bottom; the stages themselves
(`stage1_set`, `stage2_sequence`) are as small as the paper's sections, over the loop here (`run_stage`, one
optimizer `step`, which the speed bench calls too) and the batch logic both share (`batch`).

Run folder:
    config.yaml                 the resolved config (what --resume reads back)
    cache/<key>.safetensors     frame latents, clip latents, prompt embeddings
    checkpoints/stage{S}-{step}/  self-describing checkpoints
    logs/                       TensorBoard events; loss.jsonl
    samples/                    optional sample videos during training
    setseq.safetensors          identity + motion, kept apart (setseq's own file)
    lora_diffusers.safetensors  identity + motion merged at scale 1: loads with WanPipeline.load_lora_weights
    lora_comfyui.safetensors    the same in ComfyUI's key layout
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from setseq import lora as L
from setseq.backbones.base import Backbone
from setseq.config import RunConfig, StageConfig
from setseq.data.cache import EncodedConcept
from setseq.data.segment import with_auto_mask
from setseq.data.video import from_tensor, write_video
from setseq.dtensors import local
from setseq.errors import SetseqError
from setseq.infer.generate import default_fps
from setseq.io import disk_error
from setseq.legacy import legacy_run_key
from setseq.memory import Engine
from setseq.train import checkpoint as C
from setseq.train.attention import AttentionLoss
from setseq.train.distributed import SINGLE, Processes, describe_engine, parallelize, sync_gradients
from setseq.train.embeddings import DELTA_KEY, TokenEmbeddings
from setseq.train.encode import check_shapes, encode_all, run_fields
from setseq.train.loop import (
    Batch,
    Progress,
    Sample,
    denoising_loss,
    make_optimizer,
    run_summary,
    sample_batch,
    step_expert,
    step_generator,
    stitched_batch,
    trainable_state,
    trim_log,
    with_prior,
)
from setseq.train.memory_plan import check_memory, token_summary
from setseq.train.methods import effective_config
from setseq.train.outputs import check_out_folder, run_fps, tensorboard_writer, write_outputs
from setseq.train.prior import PriorData, base_model_prior
from setseq.train.setup import (
    RunFolder,
    attach_lora,
    check_token_training,
    describe_placement,
    describe_training,
    load_model,
    lora_spec,
    open_run,
    resumed_config,
    self_conditioning_p,
    split_across,
    token_embeddings,
)
from setseq.train.stage1_set import train_stage1
from setseq.train.stage2_sequence import train_stage2

MakeBatch = Callable[[int, int, torch.Generator], Batch]  # (step, micro-batch, its generator) -> the batch


class Recipe:
    """One run of Set-and-Sequence. Attributes once `setup` has run:

    run (the folder and its processes), cfg (the one config training reads: the run's, with the method's
    changes and the processes' micro-batches), backbone, shape (frames, height, width), data / concepts /
    stitched (the encoded inputs), cache_key, self_conditioning, attention (the attention loss), spec (the LoRA
    layers), engine (how FSDP2 holds the DiT), prior, embeddings, texts, writer, log_file."""

    cfg: RunConfig
    backbone: Backbone
    run: RunFolder | None = None
    data: EncodedConcept
    concepts: list[EncodedConcept]
    stitched: list[EncodedConcept]
    prior: PriorData | None = None
    embeddings: TokenEmbeddings | None = None
    attention: AttentionLoss | None = None  # Break-A-Scene's attention loss, when a stage has one
    texts: list[tuple[str, str]]  # (T_static, T_motion) of each concept
    self_conditioning: float = 0.0
    procs: Processes = SINGLE
    engine: Engine = Engine()  # one process, no FSDP2 (what `parallelize` returns otherwise)
    writer: Any = None  # TensorBoard SummaryWriter or None
    log_file: Path | None = None

    def __init__(
        self,
        cfg: RunConfig,
        out: str | Path,
        *,
        init_lora: str | Path | None = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
    ) -> None:
        """A new run of `cfg` in the folder `out` (refused in `setup` if it holds a run). `init_lora`: a
        setseq.safetensors to start from."""
        self.given, self.out, self.init_lora = cfg, Path(out), init_lora
        self.progress, self.log, self.resuming = progress, log, False
        self.t0 = time.perf_counter()

    @classmethod
    def from_run(
        cls,
        out: str | Path,
        cfg: RunConfig | None = None,
        *,
        progress: bool = True,
        log: Callable[[str], None] = print,
    ) -> Recipe:
        """Resume the run in `out` from its latest checkpoint: its own config, or `cfg` (what
        `setup.resumed_config` gives for a moved input or a safe override)."""
        recipe = cls(cfg if cfg is not None else resumed_config(Path(out)), out, progress=progress, log=log)
        recipe.resuming = True
        return recipe

    @classmethod
    def for_steps(cls, backbone: Backbone, cfg: RunConfig) -> Recipe:
        """A recipe around a loaded backbone (LoRA injected) with no run folder: for `step` alone (the speed
        bench, `setseq.tools.speed.time_steps`)."""
        recipe = cls(cfg, Path("."), progress=False, log=lambda s: None)
        recipe.cfg, recipe.backbone = cfg, backbone
        return recipe

    # -- setup -------------------------------------------------------------------------------------------------
    def setup(self) -> Recipe:
        """Build every component once: the folder and processes, the model, the inputs, then the layers, the
        engine, the memory check, the prior and the token embeddings. Returns the recipe."""
        self._inputs()
        self._layers()
        return self

    def _inputs(self) -> None:
        """The folder (new or resumed), the processes, the model, the resolved config, the encoded inputs."""
        # (a folder that holds a run: `open_run` says so, naming --resume)
        if not self.resuming and not (self.out / "config.yaml").exists():
            check_out_folder(self.out)
        self.run = run = open_run(self.given, self.out, self.resuming, self.log)
        self.procs, self.log = run.procs, run.log
        cache = run.path / "cache"
        # --mask auto: segmented (and cached) by process 0, the segmenter freed before the DiT loads
        with run.removed_on_failure(), self.procs.main_first():
            masked = with_auto_mask(run.cfg, cache, self.log)
        self.backbone = bb = load_model(run.cfg, self.procs.device, self.procs)
        describe_placement(run.cfg, bb, self.procs, self.log)
        self.shape = check_shapes(run.cfg, bb)
        # The config training reads: the run's (config.yaml keeps that), with what its method changes and the
        # processes' share of each batch.
        self.cfg = split_across(effective_config(masked), self.procs.world, self.log)
        self.self_conditioning = self_conditioning_p(self.cfg, bb)
        check_token_training(self.cfg, bb, self.procs)
        with run.removed_on_failure():
            self.attention = AttentionLoss.for_run(self.cfg, bb)
        with run.removed_on_failure(), self.procs.main_first():  # process 0 encodes; the others read it
            self.data, self.concepts, self.stitched, self.cache_key = encode_all(
                self.cfg, bb, cache, self.log
            )
        # (before config.yaml is written again; a run started before 2026-12-02 recorded the legacy form)
        run.check_cache_key(self.cache_key, lambda: legacy_run_key(bb.info, run_fields(self.cfg, bb)))
        run.write_config(run.cfg)
        self.texts = [(c.t_static, c.t_motion) for _, c in self.cfg.concepts()]

    def _layers(self) -> None:
        """The Set-and-Sequence layers (from a checkpoint or --init-lora) handed to torch's engine, the memory
        check, the base model's prior videos, the token embeddings, the logs."""
        cfg, bb, run = self.cfg, self.backbone, self.run
        assert run is not None  # (set by `_inputs`)
        self.spec = lora_spec(cfg, bb)
        with run.removed_on_failure():  # a wrong --init-lora leaves no half-made run behind
            attach_lora(cfg, bb, self.spec, run.checkpoint, self.init_lora, self.log)
        self.log(token_summary(cfg, bb.transformer, self.data))
        self.engine = parallelize(bb.transformer, self.procs, cfg.model)
        if cfg.train.memory_check:
            with run.removed_on_failure():  # refused: the same command, with the flag, runs again
                check_memory(cfg, bb, self.spec, self.data, self.self_conditioning > 0, self.log, self.engine)
        if self.engine.sharded:
            self.log(describe_engine(bb.transformer, self.procs, cfg.model))
        # The base model's own videos: generated through the engine with the layers switched off.
        self.prior = base_model_prior(
            cfg, bb, self.shape, run.path / "cache", self.log, self.progress, self.procs, self.engine.sharded
        )
        self.embeddings = token_embeddings(cfg, bb, run.checkpoint, self.log)
        n_prior = None if self.prior is None else len(self.prior)
        describe_training(cfg, self.concepts, self.stitched, self.self_conditioning, n_prior, self.log)
        self.writer = tensorboard_writer(run.path, cfg.train.tensorboard and self.procs.is_main)
        self.log_file = run.path / "logs" / "loss.jsonl" if self.procs.is_main else None
        (run.path / "logs").mkdir(parents=True, exist_ok=True)

    # -- train -------------------------------------------------------------------------------------------------
    def train(self) -> Path:
        """Stage 1 (identity on the unordered frames), stage 2 (motion residual on the ordered clip), then the
        outputs. Returns the run folder."""
        assert self.run is not None, "call setup() first"
        resume = self.run.checkpoint
        try:
            if resume is None or resume.stage == 1:
                train_stage1(self, resume)
                resume = None
            train_stage2(self, resume)
        finally:
            if self.writer is not None:
                self.writer.close()
        written = write_outputs(
            self.cfg, self.backbone, self.run.path, self.procs, self.spec, self.shape, self.embeddings
        )
        if written:
            self.log(f"wrote {written[0]} and {', '.join(p.name for p in written[1:])}")
        self.log(run_summary(self.run.path, time.perf_counter() - self.t0, written, self.run.resumed))
        return self.run.path

    def batch(
        self,
        sc: StageConfig,
        samples: list[Sample],
        texts: list[str] | None,
        gen: torch.Generator,
        subject_aware: bool = True,
    ) -> Batch:
        """A micro-batch of either stage: a stitched concept pair instead, at `multi.stitch_rate` (multi-concept
        runs), else `samples` (`loop.sample_batch`), followed by as many prior samples (prior preservation)."""
        clip = samples[0][1] is None
        if self.stitched and float(torch.rand((), generator=gen)) < self.cfg.multi.stitch_rate:
            return stitched_batch(self.stitched, len(samples), gen, clip=clip)
        batch = sample_batch(samples, texts, sc, gen, subject_aware)
        if self.prior is not None:  # prior preservation: as many base-model samples, with their class prompts
            n = len(samples)
            lat, prompt = self.prior.clips(n, gen) if clip else self.prior.frames(n, gen)
            batch = with_prior(batch, lat, prompt, self.cfg.regularizers.prior_weight)
        return batch

    def run_stage(
        self, stage: int, params: list[torch.nn.Parameter], make_batch: MakeBatch, resume: C.Checkpoint | None
    ) -> list[float]:
        """The optimizer loop of one stage, from `resume` when it is of this stage. Returns its losses."""
        sc, tc = (self.cfg.stage1 if stage == 1 else self.cfg.stage2), self.cfg.train
        groups: list[dict[str, Any]] = [{"params": params}] if params else []
        if self.embeddings is not None:  # the tokens' embedding offsets, at their own lr, no weight decay
            groups.append({"params": [self.embeddings.delta], "lr": self.embeddings.lr, "weight_decay": 0.0})
            self.embeddings.train_rows(self.embeddings.stage_rows[stage])
            params = [*params, self.embeddings.delta]
        opt = make_optimizer(groups, sc)
        start = 0
        if resume is not None and resume.stage == stage:
            C.restore_optimizer(opt, resume.optimizer(), resume.state["param_groups"])
            start = resume.step
        if self.log_file is not None:
            trim_log(self.log_file, stage, start)
        losses: list[float] = []
        if start >= sc.steps:
            return losses
        report = Progress(self.cfg, stage, start, self.progress and self.procs.is_main, self.log)
        name = "set" if stage == 1 else "sequence"
        bar = tqdm(total=sc.steps, initial=start, desc=f"stage {stage} ({name})", disable=not report.bar,
                   dynamic_ncols=True, unit="step")  # fmt: skip
        model, t0 = self.backbone.transformer, time.perf_counter()
        model.train()
        try:
            for step in range(start, sc.steps):
                loss, gnorm = self.step(stage, step, opt, params, make_batch)
                losses.append(loss)
                done = step + 1
                bar.update(1)
                report.step(bar, done, loss, opt.param_groups[0]["lr"])
                if done % tc.log_every == 0 or done == sc.steps:  # (the last: the summary's final loss)
                    self._log_step(stage, done, loss, gnorm, time.perf_counter() - t0)
                if done % tc.checkpoint_every == 0 or done == sc.steps:
                    self._checkpoint(stage, done, opt)
                if tc.sample_every and done % tc.sample_every == 0:
                    model.eval()
                    self._sample(stage, done)
                    model.train()
        finally:
            bar.close()
        model.eval()
        return losses

    def step(
        self,
        stage: int,
        step: int,
        opt: torch.optim.Optimizer,
        params: list[torch.nn.Parameter],
        make_batch: MakeBatch,
    ) -> tuple[float, float]:
        """One optimizer step: this process's micro-batches forward and backward, clipping, the update, and the
        checks that stop a run whose loss, gradients or weights are no longer finite. Returns (the step's loss
        summed over the processes, the gradient norm)."""
        sc = self.cfg.stage1 if stage == 1 else self.cfg.stage2
        opt.zero_grad(set_to_none=True)
        total = self._accumulate(stage, sc, step, make_batch)
        gnorm = torch.nn.utils.clip_grad_norm_(params, sc.grad_clip)
        if not torch.isfinite(gnorm):  # before the update: the weights are still those of the last step
            raise self._blow_up(stage, step, f"the gradient norm became {float(gnorm)}")
        opt.step()
        # A huge step can overflow the weights while loss and gradients were finite.
        finite = bool(torch.stack([torch.isfinite(local(p)).all() for p in params]).all()) if params else True
        if not self.procs.all_true(finite):
            raise self._blow_up(stage, step, "the weights became non-finite")
        return total, float(gnorm)

    def _accumulate(self, stage: int, sc: StageConfig, step: int, make_batch: MakeBatch) -> float:
        """Forward and backward of this process's micro-batches of `step`; returns the step's loss, summed over
        the processes (their gradients are summed by the engine, `distributed.parallelize`). A non-finite loss
        on any process stops every process, with the step named."""
        model, procs, bb = self.backbone.transformer, self.procs, self.backbone
        last_mine = max(m for m in range(sc.accumulation) if procs.mine(m))
        seed = self.cfg.train.seed
        expert = step_expert(bb, seed, stage, step) if self.cfg.model.step_routing else None
        encode = bb.encode_prompt if self.embeddings is not None else None  # token embeddings: with gradients
        total, bad = 0.0, None
        for micro in range(sc.accumulation):
            if not procs.mine(micro):  # another process's share of the step
                continue
            gen = step_generator(seed, stage, step, micro)
            L.draw_masks(model, gen)
            batch = make_batch(step, micro, gen)
            token_p = self.cfg.regularizers.token_mask
            loss = denoising_loss(
                bb, batch, gen, token_p, self.self_conditioning, encode, expert, self.attention
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
            raise self._blow_up(stage, step, f"the loss became {bad if bad is not None else total}")
        return total

    def _blow_up(self, stage: int, step: int, what: str) -> SetseqError:
        """The message for a non-finite loss, gradient or weight: it names the newest checkpoint whose weights
        are all finite (checkpoints of non-finite weights are never written, see `checkpoint.save_checkpoint`)."""
        run_dir = self.out
        last = C.latest_checkpoint(run_dir, finite=True)
        keep = f"the last good checkpoint is {last.path}" if last else "no checkpoint was written yet"
        return SetseqError(
            f"{what} at stage {stage} step {step + 1}; training stopped and {keep}",
            C.lower_lr_advice(run_dir, stage, (self.cfg.stage1 if stage == 1 else self.cfg.stage2).lr),
        )

    def _log_step(self, stage: int, done: int, loss: float, gnorm: float, elapsed: float) -> None:
        """The step's loss and gradient norm to TensorBoard and `logs/loss.jsonl` (process 0)."""
        if self.writer is not None:
            self.writer.add_scalar(f"stage{stage}/loss", loss, done)
            self.writer.add_scalar(f"stage{stage}/grad_norm", gnorm, done)
        if self.log_file is None:
            return
        rec = {"stage": stage, "step": done, "loss": loss, "grad_norm": gnorm, "elapsed_s": round(elapsed, 3)}
        try:
            with open(self.log_file, "a") as f:
                f.write(json.dumps(rec) + "\n")
        except OSError as exc:
            raise disk_error(self.log_file, exc) from None

    def _checkpoint(self, stage: int, done: int, opt: torch.optim.Optimizer) -> None:
        """A checkpoint after step `done`. Every process takes part in gathering sharded state (whole
        tensors); process 0 writes it."""
        emb = self.embeddings
        lora = trainable_state(self.backbone.transformer, stage)
        if emb is not None:
            lora[DELTA_KEY] = emb.delta.detach()
        opt_state = C.optimizer_tensors(opt)
        if self.procs.is_main:
            state = {"config": self.cfg.to_dict(), "processes": self.procs.world, "cache_key": self.cache_key}
            C.save_checkpoint(
                self.out, stage, done, lora, opt_state, state, keep=self.cfg.train.keep_checkpoints
            )

    def _sample(self, stage: int, step: int) -> None:
        """A video of the stage's prompt during training, written to `samples/` by process 0. A sharded model
        generates on every process (each runs its share of every block); otherwise process 0 alone does."""
        if not (self.procs.is_main or self.engine.sharded):
            return
        cfg, (frames, h, w) = self.cfg, self.shape
        prompt = cfg.concept.t_static if stage == 1 else cfg.concept.t_motion
        with torch.no_grad():
            video = self.backbone.generate(
                prompt,
                frames=frames,
                height=h,
                width=w,
                steps=cfg.train.sample_steps,
                guidance_scale=cfg.train.guidance_scale,
                seed=cfg.train.seed,
            )
        if self.procs.is_main:
            fps = run_fps(cfg) or default_fps(self.backbone.info.name)
            write_video(self.out / "samples" / f"stage{stage}-{step:06d}.mp4", from_tensor(video), fps=fps)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # release sampling memory before training resumes
