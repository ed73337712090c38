"""Wan 2.2 A14B's two experts: routing by timestep, one LoRA per expert trained in one run, one export per
expert that diffusers loads into `transformer` and `transformer_2`."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from setseq import lora as L
from setseq.backbones.registry import load_backbone
from setseq.backbones.wan import WanExperts
from setseq.cli import main
from setseq.config_load import resolve_config
from setseq.export import load_setseq
from setseq.train.run import train

OVERRIDES = [
    "lora.rank=4",
    "stage1.steps=3",
    "stage2.steps=3",
    "stage1.batch_size=4",
    "stage2.batch_size=4",
    "stage2.micro_batch=2",
    "train.tensorboard=false",
    "stage1.lr=1e-2",
    "stage2.lr=1e-2",
]


@pytest.fixture(scope="module")
def a14b_dir(tmp_path_factory):
    from setseq.backbones.wan import build_tiny_wan

    return build_tiny_wan(tmp_path_factory.mktemp("a14b") / "model", two_experts=True)


@pytest.fixture(scope="module")
def a14b_run(a14b_dir, tmp_path_factory):
    from setseq.data.video import write_video
    from tests.helpers import moving_square_video

    root = tmp_path_factory.mktemp("a14brun")
    video = root / "clip.mp4"
    write_video(video, moving_square_video(13, (40, 56)), fps=8)
    flags = {"model": {"backbone": "wan", "path": str(a14b_dir)}, "data": {"video": str(video), "frames": 9}}
    train(resolve_config(None, flags, OVERRIDES), root / "run", progress=False, log=lambda s: None)
    return root / "run"


def test_samples_go_to_the_expert_of_their_timestep(a14b_dir):
    bb = load_backbone("wan", str(a14b_dir))
    experts = bb.transformer
    assert isinstance(experts, WanExperts) and experts.boundary == pytest.approx(875.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, 3, 4, 4, generator=g)
    text = torch.randn(3, 12, 32, generator=g)
    t = torch.tensor([950.0, 100.0, 875.0])  # high, low, high (the boundary belongs to the high expert)
    with torch.no_grad():
        mixed = experts(hidden_states=x, timestep=t, encoder_hidden_states=text)[0]
        for i, expert in enumerate((experts.high, experts.low, experts.high)):
            alone = expert(
                hidden_states=x[i : i + 1], timestep=t[i : i + 1], encoder_hidden_states=text[i : i + 1]
            )
            torch.testing.assert_close(mixed[i : i + 1], alone[0])
        other = experts.low(hidden_states=x[:1], timestep=t[:1], encoder_hidden_states=text[:1])[0]
    assert (mixed[:1] - other).abs().max() > 1e-4  # the two experts differ: the routing matters


def test_one_lora_per_expert_trained_and_exported(a14b_run):
    lora = load_setseq(a14b_run / "setseq.safetensors")
    assert {m.split(".", 1)[0] for m in lora.modules} == {"high", "low"}
    n = len(lora.modules) // 2
    assert n == len([m for m in lora.modules if m.startswith("high.")])
    for e in ("high", "low"):  # both experts received samples and learned (identity and motion)
        for part in ("identity.up", "motion.up"):
            assert any(lora.tensors[k].abs().max() > 0 for k in lora.tensors if k.startswith(e) and part in k)
        for fmt in ("diffusers", "comfyui"):
            t = load_file(str(a14b_run / f"lora_{fmt}_{e}_noise.safetensors"))
            assert len([k for k in t if k.endswith("lora_A.weight")]) == n
            assert not any(".high." in k or ".low." in k for k in t)
    assert not (a14b_run / "lora_diffusers.safetensors").exists()


def test_diffusers_loads_each_expert_file_into_its_transformer(a14b_run, a14b_dir):
    from diffusers import WanPipeline

    from setseq.infer.generate import Personalized

    ours = Personalized.load(a14b_run, log=lambda s: None).backbone.transformer
    pipe = WanPipeline.from_pretrained(str(a14b_dir))
    pipe.load_lora_weights(str(a14b_run / "lora_diffusers_high_noise.safetensors"))
    pipe.load_lora_weights(
        str(a14b_run / "lora_diffusers_low_noise.safetensors"), load_into_transformer_2=True
    )
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 3, 4, 4, generator=g)
    text = torch.randn(1, 12, 32, generator=g)
    for t, theirs, mine in ((900.0, pipe.transformer, ours.high), (300.0, pipe.transformer_2, ours.low)):
        kw = dict(hidden_states=x, timestep=torch.tensor([t]), encoder_hidden_states=text, return_dict=False)
        with torch.no_grad():
            torch.testing.assert_close(theirs(**kw)[0], mine(**kw)[0], rtol=1e-4, atol=1e-5)
    assert len(L.get_layers(ours)) == 2 * len(L.get_layers(ours.high))


def test_export_asks_which_expert(a14b_run, tmp_path, capsys):
    code = main(["export", str(a14b_run), "--format", "diffusers", "--out", str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and "--expert high" in err and len(err.strip().splitlines()) == 1
    argv = [
        "export",
        str(a14b_run),
        "--format",
        "diffusers",
        "--expert",
        "low",
        "--out",
        str(tmp_path / "l.safetensors"),
    ]
    assert main(argv) == 0
    assert (
        load_file(str(tmp_path / "l.safetensors")).keys()
        == load_file(str(a14b_run / "lora_diffusers_low_noise.safetensors")).keys()
    )


def _ks_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest gap between the empirical CDFs of two samples of sigmas, on a grid of [0, 1] in steps of
    0.001."""
    grid = torch.linspace(0, 1, 1001)
    cdf = [torch.searchsorted(x.sort().values, grid) / len(x) for x in (a, b)]
    return float((cdf[0] - cdf[1]).abs().max())


