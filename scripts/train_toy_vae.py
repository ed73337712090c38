"""Train the toy model's video VAE (a tiny diffusers `AutoencoderKLWan`) from scratch on the synthetic world.

    python scripts/train_toy_vae.py --out /work/toy2/vae --minutes 20

The first half of the toy model (the DiT is trained by `scripts/train_toy.py --vae DIR`). Architecture: Wan's
causal 3D VAE (`TOY_VAE_CONFIG` in `setseq.backbones.toy`), 4x spatial compression, 8 latent channels, and
frame-wise: no temporal compression, each frame encoded alone as a 1-frame video, so a 9-frame 32x32 clip
becomes latents (8, 9, 8, 8) and a frame encodes the same in a clip as alone (what stage 1 needs). It trains
on single frames only. (A first VAE with 2x temporal compression, trained 22 min on 9-frame clips, blurred
sprites into their backgrounds: sprite colour survived encode + decode in 55% of clips.)

What makes it train (measured, see ../shared/FIELD_NOTES.md): the decoder is run *without* diffusers' final
`clamp(-1, 1)` (it zeroes gradients when training from scratch), the KL weight is tiny (1e-6), and pixels that
differ from the frame's background get a heavier loss (sprites are ~10% of a frame). A temporal VAE is
trained on 9-frame clips (its encoder works in chunks of 1 + 4k frames) plus single frames.
At the end the per-channel mean/std of the latents are stored in the config (`latents_mean`/`latents_std`),
which the toy backbone uses to normalise latents.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLWan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_toy import sample_batch  # noqa: E402  (same data as the DiT)

from setseq.backbones.toy import TOY_VAE_CONFIG  # noqa: E402

VAE_CONFIG = TOY_VAE_CONFIG  # the architecture the toy backbone builds and loads


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder to write (AutoencoderKLWan.save_pretrained)")
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--batch", type=int, default=12, help="9-frame clips per step")
    p.add_argument("--image-batch", type=int, default=48, help="single frames per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-min", type=float, default=5e-5)
    p.add_argument("--kl", type=float, default=1e-6)
    p.add_argument("--fg-weight", type=float, default=8.0, help="loss weight of non-background pixels")
    p.add_argument("--simple-frac", type=float, default=0.5)
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--init-from", default=None, help="start from this trained VAE folder instead of scratch")
    p.add_argument(
        "--decoder-only",
        action="store_true",
        help="freeze the encoder (so latents, their mean/std and a DiT trained on them stay valid) and train "
        "the decoder only; needs --init-from",
    )
    p.add_argument(
        "--colour-weight",
        type=float,
        default=0.0,
        help="weight of an extra loss on each frame's mean sprite colour (non-background pixels)",
    )
    p.add_argument("--log-every", type=int, default=25)
    return p.parse_args()


def decode_unclamped(vae, z: torch.Tensor) -> torch.Tensor:
    """`AutoencoderKLWan` decoding, frame by frame through its causal cache, without the final clamp."""
    vae.clear_cache()
    x = vae.post_quant_conv(z)
    outs = []
    for i in range(z.shape[2]):
        vae._conv_idx = [0]
        outs.append(
            vae.decoder(
                x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=i == 0
            )
        )
    vae.clear_cache()
    return torch.cat(outs, dim=2)


def weights(x: torch.Tensor, fg_weight: float) -> torch.Tensor:
    """(B, 3, F, H, W) -> (B, 1, F, H, W): fg_weight where a pixel is far from its frame's median colour."""
    med = x.flatten(3).median(dim=3).values[..., None, None]  # (B, 3, F, 1, 1): the background, mostly
    far = (x - med).abs().amax(dim=1, keepdim=True) > 0.15
    return 1.0 + (fg_weight - 1.0) * far.float()


def colour_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 between the mean colours of each frame's sprite pixels (far from the median) in ``rec`` and ``x``."""
    med = x.flatten(3).median(dim=3).values[..., None, None]
    far = ((x - med).abs().amax(dim=1, keepdim=True) > 0.15).float()
    n = far.sum(dim=(3, 4)).clamp_min(1.0)
    mean_rec = (rec * far).sum(dim=(3, 4)) / n
    mean_x = (x * far).sum(dim=(3, 4)) / n
    has = (far.sum(dim=(3, 4)) > 0).float()
    return ((mean_rec - mean_x).abs() * has).sum() / (has.sum() * 3).clamp_min(1.0)


def build_vae(args: argparse.Namespace) -> AutoencoderKLWan:
    """A fresh VAE of `VAE_CONFIG`, or `--init-from`'s; with `--decoder-only` its encoder frozen."""
    if args.decoder_only and not args.init_from:
        raise SystemExit("--decoder-only needs --init-from DIR (the VAE whose encoder stays frozen)")
    if args.init_from:
        vae = AutoencoderKLWan.from_pretrained(args.init_from, use_safetensors=True)
    else:
        vae = AutoencoderKLWan(**VAE_CONFIG)
    vae.train()
    if args.decoder_only:
        for mod in (vae.encoder, vae.quant_conv):
            mod.requires_grad_(False)
            mod.eval()
    return vae


