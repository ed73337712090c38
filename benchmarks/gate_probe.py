"""Two oracles for issue #29: does the concept keep its colour on unseen backgrounds when the LoRA acts only
where the subject is? At every sampling step the velocity is the trained model's inside the training video's
subject path (its exact mask on the latent grid, dilated by `--dilate` cells) and the base model's (every
Set-and-Sequence layer off) outside it, so the base model draws the scene. With `--regional`, the inside also
drops the background from the prompt ("a sks diamond in zwx motion", the video's own caption).

    python benchmarks/gate_probe.py RUN_DIR [--dilate 1] [--regional] [--seeds 4]

RUN_DIR: a bench run of `cyan_diamond_bounce` (`--keep-runs`: BENCH/runs/setseq/cyan_diamond_bounce-seed0/run).
Prints the sprite's detected colour / shape on green, yellow and white (cyan's unseen backgrounds), per seed,
for the plain sampler and the gated one.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from setseq import lora as L
from setseq.data.synthetic import CONCEPTS, render_mask
from setseq.data.video import from_tensor
from setseq.eval.toy_detect import detect_sprite
from setseq.infer.generate import GenerateOptions, Personalized

CONCEPT = "cyan_diamond_bounce"
PROMPT = "a sks diamond in zwx motion"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--dilate", type=int, default=1)
    ap.add_argument("--regional", action="store_true")
    ap.add_argument("--seeds", type=int, default=4)
    args = ap.parse_args()
    pm = Personalized.load(args.run, log=lambda s: None)
    bb = pm.backbone
    mask = torch.from_numpy(render_mask(CONCEPTS[CONCEPT], 9, 32).astype(np.float32))[None, None]
    real = bb.predict
    inside = bb.encode_prompt([PROMPT, ""]) if args.regional else None  # (cond, uncond: the sampler's order)

    def gated(x, sig, embeds, **kw):
        with torch.no_grad():
            v_in = real(x, sig, embeds if inside is None else inside, **kw)
            with L.switched_off(bb.transformer):
                v_out = real(x, sig, embeds, **kw)
        k = args.dilate
        m = F.adaptive_max_pool3d(mask, x.shape[2:])
        m = F.max_pool3d(m, (1, 2 * k + 1, 2 * k + 1), stride=1, padding=(0, k, k)) if k else m
        return m * v_in + (1 - m) * v_out

    for name, predict in (("plain", real), ("gated", gated)):
        bb.predict = predict
        per = {}
        for bg in ("green", "yellow", "white"):
            for seed in range(args.seeds):
                video = pm.generate(f"{PROMPT} on a {bg} background", GenerateOptions(seed=seed))
                d = detect_sprite(from_tensor(video))
                per.setdefault(bg, []).append(f"{d['colour']}/{d['shape']}")
        print(name, per, flush=True)


if __name__ == "__main__":
    main()
