"""`setseq bench --shape`: the real-size architectures, the model-FLOP count, and the CPU mode end to end."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from setseq import lora as L
from setseq.backbones.registry import load_backbone
from setseq.errors import SetseqError
from setseq.tools.speed import (
    SHAPES,
    bench_sizes,
    count_parameters,
    latent_shape,
    run_shape_bench,
    step_flops,
)
from setseq.tools.speed_procs import run_in_processes

# Parameters of the published checkpoints' DiTs, in billions (model cards / config.json of each; LTX-2: the
# model card's 19B, ltx-2-19b-dev).
PUBLISHED = {
    "wan-1.3b": 1.42,
    "wan-14b": 14.29,
    "cogvideox-5b": 5.57,
    "ltx": 1.92,
    "hunyuan": 12.82,
    "ltx-2": 19.0,
    "hunyuan-1.5": 8.33,  # "8.3B" on tencent/HunyuanVideo-1.5's model card
    "ltx-2.5": 18.92,  # LTX-2's dimensions with the 2.5 switches (the published 2.5 config not read here)
    "skyreels-v2-1.3b": 1.42,  # Wan 2.1 1.3B's shape
    "skyreels-v2-14b": 14.29,  # Wan 2.1 14B's shape
    "sana-video-2b": 2.06,  # SANA-Video_2B_480p_diffusers' transformer config (mlp_ratio 3), counted
    "kandinsky5-lite": 2.01,  # "2B" on kandinskylab/Kandinsky-5.0-T2V-Lite-sft-5s-Diffusers' model card
    "kandinsky5-pro": 19.31,  # "19B" on kandinskylab/Kandinsky-5.0-T2V-Pro-sft-5s' model card
    "minimax-h3": 33.1,  # MiniMaxAI/MiniMax-H3's 61.7 GiB bf16 transformer partition (diffusers' docs) / 2 bytes
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shapes_are_the_published_architectures(name):
    assert count_parameters(name) / 1e9 == pytest.approx(PUBLISHED[name], rel=0.01)


def test_flop_count_matches_torch_counter(tiny_wan_dir):
    """Forward and backward FLOPs counted on the meta copy equal torch's FlopCounterMode on a real step
    (math attention, rank-1 LoRA so that the LoRA's own products are small)."""
    bb = load_backbone("wan", tiny_wan_dir, torch.device("cpu"), torch.float32)
    spec = L.LoraSpec(rank=1, alpha=1.0, basis="down", targets=tuple(bb.info.lora_targets))
    L.inject(bb.transformer, spec)
    L.set_stage(bb.transformer, 2)
    lat = latent_shape(bb, 9, 32, 48, 16)
    prompt = bb.encode_prompt(["a sks dog"])
    ours = step_flops(bb, spec, 2, 2, lat, prompt)
    noisy = torch.randn(2, *lat)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fwd:
        out = bb.predict(noisy, torch.full((2,), 0.5), prompt.expand(2))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as bwd:
        out.square().mean().backward()
    # torch's forward also holds the LoRA's own products (U D, and D x kept for dU), which ours leaves out
    assert 0.95 * fwd.get_total_flops() <= ours["forward"] <= fwd.get_total_flops()
    # torch's backward also holds the LoRA's own gradient products (ours leaves them out): a little above ours
    assert 0.9 * bwd.get_total_flops() <= ours["backward"] <= bwd.get_total_flops()
    assert ours["backward"] > 0.5 * ours["forward"]


# The widest (width 3072-5120) take 15-50 s each on 2 cores even with one block, HunyuanVideo 1.5 (its 1256 text
# tokens through a 2048-wide block and token refiner) about 70 s: in the slow run.
HEAVY = {
    "wan-14b", "cogvideox-5b", "hunyuan", "ltx-2", "ltx-2.5", "hunyuan-1.5", "skyreels-v2-14b", "kandinsky5-pro",
    "minimax-h3",
}  # fmt: skip


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in sorted(SHAPES)]
)
def test_shape_bench_runs_on_cpu(name):
    rows = run_shape_bench(
        name, device="cpu", layers=1, size=(64, 64), frames=[9], rank=4, stage1_batch=1, steps=1, warmup=0,
        log=lambda _m: None,
    )  # fmt: skip
    assert [(r.stage, r.frames) for r in rows] == [(1, 1), (2, 9)]
    for r in rows:
        # MFU above 1 would mean FLOPs over-counted or the peak under-measured; 1.25 leaves room for timing
        # noise on shared CI cores.
        assert r.step_s > 0 and r.flops > 0 and 0 < r.mfu < 1.25
        assert r.tokens > 0 and r.peak_bytes > 4 * count_parameters(name, layers=1)  # fp32 weights + more
    assert rows[1].tokens > rows[0].tokens  # a clip has more tokens than a frame


def test_unknown_shape_and_missing_cuda():
    with pytest.raises(SetseqError, match="unknown shape"):
        count_parameters("wan-99b")
    if not torch.cuda.is_available():
        with pytest.raises(SetseqError, match="no CUDA device"):
            run_shape_bench("wan-1.3b", device="cuda")


