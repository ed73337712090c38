"""Setting a run up: its folder (new or resumed), its processes, the model, the settings resolved against
the backbone, and the Set-and-Sequence layers with their starting weights. `setseq.train.run` calls these in
order."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shlex
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from setseq import lora as L
from setseq import offload
from setseq.backbones.base import Backbone, dit_on_meta
from setseq.backbones.registry import load_backbone
from setseq.backbones.toy.files import SHIPPED_TOY_MODELS
from setseq.config import METHODS, ONE_STAGE, RunConfig
from setseq.config_load import resolve_config
from setseq.data.cache import EncodedConcept, file_sha256
from setseq.data.video import probe_video
from setseq.errors import SetseqError
from setseq.export import check_compatible, load_setseq
from setseq.infer.generate import names_folder
from setseq.io import remove_stale_temps, write_text
from setseq.memory import GiB
from setseq.runtime import DTYPES, resolve_device
from setseq.train import checkpoint as C
from setseq.train.distributed import SINGLE, Processes, check_split, init_processes, launcher_asks_fsdp
from setseq.train.embeddings import DELTA_KEY, TokenEmbeddings, token_id
from setseq.train.methods import check_mask


def _silent(_message: str) -> None:
    """The log of processes other than process 0."""


@dataclass
class RunFolder:
    """A run's folder and processes. Under a launcher (several processes) process 0 alone writes and logs;
    the others wait for it where they read what it wrote."""

    path: Path
    cfg: RunConfig  # as the user gave it (or as saved, when resumed)
    procs: Processes
    log: Callable[[str], None]
    resumed: bool
    checkpoint: C.Checkpoint | None  # the one to resume from
    new: bool  # made by this start: removed again if the start fails
    changed: bool = False  # resumed with a moved input or an override: config.yaml is written again
    moved_model: bool = False  # resumed with the model folder pointed to again (`--resume --model`)

    @contextlib.contextmanager
    def removed_on_failure(self) -> Iterator[None]:
        """A start that fails here leaves no folder behind, so the same command (mended) runs again."""
        try:
            yield
        except BaseException:
            if self.new and self.procs.is_main:
                shutil.rmtree(self.path, ignore_errors=True)
            raise

    def write_config(self, cfg: RunConfig) -> None:
        """`config.yaml` (what --resume reads back), written once the inputs are known good."""
        if (not self.resumed or self.changed) and self.procs.is_main:
            write_text(self.path / "config.yaml", cfg.to_yaml())

    def check_cache_key(self, key: str, legacy: Callable[[], str | None] = lambda: None) -> None:
        """A resumed run must see the same inputs as when it started. `legacy`: the key as computed before
        2026-12-02 (`setseq.legacy.legacy_run_key`), which a run started then recorded. A model folder pointed to
        again (`--resume --model`) whose weight files only carry other dates (copied) passes: the same
        architecture (its fingerprint) and everything else alike."""
        was = None if self.checkpoint is None else self.checkpoint.state.get("cache_key")
        if was in (None, key):
            return
        if was == legacy():
            self.log(
                "note: the checkpoint's cache key is in the form from before 2026-12-02 (the model folder's path "
                "and the text encoder's load details counted); same inputs, resuming"
            )
        elif self.moved_model and _same_but_weight_dates(self.path / "cache", was, key):
            self.log(
                "note: the model folder's weight files have other dates than when the run started (copied?); "
                "the same architecture and inputs, resuming"
            )
        else:
            raise SetseqError(
                f"the video, model or prompts changed since {self.path} started (cache key {key} vs {was})",
                "start a new run with --init-lora instead of --resume",
            )


def _same_but_weight_dates(cache: Path, was: str, key: str) -> bool:
    """Whether the cache files of keys `was` and `key` were made for the same inputs but for the model
    folder's weight stamp (its files' names, sizes and dates: `cache.weights_stamp`). One concept only."""
    fields = [cache_fields(cache, k) for k in (was, key)]
    if not all(fields):
        return False
    for f in fields:
        f.pop("weights", None)  # type: ignore[union-attr]
    return fields[0] == fields[1]


def cache_fields(cache: Path, key: str) -> dict[str, Any] | None:
    """The key fields a cache file of `cache` was written for (`encode.concept_key`), None if unreadable."""
    try:
        with safe_open(str(cache / f"{key}.safetensors"), framework="pt") as f:
            fields = json.loads((f.metadata() or {})["setseq_cache_key"])
    except (SafetensorError, OSError, ValueError, KeyError, TypeError):
        return None
    return fields if isinstance(fields, dict) else None


def _absolute(path: str) -> str:
    """`path` made absolute against the current directory (`~` expanded), so that the run folder works from
    any directory."""
    return str(Path(path).expanduser().absolute())


def _local_model(path: str) -> bool:
    """Whether `model.path` names a local folder (not a shipped toy model's name, not a hub id)."""
    return path not in SHIPPED_TOY_MODELS and Path(path).expanduser().exists()


def resolve_paths(cfg: RunConfig) -> RunConfig:
    """`cfg` with its input files (videos, subject mask) and a local model folder stored absolute; a video or
    mask that does not exist is refused in one line."""
    mask = None if cfg.data.mask == "auto" else cfg.data.mask  # (auto: made by `setseq.data.segment`)
    for what, flag, path in (("video", "--video", cfg.data.video), ("subject mask", "--mask", mask)):
        if path and not Path(path).expanduser().exists():
            raise SetseqError(f"{what} {path} does not exist", f"check the {flag} path")
    for i, c in enumerate(cfg.multi.concepts):
        if not Path(c["video"]).expanduser().is_file():
            raise SetseqError(
                f"video {c['video']} of multi.concepts[{i}] does not exist", "check its path in the config"
            )
    data = dataclasses.replace(
        cfg.data,
        video=cfg.data.video and _absolute(cfg.data.video),
        mask=mask and _absolute(mask) or cfg.data.mask,
    )
    model = cfg.model
    if _local_model(model.path):
        model = dataclasses.replace(model, path=_absolute(model.path))
    multi = dataclasses.replace(
        cfg.multi, concepts=[{**c, "video": _absolute(c["video"])} for c in cfg.multi.concepts]
    )
    return dataclasses.replace(cfg, data=data, model=model, multi=multi)


def warn_rate(cfg: RunConfig, log: Callable[[str], None]) -> None:
    """Warn of a `data.fps` above a video's own rate: its frames are repeated, and stage 2 learns the motion
    slowed down. A warning, not a refusal: a recipe's rate (Wan's configs: 16) may meet a slower video."""
    fps = cfg.data.fps
    for video, _ in cfg.concepts() if fps else []:
        own = probe_video(video).fps  # type: ignore[arg-type]
        if own > 0 and fps > own * 1.001:
            log(
                f"warning: data.fps={fps:g} is above the {own:g} fps of video {video}: each frame is repeated "
                f"about {fps / own:.1f} times and the motion learned slowed down; --fps {own:g} keeps its own rate"
            )


def resumed_config(
    out: Path,
    video: str | None = None,
    model: str | None = None,
    mask: str | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """The saved config of the run in `out`, with a moved video, model folder or mask pointed to again and the
    overrides `--resume` takes applied (the caller has checked their keys); its paths made absolute. A run
    saved before paths were stored absolute resolves its relative paths against the current directory; one
    that is not found there is refused in one line naming the fix."""
    if not (out / "config.yaml").is_file():
        raise SetseqError(
            f"{out} is not a setseq run folder (no config.yaml)",
            "pass the --out folder of an earlier run to --resume",
        )
    flags: dict[str, Any] = {}
    if video is not None or mask is not None:
        flags["data"] = {k: v for k, v in (("video", video), ("mask", mask)) if v is not None}
    if model is not None:
        flags["model"] = {"path": model}
    cfg = resolve_config(out / "config.yaml", flags, overrides)
    for what, flag, path, given in (
        ("video", "--video", cfg.data.video, video),
        ("subject mask", "--mask", None if cfg.data.mask == "auto" else cfg.data.mask, mask),
        ("model folder", "--model", cfg.model.path if names_folder(cfg.model.path) else None, model),
    ):
        if not path or Path(path).expanduser().exists():
            continue
        if given is not None:
            raise SetseqError(f"{what} {path} does not exist", f"check the {flag} path")
        relative = not Path(path).expanduser().is_absolute()
        raise SetseqError(
            f"the {what} {path} of {out} is not here"
            + (" (the run stored it relative to the directory it was started in)" if relative else ""),
            f"point to it: `setseq train --resume {shlex.quote(str(out))} {flag} PATH`"
            + (", or resume from the directory the run was started in" if relative else ""),
        )
    if video is not None:
        _check_same_video(out, video)
    return resolve_paths(cfg)


def _check_same_video(out: Path, video: str) -> None:
    """`--resume --video`: refuse, before anything loads, a video whose content is not the run's (the content
    hash its latest checkpoint's cache file recorded; nothing to compare with before the first checkpoint)."""
    ck = C.latest_checkpoint(out)
    fields = cache_fields(out / "cache", str(ck.state.get("cache_key"))) if ck is not None else None
    if not fields or "video_sha256" not in fields or not Path(video).expanduser().is_file():
        return
    if file_sha256(Path(video).expanduser()) != fields["video_sha256"]:
        raise SetseqError(
            f"video {video} is not the video {out} was trained on (its content differs)",
            "pass that video (moved or copied), or train a new run on this one with another --out",
        )


def open_run(cfg: RunConfig | None, out: Path, resume: bool, log: Callable[[str], None]) -> RunFolder:
    """The run folder: new (refused if it holds a run), or resumed from its own config (`cfg`: that config as
    `resumed_config` gave it, with a moved input pointed to again or a safe override; None: as saved) and
    latest checkpoint; the processes started; leftovers of a killed run removed. Paths are stored absolute."""
    changed = moved_model = False
    if resume:
        cfg = cfg if cfg is not None else resumed_config(out)
        saved = resolve_config(out / "config.yaml")
        changed = cfg != saved  # (paths made absolute count)
        moved_model = cfg.model.path not in (saved.model.path, _absolute(saved.model.path))
    else:
        assert cfg is not None, "a new run needs its config"
        cfg = resolve_paths(cfg)
        warn_rate(cfg, log)
    check_mask(cfg)  # a subject mask missing, or unusable, is refused before anything is loaded or written
    procs = init_processes(cfg.model.device)
    if not procs.is_main:
        log = _silent
    if procs.world > 1 and not cfg.model.fsdp and launcher_asks_fsdp():
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, fsdp=True))
        log("fsdp: on (the accelerate config has distributed_type FSDP, fsdp_version 2)")
    ck, new = None, False
    if resume:
        if procs.is_main:
            for folder in (out, *(out / f for f in ("cache", "checkpoints", "logs", "samples"))):
                remove_stale_temps(folder)  # temporary files of a killed run (never taken for outputs)
        ck = C.latest_checkpoint(out)
        if ck is None:  # stopped before its first checkpoint: start over, exactly as configured
            log(f"resuming {out}: no checkpoint yet, starting from step 0 with its saved config")
        else:
            log(f"resuming {out} from {ck.path.name} (stage {ck.stage}, step {ck.step})")
            was = int(ck.state.get("processes", 1))
            if was != procs.world:  # whole tensors on file: any count that splits the batch resumes it
                log(
                    f"note: the checkpoint was written by {was} process(es), resumed by {procs.world}: the same "
                    "global batch, so the same training up to float summation order"
                )
    else:
        if (out / "config.yaml").exists() or (out / "checkpoints").exists():
            raise SetseqError(
                f"{out} already holds a run",
                f"continue it with `setseq train --resume {shlex.quote(str(out))}`, or choose another --out",
            )
        new = not out.exists()
        if procs.is_main:
            remove_stale_temps(out / "cache")  # a killed first start's leftovers
            remove_stale_temps(out, stems=("config",))
    procs.barrier()
    return RunFolder(out, cfg, procs, log, resume, ck, new, changed, moved_model)


