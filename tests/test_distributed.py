"""Data-parallel training: two CPU processes (gloo, started by `accelerate launch`) give the same LoRA and the
same losses as one process with the same global batch; a batch the processes cannot share is refused."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from setseq.errors import SetseqError
from setseq.tools.demo import CONCEPT_DIR
from setseq.tools.testing import assert_close_to_scale
from setseq.train.distributed import SINGLE, check_split

ARGS = [
    "--frames",
    "9",
    "--no-progress",
    "lora.rank=4",
    "stage1.steps=3",
    "stage2.steps=2",
    "stage1.batch_size=4",
    "stage1.micro_batch=2",
    "stage2.batch_size=2",
    "stage2.micro_batch=1",
    "train.tensorboard=false",
    "train.memory_check=false",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(cmd: list[str], out, model, video, extra: tuple[str, ...] = ()) -> str:
    """Run `setseq train` with ARGS (+ `extra`); returns its stdout and stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    argv = [*cmd, "train", "--model", str(model), "--video", str(video), "--out", str(out), *ARGS, *extra]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _losses(run) -> list[tuple[int, int, float]]:
    lines = (run / "logs" / "loss.jsonl").read_text().splitlines()
    return [(r["stage"], r["step"], r["loss"]) for r in map(json.loads, lines)]


def test_two_processes_match_one(tiny_wan_dir, clip_mp4, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _train([sys.executable, "-m", "setseq.cli"], one, tiny_wan_dir, clip_mp4)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    _train(
        [*launch, "--main_process_port", str(_free_port()), "-m", "setseq.cli"], two, tiny_wan_dir, clip_mp4
    )

    a, b = load_file(one / "setseq.safetensors"), load_file(two / "setseq.safetensors")
    assert a.keys() == b.keys() and a
    assert_close_to_scale(b, a)  # per tensor, relative to its scale (reduction order differs)
    moved = sum(int(".motion" in k and a[k].abs().max() > 0) for k in a)
    assert moved, "stage 2 trained no motion residual: the comparison would prove nothing"
    la, lb = _losses(one), _losses(two)
    assert [x[:2] for x in la] == [x[:2] for x in lb] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)]
    for (_, _, x), (_, _, y) in zip(la, lb):  # each step's loss summed over both processes' micro-batches
        assert y == pytest.approx(x, rel=1e-4)
    # process 1 wrote nothing of its own: one checkpoint folder per saved step, one log
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == sorted(
        p.name for p in (one / "checkpoints").iterdir()
    )


def test_split_of_micro_batches():
    assert check_split(1, 8, None, 1) == 8
    assert check_split(1, 8, None, 2) == 4  # unset: the batch divides among the processes
    assert check_split(2, 8, 2, 2) == 2  # 4 micro-batches, 2 each
    with pytest.raises(SetseqError) as e:
        check_split(1, 8, 8, 2)  # one micro-batch for two processes
    assert "stage1.micro_batch=4" in str(e.value)
    with pytest.raises(SetseqError) as e:
        check_split(2, 3, None, 2)
    assert "stage2.batch_size to a multiple of 2" in str(e.value)
    assert SINGLE.mine(0) and SINGLE.mine(5) and SINGLE.is_main


def test_tolerance_is_relative_to_each_tensors_scale():
    """The cross-process comparison: 2.7e-6 off on a tensor of scale 3e-4 (seen on another CPU) passes, a
    10% error fails, and so does a small tensor that is wrong next to a large one that is right."""
    b = torch.full((4,), 3e-4)
    assert_close_to_scale(b + torch.tensor([2.7e-6, 0, 0, 0]), b)
    with pytest.raises(AssertionError, match="relative 0.1"):
        assert_close_to_scale(b * 1.1, b, name="x")
    big, small = torch.ones(3), torch.full((3,), 1e-4)
    with pytest.raises(AssertionError, match="small"):
        assert_close_to_scale({"big": big, "small": small * 2}, {"big": big, "small": small})
    with pytest.raises(AssertionError):
        assert_close_to_scale({"big": big}, {"big": big, "small": small})  # a missing tensor