def test_shape_bench_with_fp8_and_block_swap_on_cpu():
    """The 14B-on-a-small-card settings (`--fp8 --block-swap N`) run through the same timed step."""
    lines: list[str] = []
    rows = run_shape_bench(
        "wan-1.3b", device="cpu", layers=2, size=(64, 64), frames=[9], rank=4, stage1_batch=1, steps=1,
        warmup=0, fp8=True, block_swap=1, log=lines.append,
    )  # fmt: skip
    assert [(r.stage, r.frames) for r in rows] == [(1, 1), (2, 9)]
    assert all(r.step_s > 0 and r.flops > 0 for r in rows)
    assert any("fp8 on; block swap 1" in line for line in lines)


def test_shape_bench_with_fsdp_offload_on_cpu():
    """`--fsdp-offload` (FSDP2's CPUOffloadPolicy, the alternative to block swap) times the same step on the
    DiT FSDP2 holds, each block a unit."""
    from torch.distributed.fsdp import FSDPModule

    from setseq.tools import speed
    from setseq.train.distributed import close_processes

    built = []
    real_build = speed.build_backbone

    def build(*args, **kwargs):
        built.append(real_build(*args, **kwargs))
        return built[-1]

    lines: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(speed, "build_backbone", build)
        try:
            rows = run_shape_bench(
                "wan-1.3b", device="cpu", layers=2, size=(64, 64), frames=[9], rank=4, stage1_batch=1, steps=1,
                warmup=0, fsdp_offload=True, log=lines.append,
            )  # fmt: skip
        finally:
            close_processes()
    assert [(r.stage, r.frames) for r in rows] == [(1, 1), (2, 9)]
    assert all(r.step_s > 0 and r.flops > 0 for r in rows)
    assert any("block swap 0; FSDP2 offload on" in line for line in lines)
    assert sum(isinstance(m, FSDPModule) for m in built[0].transformer.modules()) == 3  # 2 blocks + the DiT


@pytest.mark.parametrize(
    "procs,replicate,fp8",
    [
        pytest.param(1, False, False, marks=pytest.mark.slow),
        (2, False, True),
        pytest.param(2, True, False, marks=pytest.mark.slow),
    ],
)
def test_shape_bench_in_launched_processes_on_cpu(procs, replicate, fp8):
    """`--procs P`: torchrun starts P processes, each times the rows (sharded by FSDP2 when P > 1, or
    replicated with `--replicate`; fp8 base weights with `--fp8`) and reports its own step time, resident
    memory before the steps and peak resident memory over them; both hold at least this process's share of
    the weights (1/P of them under FSDP2)."""
    lines: list[str] = []
    z = bench_sizes("cpu", None, [9], (64, 64), 2)
    rows = run_in_processes(
        "wan-1.3b", procs, z, rank=4, stage1_batch=1, steps=1, warmup=0, replicate=replicate, fp8=fp8,
        log=lines.append,
    )  # fmt: skip
    assert sorted((r.stage, r.frames, r.rank) for r in rows) == [
        (s, f, r) for s, f in ((1, 1), (2, 9)) for r in range(procs)
    ]
    weights = (1 if fp8 else 4) * count_parameters("wan-1.3b", layers=2)  # (fp8: most of them 1 byte)
    share = weights if replicate else weights / procs
    for r in rows:
        assert r.step_s > 0 and r.tokens > 0 and r.micro_batch == 1
        # bytes (not kB), and at least this process's shard of the weights, before the steps and during them
        assert share < r.held_bytes and share < r.peak_bytes < 64 * 2**30, r
    assert ("sharded by FSDP2" in lines[0]) == (procs > 1 and not replicate), lines[0]
    assert ("replicated" in lines[0]) == replicate and ("fp8 on" in lines[0]) == fp8, lines[0]
    assert sum("| 2 | 9 | 1 |" in line for line in lines) == procs  # a row per process


def test_procs_refusals_are_one_line(capsys, monkeypatch):
    """--procs below 1, more processes than GPUs, without --shape, or with --block-swap or --fsdp-offload;
    --replicate without --procs; --block-swap with --fsdp-offload."""
    from setseq.cli import main
    from setseq.tools import speed_procs

    def one_line(argv: list[str], *needles: str) -> None:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("setseq: error:"), err
        assert all(n in err for n in needles), err

    one_line(["bench", "--shape", "wan-1.3b", "--device", "cpu", "--procs", "0"], "--procs 0", "--procs 1")
    one_line(["bench", "--procs", "2"], "--shape")
    one_line(["bench", "--shape", "wan-1.3b", "--procs", "2", "--block-swap", "1"], "--block-swap")
    one_line(["bench", "--shape", "wan-1.3b", "--procs", "2", "--fsdp-offload"], "--fsdp-offload")
    one_line(["bench", "--shape", "wan-1.3b", "--block-swap", "1", "--fsdp-offload"], "two ways", "two runs")
    one_line(["bench", "--shape", "wan-1.3b", "--replicate"], "--replicate", "--procs")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(speed_procs, "visible_gpus", lambda: 1)
    one_line(["bench", "--shape", "wan-1.3b", "--device", "cuda", "--procs", "2"], "1 GPU(s)", "--procs 1")