def load_model(cfg: RunConfig, device: torch.device | None = None, procs: Processes = SINGLE) -> Backbone:
    """The backbone of `cfg.model`, on `device` (default: `model.device`); with `model.block_swap=N` the last N
    blocks' linear weights stay in host memory (setseq.offload); with `model.fsdp` and several processes, the
    DiT stays in host memory (everything else on `device`) until FSDP2 moves each process's shard of it
    (`distributed.parallelize`), so the whole DiT is never on a card, and only process 0 reads its weights
    (the others build it on the meta device and receive their shards); with `model.fsdp_offload` the DiT
    stays in host memory, FSDP2 copying each block's weights to the device while it runs."""
    m = cfg.model
    if m.fsdp_offload and procs.world > 1:
        raise SetseqError(
            f"model.fsdp_offload=true is built for one process, not {procs.world}",
            "with several processes use model.fsdp=true alone (each holds 1/P of the weights), or launch one",
        )
    if (m.fsdp and procs.world > 1) or m.fsdp_offload:
        if m.block_swap:
            raise SetseqError(
                "model.fsdp=true cannot be combined with model.block_swap",
                "use model.fsdp=true alone (it shards the weights across the processes), or drop it",
            )
        with dit_on_meta(m.fsdp and not procs.is_main):  # the others' weights come from process 0's
            bb = load_backbone(m.backbone, m.path, offload.HOST, DTYPES[m.dtype])
        offload.place_around_dit(bb, device or resolve_device(m.device))
    else:
        bb = offload.load_backbone_swapped(
            cfg.model.backbone,
            cfg.model.path,
            device or resolve_device(cfg.model.device),
            DTYPES[cfg.model.dtype],
            cfg.model.block_swap,
        )
    if bb.info.image == "required":
        check_image_to_video(cfg, bb)
    return bb