def test_a_rendezvous_that_times_out_is_one_line(tmp_path):
    """Process 0 of 2 started alone (its partner never comes) gives up after SETSEQ_RENDEZVOUS_TIMEOUT_S with
    the one-line error naming the launcher flags, exit status 2, no traceback."""
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "SETSEQ_RENDEZVOUS_TIMEOUT_S": "3"}
    env |= {"PYTHONWARNINGS": "ignore"}
    video = (
        CONCEPT_DIR / "cyan_diamond_bounce.mp4"
    )  # (a real video: the rendezvous comes after the inputs' checks)
    argv = [sys.executable, "-m", "setseq.cli", "train", "--video", str(video), "--out", str(tmp_path / "r")]
    proc = subprocess.run([*argv, "model.device=cpu"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "could not join the others at 127.0.0.1" in proc.stderr
    assert "--main_process_port" in proc.stderr and "Traceback" not in proc.stderr


def test_shipped_accelerate_configs_are_fsdp2_and_turn_model_fsdp_on(monkeypatch):
    """configs/accelerate/fsdp2-{2,4,8}gpu.yaml load through accelerate's own loader with the process count
    their name says and FSDP version 2; the environment `accelerate launch` makes from them turns model.fsdp
    on, and an FSDP1 config is a one-line error."""
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file

    from setseq.train.distributed import launcher_asks_fsdp

    folder = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
    files = sorted(folder.glob("*.yaml"))
    assert [f.name for f in files] == ["fsdp2-2gpu.yaml", "fsdp2-4gpu.yaml", "fsdp2-8gpu.yaml"]
    for f in files:
        cfg = load_config_from_file(str(f))
        assert cfg.num_processes == int(f.stem.split("-")[1].removesuffix("gpu")), f
        assert str(cfg.distributed_type).endswith("FSDP") and cfg.fsdp_config["fsdp_version"] == 2, f
        assert cfg.num_machines == 1 and cfg.mixed_precision == "no" and not cfg.use_cpu, f

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert not launcher_asks_fsdp()
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    assert launcher_asks_fsdp()
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(SetseqError, match="FSDP version 1") as e:
        launcher_asks_fsdp()
    assert "fsdp_version: 2" in str(e.value)


def test_two_processes_match_one_on_wan22_a14b(clip_mp4, tmp_path):
    """Wan 2.2 A14B's two experts under data parallel (FSDP2 replicate): each sample runs only its timestep's
    expert, so a process may leave an expert's LoRA untouched in a step; its gradient counts as zero there and
    the two processes still give one process's LoRA."""
    from setseq.backbones.wan import build_tiny_wan

    model = build_tiny_wan(tmp_path / "a14b", two_experts=True)
    one, two = tmp_path / "one", tmp_path / "two"
    _train([sys.executable, "-m", "setseq.cli"], one, model, clip_mp4)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    _train([*launch, "--main_process_port", str(_free_port()), "-m", "setseq.cli"], two, model, clip_mp4)
    a, b = load_file(one / "setseq.safetensors"), load_file(two / "setseq.safetensors")
    assert {k.split(".")[0] for k in a} == {"high", "low"}, sorted(a)[:4]  # both experts carry a LoRA
    assert_close_to_scale(b, a)
    for expert in ("high", "low"):  # each expert trained (else the comparison would prove little)
        assert any(k.startswith(expert) and ".motion" in k and a[k].abs().max() > 0 for k in a), expert
    for (_, _, x), (_, _, y) in zip(_losses(one), _losses(two)):
        assert y == pytest.approx(x, rel=1e-4)


NAN_ON_PROCESS_1 = """
import os, sys
import setseq.train.loop as loop

real, calls = loop.denoising_loss, [0]


def nan_at_step_2(*args, **kwargs):  # process 1's micro-batch of stage 1 step 2 (one per step each)
    loss = real(*args, **kwargs)
    calls[0] += 1
    return loss * float("nan") if os.environ.get("RANK") == "1" and calls[0] == 2 else loss


loop.denoising_loss = nan_at_step_2
from setseq.cli import main

sys.exit(main(sys.argv[1:]))
"""


def test_a_nan_loss_on_one_process_stops_both_with_the_step_named(tiny_wan_dir, clip_mp4, tmp_path):
    """The loss is summed over the processes before the NaN check, so a NaN on process 1 alone stops process
    0 too, at the same step (no process left waiting in a collective), each with the one line naming the step
    and the last good checkpoint."""
    script = tmp_path / "nan_train.py"
    script.write_text(NAN_ON_PROCESS_1)
    out = tmp_path / "run"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(_free_port()), str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    argv = [
        *launch,
        "train",
        "--model",
        str(tiny_wan_dir),
        "--video",
        str(clip_mp4),
        "--out",
        str(out),
        *ARGS,
    ]
    proc = subprocess.run(
        [*argv, "train.checkpoint_every=1"], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode != 0
    # Each process says it (their lines may interleave): every error names the same step.
    errors = proc.stderr.count("setseq: error:")
    assert errors == 2 and proc.stderr.count("the loss became nan at stage 1 step 2;") == 2, proc.stderr[
        -3000:
    ]
    assert "Traceback" not in proc.stderr.split("setseq: error:")[0]  # no Python traceback before it
    assert "the last good checkpoint is" in proc.stderr and "stage1-000001" in proc.stderr  # step 1's
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["stage1-000001"]
    assert not (out / "setseq.safetensors").exists()
