"""Sharding the base model with FSDP2 (`model.fsdp=true`): two CPU processes (gloo) each keep 1/P of every
DiT block's weights (torch's `fully_shard`, one unit per block plus the root) and train the same LoRA as one
unsharded process with the same global batch."""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from test_distributed import _free_port, _losses, _train

from setseq import lora as L
from setseq.dtensors import whole
from setseq.tools.testing import assert_close_to_scale


def _units_check(rank: int, world: int, port: int, folder: str, a14b: str, errors) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    from setseq.backbones.registry import load_backbone
    from setseq.config import ModelConfig
    from setseq.errors import SetseqError
    from setseq.train.distributed import Processes, parallelize

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        procs = Processes(rank, world, torch.device("cpu"))
        bb = load_backbone("wan", folder, torch.device("cpu"), torch.float32)
        model = bb.transformer
        whole = {n: p.shape for n, p in model.named_parameters()}
        L.inject(model, L.LoraSpec(4, 4.0, "down", (r"blocks\.\d+\.attn1\.to_q$", r"ffn\.net\.0\.proj$")))
        whole_lora = {n: p.shape for n, p in model.named_parameters()}
        parallelize(model, procs, ModelConfig(backbone="wan", path=folder, fsdp=True, fsdp_prefetch=1))
        units = [m for m in model.modules() if isinstance(m, FSDPModule)]
        assert len(units) == len(model.blocks) + 1, len(units)  # one per block, plus the root
        kept = total = 0
        for n, p in model.named_parameters():
            assert isinstance(p, DTensor), n
            assert tuple(p.shape) == tuple(whole_lora[n]), n  # the global shape is the whole one
            rows = p.shape[0]
            mine = p.to_local().shape[0]
            assert mine == len(range(rows)[rank * -(-rows // world) : (rank + 1) * -(-rows // world)]), (
                n,
                mine,
            )
            kept += p.to_local().numel()
            total += p.numel()
        assert total > sum(s.numel() for s in whole.values())  # the LoRA is sharded too
        assert kept <= total // world + sum(s[1:].numel() for s in whole_lora.values()), (kept, total)

        # Wan 2.2 A14B: each expert's blocks are units and each expert a root of its own (the pipeline calls
        # each directly); every process keeps 1/P of each expert's block weights.
        two = load_backbone("wan", a14b, torch.device("cpu"), torch.float32)
        experts = two.transformer
        L.inject(experts, L.LoraSpec(4, 4.0, "down", (r"attn1\.to_q$",)))
        sizes = {n: p.numel() for n, p in experts.named_parameters()}
        try:
            parallelize(
                experts, procs, ModelConfig(backbone="wan", path=a14b, fsdp=True, expert_routing="sample")
            )
            raise AssertionError("A14B was sharded with per-sample routing")
        except SetseqError as e:
            assert "expert_routing=sample" in str(e) and "model.expert_routing=step" in str(e), str(e)
        parallelize(experts, procs, ModelConfig(backbone="wan", path=a14b, fsdp=True))
        roots = [m for m in (experts.high, experts.low) if isinstance(m, FSDPModule)]
        assert len(roots) == 2 and not isinstance(experts, FSDPModule)
        units = [m for m in experts.modules() if isinstance(m, FSDPModule)]
        assert len(units) == len(experts.high.blocks) + len(experts.low.blocks) + 2, len(units)
        for name in ("high", "low"):
            block = {n: p for n, p in experts.named_parameters() if n.startswith(f"{name}.blocks.")}
            assert block and all(isinstance(p, DTensor) for p in block.values())
            for n, p in block.items():  # this process's chunk of the rows, as above
                c = -(-p.shape[0] // world)
                assert p.to_local().shape[0] == len(range(p.shape[0])[rank * c : (rank + 1) * c]), n
            mine = sum(p.to_local().numel() for p in block.values())
            whole = sum(sizes[n] for n in block)
            # 1/P of the block weights, up to the rows that do not divide (e.g. the (1, 6, D) modulation table)
            uneven = sum(p[0].numel() for p in block.values() if p.shape[0] % world)
            assert abs(mine - whole / world) <= uneven < 0.05 * whole, (name, mine, whole, uneven)
    except BaseException as e:  # reported to the parent
        errors.put(f"rank {rank}: {type(e).__name__}: {e}")
    finally:
        dist.destroy_process_group()


def test_each_process_holds_one_half_of_every_block_weight(tiny_wan_dir, tmp_path):
    """FSDP2 units: one per block plus the root; every parameter (base and LoRA) is a DTensor whose local
    rows are this process's chunk. Wan 2.2 A14B: each expert sharded the same way, as a root of its own
    (per-step routing; per-sample routing is refused with a one-line error)."""
    from setseq.backbones.wan import build_tiny_wan

    a14b = build_tiny_wan(tmp_path / "a14b", two_experts=True)
    _in_two_processes(_units_check, str(tiny_wan_dir), str(a14b))


def _in_two_processes(target, *args) -> None:
    """Run `target(rank, 2, port, *args, errors)` in 2 spawned processes; fail on what either reports."""
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=target, args=(r, 2, port, *args, errors)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    found = [errors.get() for _ in range(errors.qsize())] if not errors.empty() else []
    assert not found, found
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]


def _fp8_check(rank: int, world: int, port: int, folder: str, errors) -> None:
    import copy

    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from setseq.backbones.registry import load_backbone
    from setseq.config import ModelConfig
    from setseq.tools.testing import assert_close_to_scale
    from setseq.train.distributed import Processes, parallelize

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = load_backbone("wan", folder, torch.device("cpu"), torch.float32).transformer
        layers = L.inject(
            model, L.LoraSpec(4, 4.0, "down", (r"attn1\.to_q$", r"ffn\.net\.0\.proj$"), fp8=True)
        )
        gen = torch.Generator().manual_seed(3)
        for layer in layers.values():  # a LoRA that changes the output
            layer.up.data.normal_(0, 0.1, generator=gen)
        L.set_stage(model, 1)  # trainable identity LoRA, no DropConnect
        one = copy.deepcopy(model)  # the same fp8 model, unsharded
        parallelize(
            model,
            Processes(rank, world, torch.device("cpu")),
            ModelConfig(backbone="wan", path=folder, fsdp=True),
        )
        for name, layer in L.get_layers(model).items():
            w = layer.base.weight
            assert isinstance(w, DTensor) and w.to_local().dtype == torch.float8_e4m3fn, name
            assert w.to_local().shape[0] == -(-w.shape[0] // world), name  # 1/P of the rows, in fp8
        c = model.config
        x = torch.randn(2, c.in_channels, 3, 8, 8, generator=gen)
        text = torch.randn(2, 5, c.text_dim, generator=gen)
        t = torch.tensor([300.0, 700.0])
        outs, grads = [], []
        for m in (one, model):
            y = m(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
            y.square().mean().backward()
            outs.append(y.detach())
            grads.append({n: whole(lay.up.grad) for n, lay in L.get_layers(m).items()})
        assert_close_to_scale({"out": outs[1]}, {"out": outs[0]})
        # every process ran the same batch and FSDP2 sums the gradients (as training does: see parallelize)
        assert_close_to_scale(grads[1], {n: world * g for n, g in grads[0].items()})
        assert all(g.abs().max() > 0 for g in grads[0].values())
    except BaseException as e:  # reported to the parent
        errors.put(f"rank {rank}: {type(e).__name__}: {e}")
    finally:
        dist.destroy_process_group()


def _meta_check(rank: int, world: int, port: int, folder: str, errors) -> None:
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from setseq.backbones.registry import load_backbone
    from setseq.config_load import resolve_config
    from setseq.train.distributed import Processes, parallelize
    from setseq.train.setup import load_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        flags = {"model": {"backbone": "wan", "path": folder}, "data": {"video": "x.mp4"}}
        cfg = resolve_config(None, flags, ["model.fsdp=true", "model.dtype=bfloat16", "model.fp8=true"])
        procs = Processes(rank, world, torch.device("cpu"))
        bb = load_model(cfg, torch.device("cpu"), procs)
        dits = [bb.transformer.high, bb.transformer.low]
        on_meta = {p.is_meta for d in dits for p in d.parameters()}
        assert on_meta == {rank == 1}, (rank, on_meta)  # process 1 read no weight of either expert
        spec = L.LoraSpec(4, 4.0, "down", (r"attn1\.to_q$", r"ffn\.net\.0\.proj$"), fp8=True)
        for d in dits:
            L.inject(d, spec, seed=5)
        parallelize(bb.transformer, procs, cfg.model)
        # What every process should hold: its rows of the weights read from disk, as process 0 prepared them.
        ref = load_backbone("wan", folder, torch.device("cpu"), torch.bfloat16).transformer
        for d in (ref.high, ref.low):
            L.inject(d, spec, seed=5)
        want = dict(ref.named_parameters())
        for name, p in bb.transformer.named_parameters():
            assert isinstance(p, DTensor) and p.dtype == want[name].dtype, (name, p.dtype, want[name].dtype)
            rows = -(-p.shape[0] // world)
            mine = want[name][rank * rows : (rank + 1) * rows]
            assert torch.equal(p.to_local().view(torch.uint8), mine.view(torch.uint8)), name  # bit for bit
        assert {p.dtype for p in bb.transformer.parameters()} >= {torch.bfloat16, torch.float32}
        assert any(p.dtype == torch.float8_e4m3fn for p in bb.transformer.parameters())
        wanted = dict(ref.named_buffers())
        for name, buf in bb.transformer.named_buffers():
            assert torch.equal(buf, wanted[name]), name  # e.g. the rotary tables, in process 0's dtype
    except BaseException as e:  # reported to the parent
        errors.put(f"rank {rank}: {type(e).__name__}: {e}")
    finally:
        dist.destroy_process_group()


def test_only_process_0_reads_the_dit_and_the_others_receive_their_shards(tmp_path):
    """Under model.fsdp the processes other than 0 build the DiT with parameters on the meta device (the node
    holds one whole DiT in host memory, not one per process); once sharded, each holds exactly its rows of
    process 0's weights, in process 0's dtypes (bfloat16, with the modules diffusers keeps in float32, and fp8
    base weights), and process 0's buffers. On tiny Wan 2.2 A14B: both experts."""
    from setseq.backbones.wan import build_tiny_wan

    a14b = build_tiny_wan(tmp_path / "a14b", two_experts=True)
    _in_two_processes(_meta_check, str(a14b))


def test_fp8_base_weights_are_sharded_and_gathered_in_fp8(tiny_wan_dir):
    """`model.fp8=true` with `model.fsdp=true`: each process holds 1/P of every fp8 weight's rows, still in
    float8 (FSDP2 gathers them as stored, so the gather moves 1 byte a weight), and the sharded DiT's output
    and LoRA gradients equal those of the unsharded fp8 DiT."""
    _in_two_processes(_fp8_check, str(tiny_wan_dir))


def test_two_sharded_processes_match_one(tiny_wan_dir, clip_mp4, tmp_path):
    """End to end with the prior videos and a training sample on: both are generated by every process
    together (each DiT block gathers from all), so nothing waits on a process that is not running the DiT.
    The fused LoRA path runs on the block weights FSDP2 gathers."""
    extra = ["regularizers.prior_videos=1", "regularizers.prior_steps=2", "train.sample_every=1"]
    extra += ["lora.path=fused", "model.fsdp_prefetch=2"]
    extra += ["train.sample_steps=2", "train.memory_check=true"]  # the estimate runs on a sharded model
    one, two = tmp_path / "one", tmp_path / "two"
    _train([sys.executable, "-m", "setseq.cli"], one, tiny_wan_dir, clip_mp4, extra)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    out = _train(
        [*launch, "--main_process_port", str(_free_port()), "-m", "setseq.cli"],
        two,
        tiny_wan_dir,
        clip_mp4,
        [*extra, "model.fsdp=true"],
    )
    assert "sharded across 2 processes by FSDP2 (3 units)" in out

    a, b = load_file(one / "setseq.safetensors"), load_file(two / "setseq.safetensors")
    assert a.keys() == b.keys() and a
    assert_close_to_scale(b, a)  # per tensor, relative to its scale (reduction order differs)
    assert any(".motion" in k and a[k].abs().max() > 0 for k in a)
    for (_, _, x), (_, _, y) in zip(_losses(one), _losses(two)):
        assert y == pytest.approx(x, rel=1e-4)
    assert sorted(p.name for p in (two / "samples").iterdir()) == sorted(
        p.name for p in (one / "samples").iterdir()
    )
    assert len(list((two / "cache").glob("prior-*.safetensors"))) == 1


def test_refusal_names_sharding_across_the_gpus_there_are(tmp_path, monkeypatch):
    """On a GPU-like device (meta) short of 60% of the blocks' linear weights (more than fp8 saves in bf16),
    with 8 GPUs visible the refusal names model.fsdp=true over 8 processes: FSDP2 keeps 1/P of the blocks
    plus 2 of the 8 blocks whole (the one running and the one prefetched), so 4 processes save 75% - 25%;
    with model.fsdp_prefetch=0, 4 processes do (75% - 12.5%). With no GPU it names block swap instead."""
    from setseq.backbones.registry import load_backbone
    from setseq.backbones.wan import build_tiny_wan
    from setseq.config_load import resolve_config
    from setseq.data.cache import EncodedConcept
    from setseq.errors import SetseqError
    from setseq.memory import GiB, estimate_training_memory
    from setseq.offload import device_linear_bytes, max_blocks, place
    from setseq.train import memory_plan
    from setseq.train.setup import lora_spec

    folder = build_tiny_wan(tmp_path / "wan8", layers=8)
    flags = {"model": {"backbone": "wan", "path": str(folder)}, "data": {"video": "x.mp4", "frames": 9}}
    over = ["stage1.batch_size=1", "stage2.batch_size=1", "train.gradient_checkpointing=true", "lora.rank=4"]
    cfg = resolve_config(None, flags, [*over, "model.dtype=bfloat16"])
    bb = load_backbone("wan", str(folder), torch.device("cpu"), torch.bfloat16)
    with torch.no_grad():
        prompt = bb.encode_prompt(["a red circle moving left"])
        shape = tuple(bb.encode_video(torch.zeros(1, 9, 3, 32, 32, dtype=torch.bfloat16)).shape[1:])
    meta = torch.device("meta")
    place(bb, meta, None)
    spec = lora_spec(cfg, bb)
    bb.transformer.enable_gradient_checkpointing()
    L.inject(bb.transformer, spec)
    data = EncodedConcept(
        torch.zeros(4, shape[0], 1, *shape[2:]), torch.zeros(1, *shape), prompt, prompt, "k"
    )
    full = max(
        estimate_training_memory(
            bb,
            spec,
            tuple(lat.shape[1:]),
            p,
            micro_batch=1,
            stage=s,
            dropconnect=0.5,
            gradient_checkpointing=True,
        ).total
        for s, lat, p in ((1, data.set_latents, data.static), (2, data.clip_latents, data.motion))
    )
    linears = device_linear_bytes(bb.transformer, max_blocks(bb.transformer), meta)
    monkeypatch.setenv("SETSEQ_DEVICE_MEMORY_GB", str((full - 0.6 * linears) / 0.95 / GiB))
    monkeypatch.setattr(memory_plan, "visible_gpus", lambda: 8)
    with pytest.raises(SetseqError, match="needs about") as err:
        memory_plan.check_memory(cfg, bb, spec, data, False, lambda s: None)
    assert "launch 8 processes with model.fsdp=true" in str(err.value)
    lean = resolve_config(None, flags, [*over, "model.dtype=bfloat16", "model.fsdp_prefetch=0"])
    with pytest.raises(SetseqError, match="needs about") as err:
        memory_plan.check_memory(lean, bb, spec, data, False, lambda s: None)
    assert "launch 4 processes with model.fsdp=true" in str(err.value)
    monkeypatch.setattr(memory_plan, "visible_gpus", lambda: 0)
    with pytest.raises(SetseqError, match="needs about") as err:
        memory_plan.check_memory(cfg, bb, spec, data, False, lambda s: None)
    assert "fsdp" not in str(err.value) and "model.block_swap=" in str(err.value)


def test_two_sharded_processes_killed_and_resumed_match_the_uninterrupted_run(
    tiny_wan_dir, clip_mp4, tmp_path
):
    """`kill -9` of a 2-process `model.fsdp=true` run (launcher and both workers) once it has checkpointed
    stage 1 step 2, then `--resume` under the launcher: the LoRA equals the uninterrupted 2-process run's
    exactly (the checkpoint holds whole tensors of the sharded LoRA and AdamW moments, which each process
    shards again on resume)."""
    import signal
    import subprocess
    import time

    from test_distributed import ARGS

    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    extra = ["model.fsdp=true", "train.checkpoint_every=1"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _train(
        [*launch, "--main_process_port", str(_free_port()), "-m", "setseq.cli"],
        whole,
        tiny_wan_dir,
        clip_mp4,
        extra,
    )

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    argv = [*launch, "--main_process_port", str(_free_port()), "-m", "setseq.cli", "train"]
    argv += ["--model", str(tiny_wan_dir), "--video", str(clip_mp4), "--out", str(killed), *ARGS, *extra]
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 300
        # stage 1 step 2 or any later checkpoint (the next one replaces it, so a poll delayed by a loaded
        # machine may see only a later one; the resumed run must match from any of them)
        ckpts = killed / "checkpoints"
        while not (ckpts.is_dir() and any(p.name >= "stage1-000002" for p in ckpts.glob("stage*-*"))):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its checkpoint"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers at once
    finally:
        proc.wait(60)
    assert not (killed / "setseq.safetensors").exists(), "the kill landed after the run finished"

    out = subprocess.run(
        [
            *launch,
            "--main_process_port",
            str(_free_port()),
            "-m",
            "setseq.cli",
            "train",
            "--resume",
            "--out",
            str(killed),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming" in out.stdout + out.stderr and "from stage" in out.stdout + out.stderr
    a, b = load_file(whole / "setseq.safetensors"), load_file(killed / "setseq.safetensors")
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _losses(whole) == [(s, st, pytest.approx(x, rel=1e-6)) for s, st, x in _losses(killed)]


def test_fsdp_in_one_process_is_a_note(tiny_wan_dir, clip_mp4, tmp_path):
    """`model.fsdp=true` without a launcher trains as usual and says, once, that it shards nothing."""
    out = _train(
        [sys.executable, "-m", "setseq.cli"], tmp_path / "r", tiny_wan_dir, clip_mp4, ["model.fsdp=true"]
    )
    assert out.count("note: model.fsdp=true with one process shards nothing") == 1, out[-2000:]
    assert (tmp_path / "r" / "setseq.safetensors").is_file()


def test_two_sharded_processes_match_one_on_wan22_a14b(clip_mp4, tmp_path):
    """Wan 2.2 A14B under model.fsdp=true: per-step routing (the default under model.fsdp) gives every sample
    of a step, on both processes, one expert, so both gather the same blocks; the LoRA equals that of one
    process with the same routing (model.fsdp=true there too: a note, nothing sharded). Seed 3 draws the high
    expert for stage 1 steps 2-3 and stage 2 step 1, the low one for the others: both experts train in both
    stages. The prior and sample videos, generated by both processes together, run each expert as the
    pipeline calls it (each is an FSDP2 root of its own); the memory estimate runs on the sharded experts."""
    from setseq.backbones.wan import build_tiny_wan

    model = build_tiny_wan(tmp_path / "a14b", two_experts=True)
    extra = ["model.fsdp=true", "train.seed=3", "train.memory_check=true"]
    extra += ["regularizers.prior_videos=1", "regularizers.prior_steps=2", "train.sample_every=2"]
    extra += ["train.sample_steps=2"]
    one, two = tmp_path / "one", tmp_path / "two"
    out1 = _train([sys.executable, "-m", "setseq.cli"], one, model, clip_mp4, extra)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    out2 = _train(
        [*launch, "--main_process_port", str(_free_port()), "-m", "setseq.cli"], two, model, clip_mp4, extra
    )
    assert "sharded across 2 processes by FSDP2 (6 units)" in out2  # 2 blocks + the DiT, per expert
    for out in (out1, out2):
        assert "experts: one per step for every sample (model.expert_routing=auto -> step)" in out, out[
            -2000:
        ]
    a, b = load_file(one / "setseq.safetensors"), load_file(two / "setseq.safetensors")
    assert {k.split(".")[0] for k in a} == {"high", "low"} and a.keys() == b.keys()
    assert_close_to_scale(b, a)  # per tensor, relative to its scale (reduction order differs)
    for expert in ("high", "low"):  # each expert trained in each stage (else the comparison proves little)
        for part in (".identity.up", ".motion"):
            assert any(k.startswith(expert) and part in k and a[k].abs().max() > 0 for k in a), (expert, part)
    for (_, _, x), (_, _, y) in zip(_losses(one), _losses(two)):
        assert y == pytest.approx(x, rel=1e-4)
    samples = sorted(p.name for p in (one / "samples").iterdir())
    assert samples and sorted(p.name for p in (two / "samples").iterdir()) == samples
    assert len(list((two / "cache").glob("prior-*.safetensors"))) == 1


@pytest.mark.parametrize("a14b", [False, True], ids=["wan", "wan22-a14b"])
def test_fsdp_offload_in_one_process_matches_plain_training(tiny_wan_dir, clip_mp4, tmp_path, a14b):
    """`model.fsdp_offload=true` (FSDP2's CPUOffloadPolicy, one process): the same LoRA and losses as plain
    training, with the prior and sample videos generated through the offloaded DiT and the memory estimate
    run on it. On Wan 2.2 A14B each expert is a root of its own and, in one process, each sample still runs
    the expert of its timestep (both experts in one step). (On this CPU-only machine host and device are one
    memory: the copies are not exercised, the wiring is; the timing against block swap is a GPU benchmark,
    benchmarks/gpu_checks.sh.)"""
    from setseq.backbones.wan import build_tiny_wan

    model = build_tiny_wan(tmp_path / "a14b", two_experts=True) if a14b else tiny_wan_dir
    extra = ["regularizers.prior_videos=1", "regularizers.prior_steps=2", "train.sample_every=1"]
    extra += ["lora.path=fused", "train.sample_steps=2", "train.memory_check=true"]
    one, off = tmp_path / "one", tmp_path / "off"
    _train([sys.executable, "-m", "setseq.cli"], one, model, clip_mp4, extra)
    out = _train(
        [sys.executable, "-m", "setseq.cli"], off, model, clip_mp4, [*extra, "model.fsdp_offload=true"]
    )
    assert "fsdp offload: the DiT's base weights (" in out, out[-2000:]
    assert f"each of its {6 if a14b else 3} units" in out  # each block, and each DiT (expert)
    if a14b:
        assert "experts: each sample by its timestep (model.expert_routing=auto -> sample)" in out
    a, b = load_file(one / "setseq.safetensors"), load_file(off / "setseq.safetensors")
    assert a.keys() == b.keys() and a
    assert_close_to_scale(b, a)
    assert any(".motion" in k and a[k].abs().max() > 0 for k in a)
    if a14b:  # both experts trained (else the comparison says nothing about the second root)
        assert all(any(k.startswith(e) and a[k].abs().max() > 0 for k in a) for e in ("high", "low"))
    for (_, _, x), (_, _, y) in zip(_losses(one), _losses(off)):
        assert y == pytest.approx(x, rel=1e-4)
    assert sorted(p.name for p in (off / "samples").iterdir()) == sorted(
        p.name for p in (one / "samples").iterdir()
    )


def test_fsdp_offload_holds_the_base_weights_in_fsdp2_and_the_lora_outside(tiny_wan_dir):
    """After `parallelize` with model.fsdp_offload: every base weight of the DiT is FSDP2's (a DTensor whose
    unit has CPUOffloadPolicy), the LoRA parameters are plain tensors FSDP2 does not manage, fp8 base weights
    (`model.fp8`, on the attention projections here) stay fp8, and a forward and backward give the plain fp8
    DiT's output and LoRA gradients."""
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule
    from torch.distributed.tensor import DTensor

    from setseq.backbones.registry import load_backbone
    from setseq.config import ModelConfig
    from setseq.train.distributed import Processes, close_processes, parallelize

    models = []
    for _ in range(2):
        bb = load_backbone("wan", str(tiny_wan_dir))
        spec = L.LoraSpec(4, 4.0, "down", tuple(bb.info.lora_targets), fp8=True)
        layers = L.inject(bb.transformer, spec, seed=3)
        gen = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for lay in layers.values():  # up and motion start at zero: give them values
                lay.up.copy_(0.5 * torch.randn(lay.up.shape, generator=gen))
                lay.motion.copy_(0.5 * torch.randn(lay.motion.shape, generator=gen))
        L.set_stage(bb.transformer, 1)
        models.append((bb, layers))
    mc = ModelConfig(backbone="wan", path=str(tiny_wan_dir), device="cpu", fsdp_offload=True)
    try:
        parallelize(models[1][0].transformer, Processes(), mc)
        dit = models[1][0].transformer
        units = [m for m in dit.modules() if isinstance(m, FSDPModule)]
        assert len(units) == 3
        for u in units:
            assert isinstance(u._get_fsdp_state()._fsdp_param_group.offload_policy, CPUOffloadPolicy)
        lora = {id(p) for lay in models[1][1].values() for p in (lay.down, lay.up, lay.motion)}
        for name, p in dit.named_parameters():
            assert isinstance(p, DTensor) != (id(p) in lora), name
        fp8 = [lay.base.weight for lay in models[1][1].values()]
        assert fp8 and all(w.to_local().dtype == torch.float8_e4m3fn for w in fp8)
        bb0, bb1 = models[0][0], models[1][0]
        with torch.no_grad():
            prompt = bb0.encode_prompt(["a red circle moving left"])
            shape = tuple(bb0.encode_video(torch.zeros(1, 9, 3, 32, 32)).shape[1:])
        x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
        sig = torch.tensor([0.3, 0.8])
        batch = type(prompt)(prompt.embeds.expand(2, -1, -1), prompt.mask.expand(2, -1), None)
        out = [b.predict(x, sig, batch) for b in (bb0, bb1)]
        assert_close_to_scale(out[1], out[0], rtol=1e-4)
        for o in out:
            o.float().square().mean().backward()
        for name, lay in models[0][1].items():
            other = models[1][1][name]
            assert not isinstance(other.up.grad, DTensor) and lay.up.grad.abs().max() > 0, name
            assert_close_to_scale(other.up.grad, lay.up.grad, rtol=1e-4, name=name)
            assert_close_to_scale(other.down.grad, lay.down.grad, rtol=1e-4, name=name)
    finally:
        close_processes()


def test_fsdp_offload_is_refused_where_it_cannot_run(tiny_wan_dir):
    """With block swap (two ways to keep the DiT on the host) and with several processes: one line each."""
    from setseq.config_load import resolve_config
    from setseq.errors import SetseqError
    from setseq.train.distributed import Processes
    from setseq.train.setup import load_model

    flags = {"model": {"backbone": "wan", "path": str(tiny_wan_dir)}, "data": {"video": "x.mp4"}}
    with pytest.raises(SetseqError, match="two ways to keep the DiT in host memory"):
        resolve_config(None, flags, ["model.fsdp_offload=true", "model.block_swap=1"])
    cfg = resolve_config(None, flags, ["model.fsdp_offload=true"])
    with pytest.raises(SetseqError, match="built for one process, not 2") as err:
        load_model(cfg, torch.device("cpu"), Processes(rank=0, world=2))
    assert "model.fsdp=true" in str(err.value)