def check_image_to_video(cfg: RunConfig, bb: Backbone) -> None:
    """Refuse what training on an image-to-video DiT does not build: its stage-2 clips are conditioned on
    their own first frame, which the base model's prior videos (sampled from text) and background-swapped
    clips do not carry."""
    name = bb.info.model_id
    if cfg.regularizers.prior_videos:
        raise SetseqError(
            f"prior preservation samples class videos from text, which the image-to-video model {name} cannot",
            "set regularizers.prior_videos=0, or train on the text-to-video model of the same size",
        )
    if cfg.stage2.background_swap > 0:
        raise SetseqError(
            f"stage2.background_swap is not built for an image-to-video model ({name}): the swapped clips have "
            "no first-frame condition",
            "set stage2.background_swap=0 (stage1.background_swap works: stage 1 drops the condition)",
        )


def describe_placement(cfg: RunConfig, bb: Backbone, procs: Processes, log: Callable[[str], None]) -> None:
    """Where the base weights live: FSDP2 with one process, or block swap."""
    if cfg.model.fsdp and procs.world == 1:
        log("note: model.fsdp=true with one process shards nothing (launch several to shard the base model)")
    if cfg.model.block_swap:
        host = [m.weight for m in bb.transformer.modules() if isinstance(m, offload.StreamedLinear)]
        log(
            f"block swap: {len(host)} linear weights of the last {cfg.model.block_swap} blocks "
            f"({sum(w.numel() * w.element_size() for w in host) / GiB:.2f} GiB) stay in host memory, "
            f"copied to {bb.device} layer by layer"
        )
    if bb.expert_sigmas:
        shares = ", ".join(f"{name} {bb.sigma_share(lo, hi):.2f}" for name, lo, hi in bb.expert_sigmas)
        routing = "step" if cfg.model.step_routing else "sample"
        how = "one per step for every sample" if routing == "step" else "each sample by its timestep"
        given = cfg.model.expert_routing
        log(
            f"experts: {how} (model.expert_routing={given}{f' -> {routing}' if given != routing else ''}); "
            f"their shares of the timesteps: {shares}"
        )


