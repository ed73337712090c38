"""Train the toy text-to-video model from scratch on the synthetic world (CPU, wall-clock budgeted).

    python scripts/train_toy_vae.py --out /tmp/toy_vae --minutes 9 --colour-weight 1 --fg-weight 16  # the codec
    python scripts/train_toy.py --out /tmp/toy --vae /tmp/toy_vae --text-pretrain-minutes 2 --minutes 47 \
        --layers 4 --text-layers 3 --batch 16 --self-cond 0.25 --lr 1.5e-3 --image-frac 0.1   # then: the DiT

(the shipped models' exact commands and logs: BENCHMARKS.md; all phases in one command:
`bash scripts/train_toy_model.sh OUT` for the default "toy" model, ~60 min, and
`bash scripts/train_toy_large.sh OUT` for "toy-large", ~4 h 40 min). `--text-pretrain-minutes` first trains a
fresh text encoder on caption parsing and freezes it (see `pretrain_text_encoder`).

With `--vae` (the shipped model) the DiT learns on VAE latents: a pool of clips and of single frames is rendered
and encoded once (posterior mean and std; each draw samples the posterior), and a slice of it is re-rendered
every `--refresh-every` steps, so the DiT sees new clips all along without paying the encoder every step.
Without `--vae`, the lossless pixel codec of the first design is used.

Read top to bottom: setup (model, codec statistics, optimizer), train (flow matching on 9-frame clips and on
single frames as 1-frame videos, self-conditioning on half of the steps, 10% empty prompts for CFG, EMA),
save (EMA weights as a toy model folder, periodically and at the end), cleanup.

The learning-rate schedule runs on elapsed *time*, not steps (warmup, then cosine to `lr_min` at the end of
the budget), so a run on a machine shared with other jobs still ends on time with a finished schedule.
Held-out (colour, shape) and (shape, motion) combinations of `setseq.data.synthetic` are never shown.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from setseq.backbones.toy import (
    IDENTIFIER_TOKENS,
    ToyBackbone,
    ToyComponents,
    build_toy_components,
    load_toy_components,
    save_toy_model,
    toy_config,
)
from setseq.backbones.toy.config import dit_in_channels
from setseq.data import synthetic as S
from setseq.functional.flow_matching import flow_matching_loss, interpolate, x0_from_velocity


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="src/setseq/assets/toy", help="toy model folder to write")
    p.add_argument("--minutes", type=float, default=55.0, help="wall-clock training budget")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: budget only)")
    p.add_argument("--batch", type=int, default=24, help="9-frame clips per video step")
    p.add_argument("--image-batch", type=int, default=64, help="frames per image step (1-frame videos)")
    p.add_argument("--image-frac", type=float, default=0.25, help="fraction of steps that are image steps")
    p.add_argument(
        "--simple-frac", type=float, default=0.5, help="fraction of simple specs (solid, plain, no dynamics)"
    )
    p.add_argument("--empty-prompt", type=float, default=0.1, help="probability of an empty prompt (CFG)")
    p.add_argument("--self-cond", type=float, default=0.5, help="probability of a self-conditioning step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-min", type=float, default=2e-5)
    p.add_argument("--warmup-minutes", type=float, default=1.5)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--ffn", type=int, default=512)
    p.add_argument("--text-layers", type=int, default=2, help="UMT5 encoder layers")
    p.add_argument(
        "--freeze-text", action="store_true", help="keep the random UMT5 frozen (default: train it)"
    )
    p.add_argument("--init-from", default=None, help="start from this toy model folder (weights + config)")
    p.add_argument(
        "--text-pretrain-minutes",
        type=float,
        default=0.0,
        help="first train a fresh text encoder on caption parsing for this long, then freeze it (0: off)",
    )
    p.add_argument(
        "--vae", default=None, help="trained toy VAE folder (scripts/train_toy_vae.py): codec 'vae'"
    )
    p.add_argument("--pool", type=int, default=8192, help="encoded clips (and frames) in the latent pool")
    p.add_argument("--refresh-every", type=int, default=100, help="steps between pool refreshes")
    p.add_argument("--refresh", type=int, default=256, help="clips (and frames) re-rendered per refresh")
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=2, help="most torch threads; fewer are used while they are faster"
    )
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--ckpt-minutes", type=float, default=8.0)
    return p.parse_args()


# ---------------------------------------------------------------------------------------------------------
# Data: rendered on the fly (a clip renders in ~1 ms), never held out
# ---------------------------------------------------------------------------------------------------------


def sample_batch(
    rng: np.random.Generator,
    n: int,
    frames: int,
    size: int,
    simple_frac: float,
    empty_prompt: float,
    image: bool,
) -> tuple[torch.Tensor, list[str]]:
    """(n, F, 3, H, W) in [-1, 1] and captions. `image`: one random frame of each clip, as a 1-frame video."""
    clips, captions = [], []
    for _ in range(n):
        spec = S.sample_spec(rng, allow_held_out=False, simple=bool(rng.random() < simple_frac))
        video = S.render(
            spec, frames=frames, size=size, seed=int(rng.integers(1 << 30))
        )  # (F, H, W, 3) uint8
        if image:
            f = int(rng.integers(frames))
            video = video[f : f + 1]
        clips.append(video)
        captions.append("" if rng.random() < empty_prompt else S.caption(spec))
    x = torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
    return x, captions


def pixel_statistics(
    rng: np.random.Generator, args: argparse.Namespace, n: int = 2000
) -> tuple[list[float], list[float]]:
    """Per-RGB mean/std of training pixels in [-1, 1]: the codec's normalisation, stored in toy_config.json."""
    x, _ = sample_batch(rng, n, args.frames, args.size, args.simple_frac, 0.0, image=False)
    mean = x.mean(dim=(0, 1, 3, 4))
    std = x.std(dim=(0, 1, 3, 4))
    return [round(float(v), 5) for v in mean], [round(float(v), 5) for v in std]