def test_per_step_routing_gives_every_process_one_expert_and_keeps_the_timesteps(a14b_dir):
    """`model.expert_routing=step`: in each step, the micro-batches of both of 2 processes (4 micro-batches of
    2 samples, 2 each) draw timesteps that `WanExperts` all sends to one expert; over 3000 steps the timesteps
    pooled are distributed as the backbone's own draws (the share of high-noise steps within 4 standard
    errors of its share of the timesteps; a two-sample KS distance under 2.5x its 1% critical value, which a
    50/50 expert choice or an expert's range left unrestricted exceeds several times over)."""
    from setseq.train.distributed import Processes
    from setseq.train.loop import step_expert, step_generator

    bb = load_backbone("wan", str(a14b_dir))
    boundary = bb.transformer.boundary
    (_, lo_high, _), (_, _, hi_low) = bb.expert_sigmas
    assert hi_low < lo_high and float(torch.tensor(lo_high) * 1000.0) >= boundary > float(
        torch.tensor(hi_low) * 1000.0
    )  # the two ranges meet at the boundary, as the forward splits (t = sigma x 1000 in float32)
    share = bb.sigma_share(lo_high, 1.0)
    assert 0.05 < share < 0.95 and share + bb.sigma_share(0.0, hi_low) == pytest.approx(1.0, abs=1e-6)

    steps, micro, world = 3000, 2, 2
    routed, high_steps = [], 0
    for step in range(steps):
        experts = set()
        for rank in range(world):
            procs = Processes(rank, world)
            span = step_expert(bb, 0, 1, step)  # of (seed, stage, step) alone: the same on every process
            for k in (k for k in range(4) if procs.mine(k)):
                sig = bb.sample_sigmas(micro, generator=step_generator(0, 1, step, k), between=span)
                experts |= set((sig.float() * 1000.0 >= boundary).tolist())
                routed.append(sig)
        assert len(experts) == 1, step  # every sample of the step, on both processes: one expert
        high_steps += experts == {True}
    routed = torch.cat(routed)
    plain = bb.sample_sigmas(len(routed), generator=torch.Generator().manual_seed(1))
    assert (plain * 1000.0 >= boundary).float().mean().item() == pytest.approx(share, abs=0.01)
    stderr = (share * (1 - share) / steps) ** 0.5
    assert abs(high_steps / steps - share) < 4 * stderr, (high_steps / steps, share)
    ks = _ks_distance(routed, plain)
    # the 1% critical value for two samples, with the routed draws counted as `steps` (a step's 8 samples
    # share their expert, so they are not independent)
    assert ks < 2.5 * 1.63 * (1 / steps + 1 / len(plain)) ** 0.5, ks


@pytest.mark.parametrize("weighting", ["uniform", "logit_normal"])
def test_a_sigma_range_drawn_with_its_share_is_the_plain_distribution(weighting):
    """`flow_matching.sample_sigmas(between=)` stays in its range, `sigma_share` is the plain draws' share of
    it, and the two ranges mixed by their shares are distributed as the plain draws (their KS distance under
    0.015 at 40000 draws each, where shares of 1/2, or u uniform within the range under the logit-normal
    weighting, are 0.15 or more off)."""
    from setseq.functional import flow_matching as fm

    n, shift, b = 40000, 3.0, 0.875
    plain = fm.sample_sigmas(n, shift=shift, weighting=weighting, generator=torch.Generator().manual_seed(0))
    share = fm.sigma_share(b, 1.0, shift=shift, weighting=weighting)
    assert share == pytest.approx((plain >= b).float().mean().item(), abs=0.01)
    k = round(n * share)
    high = fm.sample_sigmas(
        k, shift=shift, weighting=weighting, generator=torch.Generator().manual_seed(1), between=(b, 1.0)
    )
    low = fm.sample_sigmas(
        n - k, shift=shift, weighting=weighting, generator=torch.Generator().manual_seed(2), between=(0.0, b)
    )
    assert high.min() >= b and low.max() <= b and high.dtype == low.dtype == torch.float32
    ks = _ks_distance(torch.cat([high, low]), plain)
    assert ks < 0.015, ks  # the two-sample 1% critical value here is 0.0115
