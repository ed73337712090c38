"""Quality gate of the toy text-to-video model: generate from captions, score with the toy-world detectors.

    python scripts/eval_toy.py                       # the shipped model, 120 gate prompts, writes eval_toy.json
    python scripts/eval_toy.py --model DIR --n 40 --guidance 3 --shift 2 --json /tmp/e.json

Prompts: a seeded set of non-held-out specs of `setseq.data.synthetic` (`sample_spec(simple=True)`: solid
sprite, plain background, no dynamics, speed 1), captioned with the one caption grammar. These are the gate.
A second, smaller seeded set of full specs (patterns, patterned backgrounds, dynamics, speeds) is scored and
reported but not gated. Every prompt goes through the backbone's `generate` path (`generate_batch`, which
`generate` calls). The same detectors (`setseq.eval.toy_detect`) are run on the true renders of the specs (the
detector ceiling) and on those renders passed through the model's codec, encoded and decoded (the codec
ceiling).

Gate (issue): sprite colour >= 90%, background colour >= 90%, motion >= 80%, where motion is correct when
the detected direction equals the true one for directional families (linear, bounce, zigzag) and the
detected family equals the true one otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from setseq.backbones.toy import load_toy, load_toy_components, toy_folder
from setseq.data import synthetic as S
from setseq.eval.toy_detect import detect_background, detect_motion, detect_sprite
from setseq.io import write_json

GATE = {"sprite_colour": 0.90, "bg_colour": 0.90, "motion": 0.80}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="toy", help='"toy", "toy-large" (shipped) or a toy model folder')
    p.add_argument("--n", type=int, default=120, help="gate prompts (simple specs)")
    p.add_argument(
        "--n-full", type=int, default=40, help="extra prompts with full specs (reported, not gated)"
    )
    p.add_argument("--seed", type=int, default=1234, help="seed of the prompt set")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's)")
    p.add_argument("--shift", type=float, default=None, help="sampler time shift (default: the model's)")
    p.add_argument("--no-self-cond", action="store_true", help="sample without self-conditioning")
    p.add_argument("--batch", type=int, default=20, help="prompts generated at once")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="output JSON (default: eval_toy.json in the model folder)")
    p.add_argument("--no-json", action="store_true")
    p.add_argument(
        "--write-defaults", action="store_true", help="store steps/guidance/shift as the model's defaults"
    )
    return p.parse_args()


def prompt_set(seed: int, n: int, simple: bool) -> list[S.ConceptSpec]:
    rng = np.random.default_rng(seed)
    return [S.sample_spec(rng, allow_held_out=False, simple=simple) for _ in range(n)]


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) in [-1, 1] -> (F, H, W, 3) uint8."""
    return ((video.permute(0, 2, 3, 1) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def score(spec: S.ConceptSpec, video: np.ndarray) -> dict:
    """Detector verdicts for one video against its spec."""
    a, m = spec.appearance, spec.motion
    sprite = detect_sprite(video)
    bg_colour, bg_pattern = detect_background(video)
    motion = detect_motion(sprite["positions"])
    family_ok = motion["family"] == m.family
    direction_ok = m.direction is not None and motion["direction"] == m.direction
    return {
        "sprite_colour": sprite["colour"] == a.colour,
        "bg_colour": bg_colour == a.bg_colour,
        "shape": sprite["shape"] == a.shape,
        "pattern": sprite["pattern"] == a.pattern,
        "bg_pattern": bg_pattern == a.bg_pattern,
        "motion": direction_ok if m.direction is not None else family_ok,
        "motion_family": family_ok,
        "detected": {
            "colour": sprite["colour"],
            "shape": sprite["shape"],
            "pattern": sprite["pattern"],
            "bg": [bg_colour, bg_pattern],
            "family": motion["family"],
            "direction": motion["direction"],
        },
    }


METRICS = ("sprite_colour", "bg_colour", "motion", "motion_family", "shape", "pattern", "bg_pattern")


def summarize(rows: list[dict]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) if rows else float("nan") for k in METRICS}


@dataclass
class Sampler:
    """The sampler settings scored: the flags', else the model's stored defaults."""

    steps: int
    guidance_scale: float
    shift: float
    self_conditioning: bool

    @classmethod
    def of(cls, model: Any, args: argparse.Namespace) -> Sampler:
        cfg = model.config
        return cls(
            steps=args.steps or int(cfg["sample_steps"]),
            guidance_scale=float(cfg["guidance_scale"] if args.guidance is None else args.guidance),
            shift=float(cfg["sample_shift"] if args.shift is None else args.shift),
            self_conditioning=not args.no_self_cond and bool(cfg["sample_self_cond"]),
        )


def score_set(model: Any, specs: list, sampler: Sampler, args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """(summary, per-prompt rows) of one prompt set: the generated videos, and as yardsticks the real
    renders and the real renders through the model's codec, read by the same detectors."""
    rows, real_rows, codec_rows = [], [], []
    for i in range(0, len(specs), args.batch):
        chunk = specs[i : i + args.batch]
        videos = model.generate_batch(
            [S.caption(s) for s in chunk],
            seeds=[args.seed + i + j for j in range(len(chunk))],
            **dataclasses.asdict(sampler),
        )
        reals = [
            S.render(spec, frames=model.info.frames, size=model.info.height, seed=args.seed + i + j)
            for j, spec in enumerate(chunk)
        ]
        real_t = torch.from_numpy(np.stack(reals)).permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
        through = model.decode_latents(model.encode_video(real_t)).clamp(-1.0, 1.0)
        for spec, video, real, coded in zip(chunk, videos, reals, through):
            rows.append(score(spec, to_uint8(video)) | {"prompt": S.caption(spec)})
            real_rows.append(score(spec, real))
            codec_rows.append(score(spec, to_uint8(coded)))
    summary = {
        "n": len(specs),
        "generated": summarize(rows),
        "real_renders": summarize(real_rows),
        "real_through_codec": summarize(codec_rows),
    }
    return summary, rows


def print_table(model: Any, sampler: Sampler, results: dict, passed: dict[str, bool], elapsed: float) -> None:
    """Each metric for each set (generated, real, through the codec), and the gate's verdict."""
    print(
        f"toy model {model.info.model_id} ({model.info.fingerprint}): steps {sampler.steps}, guidance "
        f"{sampler.guidance_scale}, shift {sampler.shift}, self-cond {sampler.self_conditioning}; {elapsed:.0f} s"
    )
    print(
        f"{'metric':<15}" + "".join(f"{n + ' gen':>18}{n + ' real':>18}{n + ' codec':>18}" for n in results)
    )
    for k in METRICS:
        line = f"{k:<15}"
        for r in results.values():
            line += (
                f"{r['generated'][k]:>18.1%}{r['real_renders'][k]:>18.1%}{r['real_through_codec'][k]:>18.1%}"
            )
        print(line)
    gate = results["gate_simple"]["generated"]
    verdicts = [f"{k} {gate[k]:.1%} >= {v:.0%} {'PASS' if passed[k] else 'FAIL'}" for k, v in GATE.items()]
    print("gate (gate_simple, generated): " + ", ".join(verdicts))
    print("GATE " + ("PASSED" if all(passed.values()) else "FAILED"))


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    model = load_toy(args.model)
    sampler = Sampler.of(model, args)
    sets = {
        "gate_simple": prompt_set(args.seed, args.n, True),
        "full": prompt_set(args.seed + 1, args.n_full, False),
    }
    results: dict[str, dict] = {}
    per_prompt: dict[str, list] = {}
    for name, specs in sets.items():
        results[name], per_prompt[name] = score_set(model, specs, sampler, args)
    gate = results["gate_simple"]["generated"]
    passed = {k: gate[k] >= v for k, v in GATE.items()}
    elapsed = time.time() - t0
    print_table(model, sampler, results, passed, elapsed)

    report = {
        "model": model.info.model_id,
        "fingerprint": model.info.fingerprint,
        "sampler": dataclasses.asdict(sampler),
        "prompt_seed": args.seed,
        "prompt_sets": {
            "gate_simple": "sample_spec(simple=True, allow_held_out=False): solid sprite, plain background, no dynamics",
            "full": "sample_spec(simple=False, allow_held_out=False): reported, not gated",
        },
        "motion_metric": "directional families: detected direction == true; others: detected family == true",
        "results": results,
        "gate": {"thresholds": GATE, "passed": passed, "all_passed": all(passed.values())},
        "seconds": round(elapsed, 1),
        "per_prompt": per_prompt,
    }
    json.dumps(report)  # fail loudly here rather than in a consumer if anything is not serialisable
    folder = toy_folder(args.model)
    if not args.no_json:
        path = Path(args.json) if args.json else folder / "eval_toy.json"
        write_json(path, report)
        print(f"wrote {path}")
    if args.write_defaults:
        target = folder / "toy_config.json"
        comps_cfg = load_toy_components(args.model).config
        comps_cfg.update(
            sample_steps=sampler.steps,
            guidance_scale=sampler.guidance_scale,
            sample_shift=sampler.shift,
            sample_self_cond=sampler.self_conditioning,
        )
        write_json(target, comps_cfg)
        print(f"stored sampler defaults in {target}")


if __name__ == "__main__":
    main()