class ThreadChooser:
    """Pick 1..max torch threads by measured video-step time, re-probing the others now and then.

    On a machine shared with other jobs (and under `nice`), a thread that shares its core with a busy
    process stalls every parallel region, so fewer threads can be several times faster than all of them."""

    def __init__(self, max_threads: int, interval: int = 25, stale: int = 8) -> None:
        self.options = list(range(1, max_threads + 1))
        self.interval, self.stale = interval, stale
        self.est: dict[int, float] = {}
        self.age: dict[int, int] = {}
        self.current = max_threads
        self.times: list[float] = []
        torch.set_num_threads(self.current)

    def record(self, seconds: float) -> None:
        self.times.append(seconds)
        if len(self.times) < self.interval:
            return
        t = float(np.median(self.times))
        self.times = []
        old = self.est.get(self.current)
        self.est[self.current] = t if old is None or self.age.get(self.current, 0) > 0 else 0.5 * (old + t)
        for k in self.options:
            self.age[k] = self.age.get(k, self.stale) + 1
        self.age[self.current] = 0
        stale = [k for k in self.options if k not in self.est or self.age[k] > self.stale]
        self.current = stale[0] if stale else min(self.est, key=self.est.__getitem__)
        torch.set_num_threads(self.current)


class LatentPool:
    """Encoded training data for the VAE codec: clips and single frames, re-rendered a slice at a time."""

    def __init__(self, model: ToyBackbone, rng: np.random.Generator, args: argparse.Namespace) -> None:
        self.model, self.rng, self.args = model, rng, args
        self.clips = self._encode(args.pool, image=False)
        self.images = self._encode(args.pool, image=True)
        self.cursor = 0

    def _encode(self, n: int, image: bool) -> dict:
        mus, sds, caps = [], [], []
        vae = self.model.vae
        mean = self.model.latent_codec.mean
        std = self.model.latent_codec.std
        with torch.no_grad():
            for i in range(0, n, 64):
                video, captions = sample_batch(
                    self.rng,
                    min(64, n - i),
                    self.args.frames,
                    self.args.size,
                    self.args.simple_frac,
                    0.0,
                    image,
                )
                b, f = video.shape[:2]
                frame_wise = self.model.temporal == 1
                x = video.reshape(b * f, 1, *video.shape[2:]) if frame_wise else video
                dist = vae.encode(x.permute(0, 2, 1, 3, 4)).latent_dist
                mu, sd = dist.mean, dist.std
                if frame_wise:  # (B*F, C, 1, h, w) -> (B, C, F, h, w)
                    mu = mu.reshape(b, f, *mu.shape[1:]).squeeze(3).permute(0, 2, 1, 3, 4)
                    sd = sd.reshape(b, f, *sd.shape[1:]).squeeze(3).permute(0, 2, 1, 3, 4)
                mus.append(((mu - mean) / std).half())
                sds.append((sd / std).half())
                caps.extend(captions)
        return {"mu": torch.cat(mus), "sd": torch.cat(sds), "cap": caps}

    def refresh(self) -> None:
        k = self.args.refresh
        for store, image in ((self.clips, False), (self.images, True)):
            new = self._encode(k, image)
            idx = [(self.cursor + j) % self.args.pool for j in range(k)]
            store["mu"][idx] = new["mu"]
            store["sd"][idx] = new["sd"]
            for j, c in zip(idx, new["cap"]):
                store["cap"][j] = c
        self.cursor = (self.cursor + k) % self.args.pool

    def batch(self, n: int, image: bool) -> tuple[torch.Tensor, list[str]]:
        store = self.images if image else self.clips
        idx = self.rng.choice(self.args.pool, size=n, replace=False)
        mu, sd = store["mu"][idx].float(), store["sd"][idx].float()
        x0 = mu + sd * torch.randn_like(mu)
        caps = ["" if self.rng.random() < self.args.empty_prompt else store["cap"][i] for i in idx]
        return x0, caps