def vae_loss(vae: AutoencoderKLWan, rng: np.random.Generator, args: argparse.Namespace) -> torch.Tensor:
    """One step's loss: weighted reconstruction (+ KL, + colour) on clips and on single frames (frames only
    for a frame-wise VAE)."""
    loss_total = torch.zeros(())
    frame_wise = VAE_CONFIG["scale_factor_temporal"] == 1
    for image in (True,) if frame_wise else (False, True):
        n = args.image_batch if image else args.batch
        video, _ = sample_batch(rng, n, args.frames, args.size, args.simple_frac, 0.0, image)
        x = video.permute(0, 2, 1, 3, 4)  # (B, 3, F, H, W)
        if args.decoder_only:
            with torch.no_grad():
                dist = vae.encode(x).latent_dist
        else:
            dist = vae.encode(x).latent_dist
        z = dist.sample()
        rec = decode_unclamped(vae, z)
        w = weights(x, args.fg_weight)
        err = rec - x
        recon = (w * (err.pow(2) + 0.5 * err.abs())).mean() / w.mean()
        loss_total = loss_total + recon
        if not args.decoder_only:
            loss_total = loss_total + args.kl * dist.kl().mean() / x[0].numel()
        if args.colour_weight:
            loss_total = loss_total + args.colour_weight * colour_loss(rec, x)
    return loss_total


def latent_statistics(
    vae: AutoencoderKLWan, rng: np.random.Generator, args: argparse.Namespace
) -> tuple[list[float], list[float], float]:
    """(mean, std) per channel of the posterior means over rendered clips, for normalisation, and the pixel
    error of the clamped, real decode path, for the log."""
    vae.eval()
    mus = []
    with torch.no_grad():
        for _ in range(8):
            video, _ = sample_batch(rng, 32, args.frames, args.size, args.simple_frac, 0.0, False)
            if VAE_CONFIG["scale_factor_temporal"] == 1:  # frame-wise: frames as 1-frame videos
                video = video.reshape(-1, 1, *video.shape[2:])
            mus.append(vae.encode(video.permute(0, 2, 1, 3, 4)).latent_dist.mode())
        mu = torch.cat(mus)
        rec = vae.decode(mus[-1]).sample
        mse = float((rec - video.permute(0, 2, 1, 3, 4)).pow(2).mean())
    return mu.mean(dim=(0, 2, 3, 4)).tolist(), mu.std(dim=(0, 2, 3, 4)).tolist(), mse


def save_vae(vae: AutoencoderKLWan, out: Path, log_lines: list[str]) -> None:
    """The VAE and its log into a temporary folder, then swapped in for `out`."""
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    vae.save_pretrained(tmp, safe_serialization=True)
    (tmp / "train_log.txt").write_text("\n".join(log_lines) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"wrote {out}")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    vae = build_vae(args)
    trained = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        log_lines.append(msg)

    n_params = sum(p.numel() for p in vae.parameters())
    log(
        f"toy VAE: {n_params / 1e6:.2f}M params, config {json.dumps(VAE_CONFIG)}, args {json.dumps(vars(args))}"
    )
    budget = args.minutes * 60.0
    start = time.time()
    step = 0
    hist: list[float] = []
    while time.time() - start < budget:
        frac = (time.time() - start) / budget
        lr = args.lr_min + 0.5 * (args.lr - args.lr_min) * (1 + math.cos(math.pi * min(frac * 1.0, 1.0)))
        lr *= min(1.0, (step + 1) / 50)
        for g in opt.param_groups:
            g["lr"] = lr
        loss_total = vae_loss(vae, rng, args)
        opt.zero_grad(set_to_none=True)
        loss_total.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(trained, 1.0)
        if not torch.isfinite(loss_total):
            raise RuntimeError(f"non-finite loss at step {step}")
        opt.step()
        step += 1
        hist.append(loss_total.item())
        if step % args.log_every == 0:
            log(
                f"step {step:5d}  {(time.time() - start) / 60:5.1f} min  lr {lr:.2e}  "
                f"loss {np.mean(hist):.4f}  gnorm {float(gnorm):.3f}"
            )
            hist = []

    mean, std, mse = latent_statistics(vae, rng, args)
    if not args.decoder_only:  # a frozen encoder keeps the stored statistics (the DiT was trained with them)
        vae.register_to_config(
            latents_mean=[round(v, 5) for v in mean], latents_std=[round(v, 5) for v in std]
        )
    log(f"done: {step} steps in {(time.time() - start) / 60:.1f} min; eval MSE {mse:.5f}; latents std {std}")
    save_vae(vae, out, log_lines)


if __name__ == "__main__":
    main()