def split_across(cfg: RunConfig, world: int, log: Callable[[str], None]) -> RunConfig:
    """`cfg` with each stage's micro_batch set so that `world` processes share its micro-batches equally."""
    if world == 1:
        return cfg
    stages = {}
    for i, sc in ((1, cfg.stage1), (2, cfg.stage2)):
        micro = check_split(i, sc.batch_size, sc.micro_batch, world)
        stages[f"stage{i}"] = dataclasses.replace(sc, micro_batch=micro)
        log(
            f"data parallel: {world} processes; stage {i}: {sc.batch_size // micro} micro-batch(es) of {micro} "
            f"per step, {sc.batch_size // micro // world} per process"
        )
    return dataclasses.replace(cfg, **stages)


def self_conditioning_p(cfg: RunConfig, bb: Backbone) -> float:
    """The self-conditioning probability for this run: the configured one, or by default 0.9 on a backbone
    pretrained with a self-conditioning input and 0 on one without. Asking for it on a backbone without
    one is an error."""
    p = cfg.regularizers.self_conditioning
    supported = bool(bb.info.supports_self_conditioning)
    if p is None:
        return 0.9 if supported else 0.0
    if p > 0 and not supported:
        raise SetseqError(
            f"regularizers.self_conditioning={p} but the {bb.info.name} backbone has no self-conditioning input",
            "set regularizers.self_conditioning=0 (only a model pretrained with one, like the toy model, has it)",
        )
    return float(p)