# ---------------------------------------------------------------------------------------------------------
# Text encoder pre-training: caption parsing (which colour is the sprite's and which the background's)
# ---------------------------------------------------------------------------------------------------------

IGNORE = -100
PARSE_FIELDS = {
    "colour": tuple(S.COLOURS),
    "pattern": tuple(S.PATTERNS),
    "shape": tuple(S.SHAPES),
    "family": tuple(S.MOTION_FAMILIES),
    "direction": ("none", *S.DIRECTIONS),
    "dynamics": tuple(S.DYNAMICS),
    "bg_colour": tuple(S.BG_COLOURS),
    "bg_pattern": tuple(S.BG_PATTERNS),
}


def parse_example(rng: np.random.Generator) -> tuple[str, dict[str, int]]:
    """A caption and its parse, in the forms the recipes use: the full grammar, and with identifier tokens
    standing in for the colour ("a sks star") or the motion ("in zwx motion"), or with no background clause.
    A field the caption does not state is IGNORE."""
    spec = S.sample_spec(rng, allow_held_out=False, simple=bool(rng.random() < 0.5))
    a, m = spec.appearance, spec.motion
    labels = {
        "colour": PARSE_FIELDS["colour"].index(a.colour),
        "pattern": PARSE_FIELDS["pattern"].index(a.pattern),
        "shape": PARSE_FIELDS["shape"].index(a.shape),
        "family": PARSE_FIELDS["family"].index(m.family),
        "direction": PARSE_FIELDS["direction"].index(m.direction or "none"),
        "dynamics": PARSE_FIELDS["dynamics"].index(m.dynamics),
        "bg_colour": PARSE_FIELDS["bg_colour"].index(a.bg_colour),
        "bg_pattern": PARSE_FIELDS["bg_pattern"].index(a.bg_pattern),
    }
    ids = list(IDENTIFIER_TOKENS)
    colour = a.colour
    if rng.random() < 0.25:  # "a sks star": the identifier replaces colour and pattern
        colour = ids[int(rng.integers(len(ids)))]
        labels["colour"] = labels["pattern"] = IGNORE
    pattern = S._PATTERN_WORD[a.pattern] if labels["pattern"] != IGNORE else None
    motion = S.motion_phrase(m)
    if rng.random() < 0.25:  # "in zwx motion"
        motion = f"in {ids[int(rng.integers(len(ids)))]} motion"
        labels["family"] = labels["direction"] = labels["dynamics"] = IGNORE
    words = ["a", colour, *([pattern] if pattern else []), a.shape, motion]
    if rng.random() < 0.15:  # no background clause
        labels["bg_colour"] = labels["bg_pattern"] = IGNORE
    else:
        bgp = S._BG_PATTERN_WORD[a.bg_pattern]
        words += ["on", "a", a.bg_colour, *([bgp] if bgp else []), "background"]
    return " ".join(words), labels


