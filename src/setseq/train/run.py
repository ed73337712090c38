"""`setseq train`: one video in, a personalized model out. Set up, stage 1, stage 2, write: top to bottom.

Run folder:
    config.yaml                 the resolved config (what --resume reads back)
    cache/<key>.safetensors     frame latents, clip latents, prompt embeddings
    checkpoints/stage{S}-{step}/  self-describing checkpoints
    logs/                       TensorBoard events; loss.jsonl
    samples/                    optional sample videos during training
    setseq.safetensors          identity + motion, kept apart (setseq's own file)
    lora_diffusers.safetensors  identity + motion merged at scale 1: loads with WanPipeline.load_lora_weights
    lora_comfyui.safetensors    the same in ComfyUI's key layout

Each step has its own module: the folder, processes, model and layers (`setup`), the inputs (`encode`), the
memory plan (`memory_plan`), the prior (`prior`), the stages (`stage1_set`, `stage2_sequence` over `loop`),
and the files written (`outputs`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from setseq.config import RunConfig
from setseq.data.segment import with_auto_mask
from setseq.train.distributed import describe_engine, parallelize
from setseq.train.encode import check_shapes, encode_all, legacy_run_key
from setseq.train.loop import StageContext, run_summary
from setseq.train.memory_plan import check_memory, token_summary
from setseq.train.methods import effective_config
from setseq.train.outputs import check_out_folder, sampler, tensorboard_writer, write_outputs
from setseq.train.prior import base_model_prior
from setseq.train.setup import (
    attach_lora,
    check_token_training,
    describe_placement,
    describe_training,
    load_model,
    lora_spec,
    open_run,
    self_conditioning_p,
    split_across,
    token_embeddings,
)
from setseq.train.stage1_set import train_stage1
from setseq.train.stage2_sequence import train_stage2


def train(
    cfg: RunConfig | None,
    out: str | Path,
    *,
    resume: bool = False,
    init_lora: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Personalize the model to the video: stage 1 then stage 2. Returns the run folder. With `resume`, `cfg`
    is None (the run's saved config) or `setup.resumed_config`'s."""
    # 1. Set up: the folder (new or resumed), the processes, the model, the inputs (cached), the prior.
    t0 = time.perf_counter()
    if not resume and not (Path(out) / "config.yaml").exists():  # (a folder with a run: open_run says so)
        check_out_folder(Path(out))
    run = open_run(cfg, Path(out), resume, log)
    cfg, procs, log, ck, cache = run.cfg, run.procs, run.log, run.checkpoint, run.path / "cache"
    with run.removed_on_failure(), procs.main_first():  # --mask auto: segmented (cached) and freed first
        masked = with_auto_mask(cfg, cache, log)
    bb = load_model(cfg, procs.device, procs)
    describe_placement(cfg, bb, procs, log)
    shape = check_shapes(cfg, bb)
    user_cfg, cfg = cfg, split_across(effective_config(masked), procs.world, log)  # a baseline changes stages
    sc_p = self_conditioning_p(cfg, bb)
    check_token_training(cfg, bb, procs)
    with run.removed_on_failure(), procs.main_first():  # process 0 encodes; the others read its cache
        data, concepts, stitched, key = encode_all(cfg, bb, cache, log)
    run.check_cache_key(key, lambda: legacy_run_key(cfg, bb))  # (before a resumed config is written again)
    run.write_config(user_cfg)
    # Where FSDP2 holds the DiT (sharded, or offloaded to the host), its videos are generated through it.
    sharded = (cfg.model.fsdp and procs.world > 1) or cfg.model.fsdp_offload
    prior = None if sharded else base_model_prior(cfg, bb, shape, cache, log, progress, procs)

    # 2. The Set-and-Sequence layers (from a checkpoint or --init-lora), handed to torch's engine.
    spec = lora_spec(cfg, bb)
    with run.removed_on_failure():  # a wrong --init-lora leaves no half-made run behind
        attach_lora(cfg, bb, spec, ck, init_lora, log)
    log(token_summary(cfg, bb.transformer, data))
    parallelize(bb.transformer, procs, cfg.model)  # FSDP2 replicate, or fully_shard with model.fsdp
    if cfg.train.memory_check:
        with run.removed_on_failure():  # refused: the same command, with the flag, runs again
            check_memory(cfg, bb, spec, data, sc_p > 0, log)
    if sharded:
        log(describe_engine(bb.transformer, procs, cfg.model))
        prior = base_model_prior(cfg, bb, shape, cache, log, progress, procs)
    emb = token_embeddings(cfg, bb, ck, log)
    describe_training(cfg, concepts, stitched, sc_p, None if prior is None else len(prior), log)

    writer = tensorboard_writer(run.path, cfg.train.tensorboard and procs.is_main)
    ctx = StageContext(
        cfg,
        bb,
        data,
        run.path,
        writer,
        run.path / "logs" / "loss.jsonl" if procs.is_main else None,
        progress and procs.is_main,
        {"cache_key": key},
        prior=prior,
        concepts=concepts,
        stitched=stitched,
        self_conditioning=sc_p,
        embeddings=emb,
        texts=[(c.t_static, c.t_motion) for _, c in cfg.concepts()],
        procs=procs,
        log=log,
    )
    (run.path / "logs").mkdir(parents=True, exist_ok=True)
    if procs.is_main or sharded:  # process 0 writes samples; a sharded model generates on every process
        ctx.on_sample = sampler(ctx, *shape, write=procs.is_main)
    try:
        # 3. Stage 1: identity on the unordered frames. 4. Stage 2: motion residual on the ordered clip.
        if ck is None or ck.stage == 1:
            train_stage1(ctx, ck)
            ck = None
        train_stage2(ctx, ck)
    finally:
        if writer is not None:
            writer.close()

    # 5. Outputs: setseq's own file, then the merged LoRA in diffusers' and ComfyUI's layouts.
    written = write_outputs(ctx, spec, shape, emb)
    if written:
        log(f"wrote {written[0]} and {', '.join(p.name for p in written[1:])}")
    log(run_summary(run.path, time.perf_counter() - t0, written, run.resumed))
    return run.path