def check_token_training(cfg: RunConfig, bb: Backbone, procs: Processes) -> None:
    """Token embeddings train in one process, on tokens the text encoder can learn: refused otherwise,
    before anything is written."""
    if not cfg.concept.train_embedding:
        return
    if procs.world > 1:  # its offsets live outside the DiT's engine
        raise SetseqError(
            f"token embeddings (concept.train_embedding or method={cfg.method}) train in one process only, "
            f"not {procs.world}",
            "launch a single process, or set concept.train_embedding=false",
        )
    for _, c in cfg.concepts():
        token_id(bb, c.token), token_id(bb, c.motion_token)


def lora_spec(cfg: RunConfig, bb: Backbone) -> L.LoraSpec:
    """The Set-and-Sequence layers this run injects: rank, alpha, basis, targets (the backbone's by default)."""
    return L.LoraSpec(
        cfg.lora.rank,
        cfg.lora.scale_alpha,
        cfg.lora.basis,  # type: ignore[arg-type]
        tuple(cfg.lora.targets or bb.info.lora_targets),
        cfg.lora.path,  # type: ignore[arg-type]
        fp8=cfg.model.fp8,
    )


def attach_lora(
    cfg: RunConfig,
    bb: Backbone,
    spec: L.LoraSpec,
    ck: C.Checkpoint | None,
    init_lora: str | Path | None,
    log: Callable[[str], None],
) -> None:
    """Inject the layers into the DiT (gradient checkpointing on first, if asked), then load their weights
    from the checkpoint being resumed or from `--init-lora`."""
    model = bb.transformer
    if cfg.train.gradient_checkpointing:
        bb.enable_gradient_checkpointing()  # (refused in one line where the DiT cannot)
    L.inject(model, spec, seed=cfg.train.seed)
    layers = L.get_layers(model)
    n_params = sum(p.numel() for layer in layers.values() for p in (layer.down, layer.up))
    log(
        f"LoRA: {len(layers)} layers, rank {spec.rank}, basis {spec.basis}, {n_params / 1e6:.2f}M identity parameters"
    )
    if ck is not None:
        L.load_state(model, ck.lora(), parts=("identity", "motion") if ck.stage == 2 else ("identity",))
    elif init_lora is not None:
        src = load_setseq(init_lora)
        for w_ in check_compatible(src, bb.info, init_lora):
            log(f"warning: {w_}")
        L.load_state(
            model,
            src.tensors,
            parts=("identity", "motion") if any(".motion." in k for k in src.tensors) else ("identity",),
        )
        log(f"initialised from {init_lora}")


def token_embeddings(
    cfg: RunConfig, bb: Backbone, ck: C.Checkpoint | None, log: Callable[[str], None]
) -> TokenEmbeddings | None:
    """The concept tokens' trainable input embeddings (optional textual inversion), as checkpointed when
    resumed; None when they do not train."""
    if not cfg.concept.train_embedding:
        return None
    pairs = [(c.token, c.motion_token) for _, c in cfg.concepts()]
    emb = TokenEmbeddings(bb, [t for pair in pairs for t in pair], cfg.concept.embedding_lr)
    appearance, motion = list(range(0, 2 * len(pairs), 2)), list(range(1, 2 * len(pairs), 2))
    emb.stage_rows = {1: appearance + (motion if cfg.method in ONE_STAGE else []), 2: motion}
    saved = ck.lora().get(DELTA_KEY) if ck is not None else None
    if saved is not None:  # resumed: the offsets as checkpointed
        with torch.no_grad():
            emb.delta.copy_(saved)
    log(f"token embeddings: learning {', '.join(emb.tokens)} at lr {emb.lr}")
    return emb


def describe_training(
    cfg: RunConfig,
    concepts: list[EncodedConcept],
    stitched: list[EncodedConcept],
    sc_p: float,
    n_prior: int | None,
    log: Callable[[str], None],
) -> None:
    """The method, the concepts and the regularizers this run trains with."""
    if len(concepts) > 1:
        log(
            f"multi-concept: {len(concepts)} concepts ({', '.join(c.token for _, c in cfg.concepts())}), "
            f"{len(stitched)} stitched pair(s) at rate {cfg.multi.stitch_rate if stitched else 0}"
        )
    log(f"method: {cfg.method} ({METHODS[cfg.method]})")
    log(
        f"regularizers: token mask {cfg.regularizers.token_mask}, self-conditioning {sc_p}, "
        + (
            f"prior preservation {n_prior} videos x weight {cfg.regularizers.prior_weight}"
            if n_prior is not None
            else "no prior preservation"
        )
    )