def pretrain_text_encoder(model: ToyBackbone, rng: np.random.Generator, minutes: float, log) -> None:
    """Train `model.text_encoder` so that every token's output states the whole parse (one linear head per
    field) and still names its own word (a vocabulary head), then freeze it. A from-scratch encoder trained only
    through the DiT's loss learns which colours a caption holds but not which is the sprite's: the samples
    swap sprite and background colours. Parsing is what a pretrained language encoder brings to a real model."""
    enc = model.text_encoder
    d = int(enc.config.d_model)
    vocab = int(enc.config.vocab_size)
    heads = torch.nn.ModuleDict({k: torch.nn.Linear(d, len(v)) for k, v in PARSE_FIELDS.items()})
    heads["word"] = torch.nn.Linear(d, vocab)
    enc.train()
    params = list(enc.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.01)
    start, step = time.time(), 0
    while time.time() - start < minutes * 60.0:
        examples = [parse_example(rng) for _ in range(128)]
        ids, mask = model.tokenize([c for c, _ in examples])
        hidden = enc(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, D)
        real = mask.bool()
        h = hidden[real]  # (N, D): every real token
        per_row = real.sum(1)
        loss = torch.nn.functional.cross_entropy(heads["word"](h), ids[real])
        acc = {}
        for k in PARSE_FIELDS:
            target = torch.tensor([lab[k] for _, lab in examples]).repeat_interleave(per_row)
            logits = heads[k](h)
            loss = loss + torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE)
            keep = target != IGNORE
            acc[k] = float((logits.argmax(-1)[keep] == target[keep]).float().mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            log(
                f"text pretrain step {step}  loss {loss.item():.4f}  token accuracy "
                + " ".join(f"{k} {v:.3f}" for k, v in acc.items()),
                {"event": "text_pretrain", "step": step, "loss": loss.item(), "accuracy": acc},
            )
    enc.eval()
    enc.requires_grad_(False)
    log(f"text encoder pre-trained: {step} steps in {(time.time() - start) / 60:.1f} min, frozen")


def add_coordinate_channels(components: ToyComponents, coord_channels: int = 2) -> ToyComponents:
    """Give a model trained without coordinate planes (`--init-from` a first-design folder) their input
    channels, zero-initialised: the same function until trained."""
    old = components.transformer
    have = int(components.config.get("coord_channels", 0))
    if have == coord_channels:
        return components
    cfg = copy.deepcopy(components.config)
    cfg["coord_channels"] = coord_channels
    new = WanTransformer3DModel.from_config({**dict(old.config), "in_channels": dit_in_channels(cfg)})
    state = old.state_dict()
    w = state["patch_embedding.weight"]  # (D, in, 1, 2, 2)
    pad = torch.zeros(w.shape[0], dit_in_channels(cfg) - w.shape[1], *w.shape[2:], dtype=w.dtype)
    state["patch_embedding.weight"] = torch.cat([w, pad], dim=1)
    new.load_state_dict(state)
    return ToyComponents(
        config=cfg,
        transformer=new.eval(),
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        vae=components.vae,
    )


def lr_at(elapsed: float, budget: float, args: argparse.Namespace) -> float:
    warm = args.warmup_minutes * 60.0
    if elapsed < warm:
        return args.lr * max(elapsed / warm, 0.01)
    frac = min(1.0, (elapsed - warm) / max(budget - warm, 1.0))
    return args.lr_min + 0.5 * (args.lr - args.lr_min) * (1.0 + math.cos(math.pi * frac))


class RunLog:
    """Lines printed and kept in train_log.txt, records in train_log.jsonl. The logs live outside the model
    folder while it is being swapped in; each save copies them in."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="setseq_train_toy_"))
        self.txt = open(self.dir / "train_log.txt", "w")
        self.jsonl = open(self.dir / "train_log.jsonl", "w")

    def __call__(self, msg: str, record: dict | None = None) -> None:
        print(msg, flush=True)
        self.txt.write(msg + "\n")
        self.txt.flush()
        if record is not None:
            self.jsonl.write(json.dumps(record) + "\n")
            self.jsonl.flush()

    def close(self) -> None:
        self.txt.close()
        self.jsonl.close()


def build_model(
    args: argparse.Namespace, rng: np.random.Generator, log: RunLog
) -> tuple[ToyComponents, ToyBackbone]:
    """The toy model to train: a fresh one (or `--init-from`'s weights), its codec (`--vae` or the pixel
    codec, whose statistics are measured on rendered clips), and its text encoder (pretrained on caption
    parsing and frozen with `--text-pretrain-minutes`)."""
    mean, std = pixel_statistics(rng, args)
    cfg = toy_config(
        height=args.size,
        width=args.size,
        frames=args.frames,
        pixel_mean=mean,
        pixel_std=std,
        transformer={
            "num_layers": args.layers,
            "num_attention_heads": args.heads,
            "attention_head_dim": args.head_dim,
            "ffn_dim": args.ffn,
        },
        text_encoder={"num_layers": args.text_layers},
    )
    vae = AutoencoderKLWan.from_pretrained(args.vae, use_safetensors=True).eval() if args.vae else None
    if vae is not None:
        cfg["codec"] = "vae"
        cfg["vae"] = {k: dict(vae.config)[k] for k in cfg["vae"]}
    else:
        cfg["codec"], cfg["prediction"] = "pixel", "x0"
    if args.init_from:  # continue from a saved model (its EMA weights), fresh optimizer
        comps = add_coordinate_channels(load_toy_components(args.init_from), int(cfg["coord_channels"]))
        for key in ("coord_channels", "prediction", "x0_sigma_min", "sigma_shift", "sigma_weighting"):
            comps.config[key] = cfg[key]
        log(
            f"initialised from {args.init_from} (trained: {comps.config.get('trained', {}).get('step')} steps)"
        )
    else:
        comps = build_toy_components(cfg, seed=args.seed)
    if vae is not None:
        comps.vae = vae
    if args.text_pretrain_minutes > 0:  # a fresh encoder, even when the DiT starts from --init-from
        fresh = build_toy_components(comps.config, seed=args.seed + 1)
        comps.text_encoder, comps.tokenizer = fresh.text_encoder, fresh.tokenizer
    model = ToyBackbone(comps, model_id=str(Path(args.out)), freeze=False)
    if model.vae is not None:
        model.vae.requires_grad_(False)
    model.transformer.train()
    model.text_encoder.train()
    if args.text_pretrain_minutes > 0:
        pretrain_text_encoder(model, rng, args.text_pretrain_minutes, log)
        args.freeze_text = True
    if args.freeze_text:
        model.text_encoder.requires_grad_(False)
    n_tr = sum(p.numel() for p in model.transformer.parameters())
    n_te = sum(p.numel() for p in model.text_encoder.parameters())
    log(
        f"toy training: transformer {n_tr / 1e6:.2f}M params, text encoder {n_te / 1e6:.2f}M "
        f"({'frozen' if args.freeze_text else 'trained'}), pixel mean {mean} std {std}",
        {"event": "start", "args": vars(args), "transformer_params": n_tr, "text_encoder_params": n_te},
    )
    return comps, model


def make_optimizer(
    model: ToyBackbone, args: argparse.Namespace
) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer, list[torch.Tensor]]:
    """(trainable params, AdamW with no weight decay on biases and norms, their EMA copies)."""
    params = [p for m in (model.transformer, model.text_encoder) for p in m.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.99),
    )
    return params, opt, [p.detach().clone() for p in params]


def save_model(
    out: Path,
    comps: ToyComponents,
    model: ToyBackbone,
    ema_of: dict[int, torch.Tensor],
    extra: dict,
    log: RunLog,
) -> None:
    """The EMA weights (`ema_of`: id(live param) -> its EMA) into a copy of the model, written to a
    temporary folder with the logs (and an earlier eval of `out`), then swapped in for `out`."""
    snap = copy.deepcopy(comps)
    snap_params = [p for m in (snap.transformer, snap.text_encoder) for p in m.parameters()]
    live = [p for m in (model.transformer, model.text_encoder) for p in m.parameters()]
    with torch.no_grad():
        for sp, lp in zip(snap_params, live):
            sp.copy_(ema_of.get(id(lp), lp.detach()))
    snap.transformer.eval()
    snap.text_encoder.eval()
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_toy_model(tmp, snap, extra=extra)
    for name in ("train_log.txt", "train_log.jsonl"):
        shutil.copy2(log.dir / name, tmp / name)
    for p in ("eval_toy.json", "eval_toy.txt"):
        if (out / p).exists():
            shutil.copy2(out / p, tmp / p)
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    final = extra["final"]
    log(
        f"saved {'final' if final else 'checkpoint'} (EMA) to {out} at step {extra['step']}",
        {"event": "save", "step": extra["step"]},
    )


def training_batch(
    model: ToyBackbone, pool: LatentPool | None, rng: np.random.Generator, args: argparse.Namespace, step: int
) -> tuple[torch.Tensor, list[str], bool]:
    """(x0, captions, image step?): a batch of clips, or of single frames as 1-frame videos, from the latent
    pool (refreshed every `--refresh-every` steps) or rendered and pixel-encoded."""
    image = bool(rng.random() < args.image_frac)
    n = args.image_batch if image else args.batch
    if pool is None:
        video, captions = sample_batch(
            rng, n, args.frames, args.size, args.simple_frac, args.empty_prompt, image
        )
        return model.encode_video(video), captions, image  # (B, 48, F, 8, 8)
    if step and step % args.refresh_every == 0:
        pool.refresh()
    x0, captions = pool.batch(n, image)  # (B, 8, 5, 8, 8) or (B, 8, 1, 8, 8)
    return x0, captions, image


def flow_matching_step(
    model: ToyBackbone,
    x0: torch.Tensor,
    captions: list[str],
    rng: np.random.Generator,
    args: argparse.Namespace,
) -> torch.Tensor:
    """The flow-matching loss of one batch, with self-conditioning on `--self-cond` of the steps."""
    noise = torch.randn_like(x0)
    sigmas = model.sample_sigmas(x0.shape[0])
    noisy = interpolate(x0, noise, sigmas)
    prompt = model.encode_prompt(captions)
    self_cond = None
    if rng.random() < args.self_cond:
        # FIT / RIN self-conditioning: a first pass with zeros gives an x0 estimate, fed back detached.
        with torch.no_grad():
            detached = type(prompt)(prompt.embeds.detach(), prompt.mask)
            self_cond = x0_from_velocity(noisy, model.predict(noisy, sigmas, detached), sigmas)
    pred = model.predict(noisy, sigmas, prompt, self_cond=self_cond)
    return flow_matching_loss(pred, x0, noise)


def log_window(
    log: RunLog,
    step: int,
    elapsed: float,
    lr: float,
    window: dict,
    gnorm: float,
    s_per_step: float,
    threads: ThreadChooser,
) -> None:
    """One progress line and record: the mean video and image losses since the last one."""
    rec = {
        "event": "train",
        "step": step,
        "elapsed_s": round(elapsed, 1),
        "lr": lr,
        "loss_video": float(np.mean(window["video"])) if window["video"] else None,
        "loss_image": float(np.mean(window["image"])) if window["image"] else None,
        "grad_norm": float(gnorm),
        "s_per_step": round(s_per_step, 3),
        "threads": torch.get_num_threads(),
        "s_per_video_step_by_threads": {k: round(v, 3) for k, v in threads.est.items()},
    }
    log(
        f"step {step:6d}  {elapsed / 60:6.2f} min  lr {lr:.2e}  loss video {rec['loss_video'] or float('nan'):.4f}"
        f"  image {rec['loss_image'] or float('nan'):.4f}  gnorm {float(gnorm):.3f}  {rec['s_per_step']:.3f} s/step  threads {rec['threads']} {rec['s_per_video_step_by_threads']}",
        rec,
    )


def main() -> None:
    args = parse_args()
    # 1. setup
    threads = ThreadChooser(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = RunLog()
    comps, model = build_model(args, rng, log)
    params, opt, ema = make_optimizer(model, args)
    pool = None
    if args.vae:
        t_pool = time.time()
        pool = LatentPool(model, rng, args)
        log(
            f"latent pool: {args.pool} clips {tuple(pool.clips['mu'].shape)} + {args.pool} frames, {time.time() - t_pool:.0f} s"
        )

    def save(step: int, elapsed: float, final: bool) -> None:
        extra = {
            "step": step,
            "minutes": round(elapsed / 60.0, 2),
            "final": final,
            "ema": args.ema,
            "args": vars(args),
        }
        save_model(out, comps, model, {id(p): e for p, e in zip(params, ema)}, extra, log)

    # 2. train
    budget = args.minutes * 60.0
    start = last_ckpt = t_window = time.time()
    step = 0
    window: dict[str, list[float]] = {"video": [], "image": []}
    while True:
        elapsed = time.time() - start
        if elapsed >= budget or (args.max_steps and step >= args.max_steps):
            break
        lr = lr_at(elapsed, budget, args)
        for group in opt.param_groups:
            group["lr"] = lr
        t_step = time.time()
        x0, captions, image = training_batch(model, pool, rng, args, step)
        loss = flow_matching_step(model, x0, captions, rng, args)
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay_now = min(args.ema, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay_now)
        window["image" if image else "video"].append(loss.item())
        if not image:
            threads.record(time.time() - t_step)
        if step % args.log_every == 0:
            s_per_step = (time.time() - t_window) / args.log_every
            log_window(log, step, time.time() - start, lr, window, float(gnorm), s_per_step, threads)
            window, t_window = {"video": [], "image": []}, time.time()
        if time.time() - last_ckpt > args.ckpt_minutes * 60.0:
            save(step, time.time() - start, final=False)
            last_ckpt = time.time()

    # 3. save
    elapsed = time.time() - start
    log(
        f"done: {step} steps in {elapsed / 60:.1f} min",
        {"event": "done", "step": step, "elapsed_s": round(elapsed, 1)},
    )
    save(step, elapsed, final=True)
    # 4. cleanup
    log.close()


if __name__ == "__main__":
    main()
