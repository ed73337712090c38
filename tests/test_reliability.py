"""Reliability: kills and resume, bad input, numerical faults, the disk, security, determinism.

Each test counts what it tried and prints it (run with `-s` to see the counts), and asserts the counts.

The kill tests SIGKILL real processes running the `setseq` command line on a tiny random Wan. Starting a
Python process that imports torch and diffusers takes seconds, so most kills go to children *forked* from
a server process that has done the imports once (a forked child is a separate process running
`setseq.cli.main`, killed with SIGKILL exactly like `python -m setseq.cli`); the reference run and one
kill-and-resume are real `python -m setseq.cli` processes, and the forked runs must match them bit for
bit. `test_kill_real_processes_extended` (marked slow) does every kill on real `python -m setseq.cli`.
"""

from __future__ import annotations

import ast
import collections
import errno
import json
import math
import os
import random
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from setseq.cli import main
from setseq.errors import SetseqError
from setseq.export import export_file, load_setseq, save_setseq
from setseq.train import checkpoint as C

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "setseq"
STEPS = 6  # per stage, in the kill tests
TEMP_NAME = re.compile(r"^\.(tmp[A-Za-z0-9]{6}|.+\.[a-z0-9_]{8}(\.[A-Za-z0-9]+)?)$")  # as in setseq.io
CHILD_ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
}
FAST = [
    "lora.rank=4",
    "stage1.batch_size=2",
    "stage2.batch_size=2",
    "train.tensorboard=false",
    "train.checkpoint_every=1",
]


def train_argv(model, video, out, steps=STEPS, extra=()):
    return [
        "train",
        "--model",
        str(model),
        "--video",
        str(video),
        "--out",
        str(out),
        "--frames",
        "9",
        "--no-progress",
        *FAST,
        f"stage1.steps={steps}",
        f"stage2.steps={steps}",
        *extra,
    ]


def resume_argv(out):
    return ["train", "--resume", "--out", str(out), "--no-progress"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_exit(code, err, *needles):
    """Exit 0, or exit 2 with exactly one line `setseq: error: ... Fix: ...` and no traceback."""
    assert "Traceback" not in err, err
    if code == 0:
        return "accepted"
    assert code == 2, (code, err)
    lines = [
        ln
        for ln in err.strip().splitlines()
        if ln.strip() and not ln.startswith("warning:") and "%|" not in ln  # (progress bars)
    ]
    assert len(lines) == 1 and lines[0].startswith("setseq: error:") and "Fix:" in lines[0], err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return "refused"


def same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), k


def losses(run: Path) -> list[tuple[int, int, float]]:
    return [
        (r["stage"], r["step"], r["loss"])
        for r in map(json.loads, (run / "logs" / "loss.jsonl").read_text().splitlines())
    ]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    from setseq.data.video import write_video
    from tests.helpers import moving_square_video

    path = tmp_path_factory.mktemp("rel_video") / "clip.mp4"
    write_video(path, moving_square_video(13, (40, 56)), fps=8)
    return path


@pytest.fixture(scope="module")
def trained(tiny_wan_dir, video, tmp_path_factory):
    """A finished 2 + 2 step run on the tiny Wan (in-process)."""
    out = tmp_path_factory.mktemp("rel_trained") / "run"
    assert main(train_argv(tiny_wan_dir, video, out, steps=2)) == 0
    return out


# ==============================================================================================================
# 1. Kill and resume


SERVER = r"""
import json, os, select, signal, sys, traceback
import torch
torch.set_num_threads(1)
from setseq.cli import main
import setseq.train.run, setseq.infer.generate, setseq.export, setseq.data.video, setseq.backbones.wan  # noqa
from diffusers import WanPipeline  # noqa
out = sys.stdout
sys.stdout = sys.stderr
print(json.dumps({"ready": True}), file=out, flush=True)
for line in sys.stdin:
    try:
        req = json.loads(line)
    except ValueError:
        continue  # a "kill" for a child that had already exited
    log = open(req["log"], "ab")
    pid = os.fork()
    if pid == 0:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        code = 1
        try:
            code = main(req["argv"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    log.close()
    print(json.dumps({"pid": pid}), file=out, flush=True)
    fd = os.pidfd_open(pid)
    while True:
        ready, _, _ = select.select([fd, sys.stdin], [], [])
        if fd in ready:
            break
        if sys.stdin.readline().strip() == "kill":
            signal.pidfd_send_signal(fd, signal.SIGKILL)
            break
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), file=out, flush=True)
"""


class ForkServer:
    """Runs `setseq.cli.main(argv)` in children forked from one process that did the heavy imports."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=CHILD_ENV,
            cwd=str(log.parent),
        )
        assert json.loads(self._read(120))["ready"]

    def _read(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.close()
            pytest.fail(f"the fork server did not answer in {timeout} s; log: {self.tail()}")
        line = self.proc.stdout.readline()
        if not line:
            pytest.fail(f"the fork server died; log: {self.tail()}")
        return line

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def start(self, argv: list[str]) -> ForkServer:
        self.proc.stdin.write(json.dumps({"argv": [str(a) for a in argv], "log": str(self.log)}) + "\n")
        self.proc.stdin.flush()
        self._read(30)  # {"pid": ...}
        self._status: int | None = None
        return self

    def poll(self) -> int | None:
        if self._status is None:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0)
            if ready:
                self._status = json.loads(self._read(1))["status"]
        return self._status

    def kill(self) -> None:
        if self.poll() is None:
            self.proc.stdin.write("kill\n")
            self.proc.stdin.flush()

    def wait(self, timeout: float = 300) -> int:
        if self._status is None:
            self._status = json.loads(self._read(timeout))["status"]
        return self._status

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class RealProcess:
    """`python -m setseq.cli ARGV` as its own process, with the same interface as ForkServer."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def start(self, argv: list[str]) -> RealProcess:
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "setseq.cli", *map(str, argv)],
                stdout=f,
                stderr=subprocess.STDOUT,
                env=CHILD_ENV,
                cwd=str(self.log.parent),
            )
        return self

    def poll(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL

    def wait(self, timeout: float = 300) -> int:
        return self.proc.wait(timeout)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def close(self) -> None:
        pass


def run_with_trigger(runner, argv, run_dir: Path | None, trigger, timeout: float = 300):
    """Start `argv`; poll every 2 ms; once `trigger(run_dir, elapsed)` is true, SIGKILL. Returns
    (exit status, elapsed seconds); status -9 means the kill landed."""
    h = runner.start(argv)
    t0 = time.perf_counter()
    while True:
        status = h.poll()
        if status is not None:
            return status, time.perf_counter() - t0
        elapsed = time.perf_counter() - t0
        if trigger is not None and trigger(run_dir, elapsed):
            h.kill()
            return h.wait(), time.perf_counter() - t0
        if elapsed > timeout:
            h.kill()
            pytest.fail(f"{argv[0]} ran over {timeout} s: {runner.tail()}")
        time.sleep(0.002)


def progress(run_dir: Path) -> int:
    """Steps done by the run, from its latest valid checkpoint: 0 .. 2 * STEPS."""
    ck = C.latest_checkpoint(run_dir)
    return 0 if ck is None else ck.step + (STEPS if ck.stage == 2 else 0)


def ck_name(g: int) -> str:
    return f"stage1-{g:06d}" if g <= STEPS else f"stage2-{g - STEPS:06d}"


def phase_of(run_dir: Path) -> str:
    """What a killed `train` was doing, from what it left: the next step after its latest checkpoint."""
    if not (run_dir / "config.yaml").exists():
        return "setup"
    g = progress(run_dir)
    if g == 0:
        return "setup"  # model load, video, cache (or stage 1 before its first checkpoint)
    if g < STEPS:
        return "stage1"
    if g < 2 * STEPS:
        return "stage2"
    return "outputs"


def make_trigger(rng: random.Random, run_dir: Path, timeline: dict[str, float], real: bool = False):
    """A seeded kill point ahead of where the run is: up to one step after a given checkpoint appears, within
    the output writes (after the last checkpoint, or after setseq.safetensors is rewritten), or (forked
    children, which start at once) at a time in the setup phase. Returns (target phase, trigger)."""
    g0 = progress(run_dir)
    fresh = not (run_dir / "config.yaml").exists()
    ahead = ["setup"] if fresh and not real else []
    if g0 <= STEPS - 2:
        ahead += ["stage1"] * 3
    if g0 <= 2 * STEPS - 2:
        ahead += ["stage2"] * 3
    ahead.append("outputs")
    target = rng.choice(ahead)
    jitter = rng.uniform(0.0, timeline["step"])
    if target == "setup":
        at = rng.uniform(0.0, timeline["load_fresh"])
        return target, lambda d, t: t >= at
    if target == "outputs":
        wait = rng.uniform(0.0, timeline["outputs"])
        if g0 == 2 * STEPS:  # everything trained: the process loads, then rewrites the outputs
            out = run_dir / "setseq.safetensors"
            before = out.stat().st_ino if out.exists() else None
            seen_new: list[float] = []

            def rewritten(d: Path, t: float) -> bool:
                if not seen_new:
                    try:
                        if out.stat().st_ino != before:
                            seen_new.append(t)
                    except FileNotFoundError:
                        pass
                return bool(seen_new) and t >= seen_new[0] + wait / 2

            return target, rewritten
        name = ck_name(2 * STEPS)
    else:
        lo, hi = (g0 + 1, STEPS - 1) if target == "stage1" else (max(g0 + 1, STEPS), 2 * STEPS - 1)
        name, wait = ck_name(rng.randint(lo, hi)), jitter
    seen: list[float] = []

    def trigger(d: Path, t: float) -> bool:
        if not seen and (d / "checkpoints" / name).is_dir():
            seen.append(t)
        return bool(seen) and t >= seen[0] + wait

    return target, trigger


def check_complete_or_absent(folder: Path) -> dict[str, int]:
    """Every output under `folder` is complete: checkpoint folders valid, safetensors loadable, videos
    decodable, YAML parseable. Hidden names are temporary files of setseq (never outputs): counted."""
    from PIL import Image

    from setseq.data.video import load_clip

    seen = collections.Counter()
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            top = next(part for part in rel.parts if part.startswith("."))
            assert TEMP_NAME.match(top), f"unexpected hidden file {rel}"
            seen["temporary"] += p.name == top
            continue
        if p.parent.name == "checkpoints" and p.is_dir():
            ck = C.read_checkpoint(p)
            assert ck is not None, f"{rel} is a checkpoint folder that is not complete"
            assert C.all_finite(ck.lora())
            seen["checkpoint"] += 1
        elif p.parent.parent.name == "checkpoints":
            continue  # checked with its folder
        elif p.is_dir():
            continue
        elif p.suffix == ".safetensors":
            load_file(str(p))
            seen["safetensors"] += 1
        elif p.suffix == ".yaml":
            assert isinstance(yaml.safe_load(p.read_text()), dict)
            seen["yaml"] += 1
        elif p.suffix == ".mp4":
            assert load_clip(p).frames.shape[0] == 9
            seen["mp4"] += 1
        elif p.suffix == ".png":
            Image.open(p).load()
            seen["png"] += 1
        elif p.name == "loss.jsonl":
            seen["log"] += 1  # an append-only log; trimmed to the checkpoint on resume (checked at the end)
        else:
            pytest.fail(f"unexpected file {rel}")
    ck = C.latest_checkpoint(folder) if (folder / "checkpoints").is_dir() else None
    if ck is not None:
        assert not ck.path.name.startswith(".") and C.read_checkpoint(ck.path) is not None
    return seen


@pytest.fixture(scope="module")
def fork_server(tmp_path_factory):
    server = ForkServer(tmp_path_factory.mktemp("forkserver") / "children.log")
    yield server
    server.close()


@pytest.fixture(scope="module")
def reference(tiny_wan_dir, video, tmp_path_factory, fork_server):
    """An uninterrupted run as a real `python -m setseq.cli` process, the same run forked (bit-identical,
    and its timeline: load, step and output times), and a resume from its last checkpoint."""
    root = tmp_path_factory.mktemp("reference")
    real = root / "real"
    status, real_s = run_with_trigger(
        RealProcess(root / "real.log"), train_argv(tiny_wan_dir, video, real), real, None
    )
    assert status == 0, (root / "real.log").read_text()[-3000:]
    forked = root / "forked"
    first: dict[str, float] = {}

    def watch(d: Path, t: float) -> bool:
        for p in [*d.glob("checkpoints/stage*"), *d.glob("*.safetensors")]:
            first.setdefault(p.name, t)
        return False

    status, fork_s = run_with_trigger(fork_server, train_argv(tiny_wan_dir, video, forked), forked, watch)
    assert status == 0, fork_server.tail()
    for name in ("setseq.safetensors", "lora_diffusers.safetensors", "lora_comfyui.safetensors"):
        same_tensors(real / name, forked / name)  # a forked child computes what a real process does
    assert losses(real) == losses(forked)
    t1 = [first[f"stage1-{k:06d}"] for k in range(1, STEPS + 1) if f"stage1-{k:06d}" in first]
    step = max(0.005, (t1[-1] - t1[0]) / max(1, len(t1) - 1))
    done = first.get(f"stage2-{STEPS:06d}", fork_s)
    # Resumed from its final checkpoint, a run only loads and writes the outputs: time it.
    again = root / "again"
    shutil.copytree(forked, again)
    for f in again.glob("*.safetensors"):
        f.unlink()
    status, again_s = run_with_trigger(fork_server, resume_argv(again), again, None)
    assert status == 0, fork_server.tail()
    same_tensors(real / "setseq.safetensors", again / "setseq.safetensors")
    timeline = {
        "load_fresh": first.get("stage1-000001", step) - step,
        "step": step,
        "outputs": max(0.005, first.get("lora_comfyui.safetensors", fork_s) - done),
        "load_resume": max(0.0, again_s - (fork_s - done)),
    }
    print(f"\nreference: real process {real_s:.1f} s, forked {fork_s:.2f} s; timeline {timeline}")
    return real, timeline


def kill_train_chain(runner, rng, argv_fresh, run_dir, timeline, counts, max_kills):
    """Kill a training run at seeded points, resuming each time, until it finishes; check after each kill."""
    kills = 0
    real = isinstance(runner, RealProcess)
    while True:
        fresh = not (run_dir / "config.yaml").exists()
        argv = argv_fresh if fresh else resume_argv(run_dir)
        target, trigger = make_trigger(rng, run_dir, timeline, real) if kills < max_kills else ("none", None)
        status, _ = run_with_trigger(runner, argv, run_dir, trigger)
        if status == 0:
            counts["finished before the kill" if trigger else "final uninterrupted resume"] += 1
            return kills
        assert status == -9, f"exit {status}: {runner.tail()}"
        kills += 1
        counts[f"kill: train {phase_of(run_dir)}"] += 1
        counts[f"target: train {target}"] += 1
        if run_dir.exists():
            for kind, n in check_complete_or_absent(run_dir).items():
                counts[f"checked {kind}"] += n


def check_chain_result(run_dir: Path, ref: Path) -> None:
    for name in ("setseq.safetensors", "lora_diffusers.safetensors", "lora_comfyui.safetensors"):
        same_tensors(ref / name, run_dir / name)
    assert load_setseq(run_dir).meta == load_setseq(ref).meta
    assert losses(run_dir) == losses(ref), "the resumed log differs from the uninterrupted one"
    left = [p for p in run_dir.rglob(".*")]
    assert not left, f"temporary files left after the final resume: {left}"
    check_complete_or_absent(run_dir)


def kill_export_and_generate(runner, rng, ref, tmp, counts, trials):
    """Kill `setseq export` and `setseq generate` at seeded times; the file is complete or absent."""
    from PIL import Image

    from setseq.data.video import load_clip

    want = {}
    for fmt in ("diffusers", "comfyui"):
        want[fmt] = tmp / f"want_{fmt}.safetensors"
        status, t_export = run_with_trigger(
            runner, ["export", ref, "--format", fmt, "--part", "merged", "--out", want[fmt]], None, None
        )
        assert status == 0, runner.tail()
    status, t_gen = run_with_trigger(
        runner,
        ["generate", ref, "--prompt", "a sks person", "--out", tmp / "want.mp4", "--steps", "2"],
        None,
        None,
    )
    assert status == 0, runner.tail()
    for i in range(trials):
        fmt = ("diffusers", "comfyui")[i % 2]
        out = tmp / f"export_{i}" / "lora.safetensors"
        at = rng.uniform(0.0, 0.8 * t_export)
        status, _ = run_with_trigger(
            runner,
            ["export", ref, "--format", fmt, "--part", "merged", "--out", out],
            None,
            lambda d, t, at=at: t >= at,
        )
        assert status in (0, -9), runner.tail()
        counts["kill: export" if status == -9 else "finished before the kill"] += 1
        if out.exists():
            same_tensors(want[fmt], out)
            counts["checked safetensors"] += 1
        counts["checked temporary"] += sum(1 for p in out.parent.glob(".*") if TEMP_NAME.match(p.name))
    for i in range(trials):
        out = tmp / f"gen_{i}" / "video.mp4"
        at = rng.uniform(0.0, t_gen)
        status, _ = run_with_trigger(
            runner,
            ["generate", ref, "--prompt", "a sks person", "--out", out, "--steps", "2"],
            None,
            lambda d, t, at=at: t >= at,
        )
        assert status in (0, -9), runner.tail()
        counts["kill: generate" if status == -9 else "finished before the kill"] += 1
        if out.exists():
            np.testing.assert_array_equal(load_clip(out).frames, load_clip(tmp / "want.mp4").frames)
            counts["checked mp4"] += 1
        if out.with_suffix(".png").exists():
            Image.open(out.with_suffix(".png")).load()
            counts["checked png"] += 1
        if out.parent.exists():
            for p in out.parent.iterdir():
                assert p.name in ("video.mp4", "video.png") or TEMP_NAME.match(p.name), p
                counts["checked temporary"] += p.name.startswith(".")


def report(title: str, counts: collections.Counter) -> None:
    print(f"\n{title}:")
    for k in sorted(counts):
        print(f"  {k:36s} {counts[k]}")


def test_kill_and_resume(reference, tiny_wan_dir, video, fork_server, tmp_path):
    """>= 20 SIGKILLs in stage 1, stage 2, the outputs, `export` and `generate`: after each, every output is
    complete or absent and the latest checkpoint is valid; resumed runs end bit-identical to the reference."""
    ref, timeline = reference
    rng = random.Random(20251124)
    counts: collections.Counter = collections.Counter()
    # One kill and resume with real `python -m setseq.cli` processes.
    real = tmp_path / "real_run"
    seed_rng = random.Random(7)
    kill_train_chain(
        RealProcess(tmp_path / "real.log"),
        seed_rng,
        train_argv(tiny_wan_dir, video, real),
        real,
        timeline,
        counts,
        max_kills=1,
    )
    check_chain_result(real, ref)
    # Forked processes: chains of kills until enough have landed in training.
    chains = 0
    while sum(v for k, v in counts.items() if k.startswith("kill: train")) < 18 and chains < 8:
        run = tmp_path / f"chain{chains}"
        kill_train_chain(
            fork_server, rng, train_argv(tiny_wan_dir, video, run), run, timeline, counts, max_kills=5
        )
        check_chain_result(run, ref)
        chains += 1
    counts["train chains"] = chains + 1
    kill_export_and_generate(fork_server, rng, ref, tmp_path, counts, trials=5)
    report("kill trials", counts)
    kills = {k: v for k, v in counts.items() if k.startswith("kill: ")}
    assert sum(kills.values()) >= 20, kills
    for phase in ("train stage1", "train stage2", "train outputs", "export", "generate"):
        assert kills.get(f"kill: {phase}", 0) >= 1, (phase, kills)


@pytest.mark.slow
def test_kill_real_processes_extended(reference, tiny_wan_dir, video, tmp_path):
    """The same with every kill on a real `python -m setseq.cli` process: 7 runs, up to 3 kills each
    (about 20 kills, 2-3 minutes), then `export` and `generate` killed 4 times each."""
    ref, timeline = reference
    rng = random.Random(2025)
    counts: collections.Counter = collections.Counter()
    runner = RealProcess(tmp_path / "real.log")
    for chain in range(7):
        run = tmp_path / f"chain{chain}"
        kill_train_chain(runner, rng, train_argv(tiny_wan_dir, video, run), run, timeline, counts, 3)
        check_chain_result(run, ref)
    kill_export_and_generate(runner, rng, ref, tmp_path, counts, trials=4)
    report("real-process kill trials", counts)
    kills = {k: v for k, v in counts.items() if k.startswith("kill: ")}
    assert sum(kills.values()) >= 20, kills
    for phase in ("train stage1", "train stage2", "train outputs"):
        assert kills.get(f"kill: {phase}", 0) >= 1, (phase, kills)


# ==============================================================================================================
# 2. Input fuzzing through the command line


def _write_av(path, frames, pts=None, rate=8, codec="libx264"):
    import av

    from setseq.data.video import _codec_for

    codec = _codec_for(".mp4") if codec == "libx264" else codec
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if pts is not None:
            from fractions import Fraction

            s.time_base = Fraction(1, 1000)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            if pts is not None:
                vf.pts = pts[i]
                vf.time_base = s.time_base
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _bad_videos(d: Path, good: Path) -> dict[str, tuple[Path, str | None]]:
    """name -> (file, a word the error must contain, or None if the file may be accepted)."""
    from tests.helpers import audio_only, moving_square_video, raw_avi, zero_frames

    rng = np.random.default_rng(3)
    data = good.read_bytes()
    cases: dict[str, tuple[Path, str | None]] = {}

    def put(name, payload, needle):
        (d / name).write_bytes(payload)
        cases[name] = (d / name, needle)

    for i in range(3):
        put(f"random{i}.mp4", rng.bytes(int(rng.integers(1, 20000))), None)
    for frac in (0.0, 0.05, 0.3, 0.6, 0.9):
        put(f"truncated{int(frac * 100)}.mp4", data[: int(len(data) * frac)], None)
    for i in range(5):
        b = bytearray(data)
        for pos in rng.integers(0, len(b), size=int(rng.integers(1, 40))):
            b[pos] = int(rng.integers(0, 256))
        put(f"flipped{i}.mp4", bytes(b), None)
    put("notes.mp4", b"just some text\n" * 40, "not a video")
    put("config.mp4", b'{"a": 1}', None)
    save_file({"x": torch.zeros(3)}, str(d / "weights.mp4"))
    cases["weights.mp4"] = (d / "weights.mp4", None)
    cases["audio.wav"] = (audio_only(d / "audio.wav"), "no video stream")
    cases["zero_frames.mkv"] = (zero_frames(d / "zero_frames.mkv"), "no video frames")
    cases["one_x_one.avi"] = (raw_avi(d / "one_x_one.avi", 1, 1), "implausible frame size 1x1")
    cases["declared_8000.avi"] = (raw_avi(d / "declared_8000.avi", 6, 6, (8000, 8000)), None)
    cases["declared_9000.avi"] = (raw_avi(d / "declared_9000.avi", 6, 6, (9000, 9000)), "implausible")
    frames = moving_square_video(13, (40, 56))
    for n in (1, 2):
        cases[f"{n}_frames.mp4"] = (_write_av(d / f"{n}_frames.mp4", frames[:n]), f"only {n} frame")
    from PIL import Image

    Image.fromarray(frames[0]).save(d / "still.png")
    cases["still.png"] = (d / "still.png", "still image")
    return cases


def _accepted_videos(d: Path) -> dict[str, Path]:
    """Variable frame rate, and an hours-long video (9 frames, then one frame 3 hours in)."""
    from tests.helpers import moving_square_video

    frames = moving_square_video(13, (40, 56))
    vfr = _write_av(d / "vfr.mkv", frames[:11], pts=[0, 90, 130, 400, 420, 700, 950, 1000, 1300, 1500, 1600])
    long = _write_av(d / "hours.mkv", frames[:10], pts=[*range(0, 1125, 125), 3 * 3600 * 1000])
    return {"variable frame rate": vfr, "hours long": long}


def test_cli_input_fuzzing(trained, tiny_wan_dir, video, capsys, tmp_path):
    """Bad videos, configs, overrides, LoRA files and prompts through `setseq`: each exits 0 or exits 2 with
    one line naming the fix, never a traceback; failed runs leave no run folder."""
    counts: collections.Counter = collections.Counter()
    d = tmp_path / "in"
    d.mkdir()
    zero_steps = ["stage1.steps=0", "stage2.steps=0"]
    # Videos.
    for name, (path, needle) in _bad_videos(d, video).items():
        out = tmp_path / f"run_{name}"
        argv = train_argv(tiny_wan_dir, path, out, steps=1, extra=zero_steps)
        code, _, err = run_cli(capsys, *argv)
        got = assert_clean_exit(code, err, *([needle] if needle else []))
        assert needle is None or got == "refused", (name, err)
        if got == "refused":
            assert not out.exists(), name
        counts[f"video {got}"] += 1
    for name, path in _accepted_videos(d).items():
        t0 = time.perf_counter()
        out = tmp_path / f"run_{name.replace(' ', '_')}"
        code, _, err = run_cli(capsys, *train_argv(tiny_wan_dir, path, out, steps=1, extra=zero_steps))
        assert code == 0, err
        assert time.perf_counter() - t0 < 60, "only the first frames are decoded"
        counts["video accepted (vfr / hours long)"] += 1
    # Configs.
    configs = {
        "unclosed.yaml": "stage1: [steps: 3\n",
        "tabs.yaml": "stage1:\n\tsteps: 3\n",
        "list.yaml": "- a\n- b\n",
        "scalar.yaml": "42\n",
        "python_tag.yaml": "stage1: !!python/object/apply:os.system ['touch PWNED']\n",
        "binary.yaml": "\x00\x01\x02\xff",
        "unknown_key.yaml": "stage1:\n  stepz: 3\n",
        "wrong_type.yaml": "stage1:\n  steps: many\n",
        "nested.yaml": "[" * 5000 + "]" * 5000 + "\n",
        "anchors.yaml": "a: &a ['x','x','x','x','x','x','x','x','x']\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
        "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n",
    }
    for name, text in configs.items():
        (d / name).write_bytes(text.encode("utf-8", "surrogateescape"))
        out = tmp_path / f"cfg_{name}"
        code, _, err = run_cli(
            capsys, "train", "--config", d / name, "--video", video, "--out", out, "--model", tiny_wan_dir
        )
        assert assert_clean_exit(code, err) == "refused", (name, err)
        assert not out.exists() and not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()
        counts["config refused"] += 1
    (d / "missing.yaml").unlink(missing_ok=True)
    code, _, err = run_cli(
        capsys, "train", "--config", d / "missing.yaml", "--video", video, "--out", d / "r"
    )
    assert assert_clean_exit(code, err) == "refused"
    counts["config refused"] += 1
    # Overrides.
    overrides = [
        "stage1.steps",
        "=3",
        "stage1.steps=-1",
        "lora.rank=0",
        "stage1.lr=nan",
        "stage1.lr=-1",
        "a.b.c.d=1",
        "stage1.steps=1e400",
        "lora.basis=[1, 2]",
        "model.dtype=float8",
        "data.size=[0, 0]",
        "stage1.steps=!!python/object/apply:os.system ['touch PWNED']",
        "train.checkpoint_every=0",
        "concept.token=",
        "stage2.dropconnect=1.0",
        "data.frames=0",
        "stage1.betas=[2, 3]",
        "stage1.grad_clip=-1",
        "stage1.grad_clip=nan",
        "stage1.weight_decay=nan",
        "train.seed=-5",
        "train.log_every=0",
        "data.start=nan",
        "data.end=-1",
        "data.video=",
        "model.path=",
        "model.backbone=../../x",
        "stage1.steps=" + "[" * 3000,
    ]
    for ov in overrides:
        out = tmp_path / "ov_run"
        code, _, err = run_cli(
            capsys, *train_argv(tiny_wan_dir, video, out, steps=1, extra=[*zero_steps, ov])
        )
        got = assert_clean_exit(code, err)
        assert got == "refused", (ov, err)
        assert not out.exists() and not Path("PWNED").exists()
        counts["override refused"] += 1
    # LoRA files.
    lora = load_setseq(trained)
    good = trained / "setseq.safetensors"
    raw = good.read_bytes()
    loras: dict[str, tuple[Path, str]] = {}

    def variant(name, tensors, meta, needle):
        save_setseq(d / name, tensors, meta)
        loras[name] = (d / name, needle)

    variant("other_backbone.safetensors", lora.tensors, {**lora.meta, "backbone": "sdxl"}, "backbone")
    variant("toy_backbone.safetensors", lora.tensors, {**lora.meta, "backbone": "toy"}, "")
    variant("other_rank.safetensors", lora.tensors, {**lora.meta, "rank": 8}, "rank 8")
    resized = {k: torch.zeros(8, v.shape[1]) if k.endswith("down") else v for k, v in lora.tensors.items()}
    variant("rank_shapes.safetensors", resized, lora.meta, "shape")
    wide = {
        k: torch.zeros(v.shape[0], v.shape[1] + 3) if k.endswith("down") else v
        for k, v in lora.tensors.items()
    }
    variant("other_size.safetensors", wide, lora.meta, "shape")
    save_file({k: v.contiguous() for k, v in lora.tensors.items()}, str(d / "v2.safetensors"),
              metadata={"format": "setseq", "format_version": "2", **{k: json.dumps(v) for k, v in lora.meta.items()}})  # fmt: skip
    loras["v2.safetensors"] = (d / "v2.safetensors", "format version")
    save_file({"a": torch.zeros(2)}, str(d / "no_format.safetensors"))
    loras["no_format.safetensors"] = (d / "no_format.safetensors", "not a setseq LoRA")
    loras["diffusers.safetensors"] = (trained / "lora_diffusers.safetensors", "not a setseq LoRA")
    rng = np.random.default_rng(5)
    for i, cut in enumerate((0, 7, 8, 100, len(raw) // 2, len(raw) - 1)):
        (d / f"cut{i}.safetensors").write_bytes(raw[:cut])
        loras[f"cut{i}.safetensors"] = (d / f"cut{i}.safetensors", "")
    for i in range(4):
        b = bytearray(raw)
        for pos in rng.integers(0, 400, size=8):  # the JSON header
            b[pos] = int(rng.integers(0, 256))
        (d / f"header{i}.safetensors").write_bytes(bytes(b))
        loras[f"header{i}.safetensors"] = (d / f"header{i}.safetensors", "")
    (d / "json.safetensors").write_text('{"rank": 4}')
    loras["json.safetensors"] = (d / "json.safetensors", "")
    for name, (path, needle) in loras.items():
        out = tmp_path / f"gen_{name}" / "x.mp4"
        code, _, err = run_cli(
            capsys, "generate", path, "--prompt", "a sks person", "--out", out, "--steps", "1"
        )
        got = assert_clean_exit(code, err, needle)
        if not name.startswith("header"):  # a flipped byte inside a metadata text may leave a usable file
            assert got == "refused", (name, err)
            assert not out.parent.exists() or not any(out.parent.iterdir()), name
        code, _, err = run_cli(
            capsys, "export", path, "--format", "diffusers", "--out", tmp_path / "e.safetensors"
        )
        exported = assert_clean_exit(code, err)
        if not name.startswith(("header", "other_backbone", "toy_backbone", "other_size")):
            assert exported == "refused", (name, err)  # (export does not load a model to compare with)
        counts[f"lora file {got}"] += 1
    # Prompts without the concept token: a warning when generating, an error for the training prompts.
    code, _, err = run_cli(
        capsys, "generate", trained, "--prompt", "a person", "--out", tmp_path / "p.mp4", "--steps", "1"
    )
    warned = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert code == 0 and len(warned) == 1 and "'sks'" in warned[0], err
    counts["prompt without token: warned"] += 1
    for ov in ("concept.static_prompt=a person", "concept.static_prompt=a qrv person"):
        code, _, err = run_cli(capsys, *train_argv(tiny_wan_dir, video, tmp_path / "tok", extra=[ov]))
        assert assert_clean_exit(code, err, "concept token") == "refused", err
        counts["prompt without token: refused"] += 1
    report("fuzzing", counts)
    assert counts["video refused"] >= 12 and counts["config refused"] >= 10
    assert counts["override refused"] == len(overrides) and counts["lora file refused"] >= len(loras) - 4


# ==============================================================================================================
# 3. Numerical faults


class _Counter:
    """Wraps the flow-matching step: counts calls, and at call `at` returns `fault(loss, params)`."""

    def __init__(self, at, fault):
        from setseq.train import recipe  # (the recipe calls the loss and the optimizer by these names)

        self.real, self.at, self.fault, self.calls = recipe.denoising_loss, at, fault, 0

    def __call__(self, backbone, batch, gen, *args):
        self.calls += 1
        loss = self.real(backbone, batch, gen, *args)
        if self.calls == self.at:
            params = [q for q in backbone.transformer.parameters() if q.requires_grad]
            return self.fault(loss, params)
        return loss


class _InfGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return x.new_zeros(())

    @staticmethod
    def backward(ctx, g):
        return torch.full(ctx.shape, float("inf"))


def _train_in_process(model, video, out, steps=4, extra=()):
    from setseq.config_load import resolve_config
    from setseq.train.run import train

    argv = train_argv(model, video, out, steps=steps, extra=extra)
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    cfg = resolve_config(
        None,
        {"model": {"backbone": "wan", "path": str(model)}, "data": {"video": str(video), "frames": 9}},
        overrides,
    )
    return train(cfg, out, progress=False, log=lambda s: None)


@pytest.mark.parametrize(
    "where,fault,needle",
    [
        (3, lambda loss, ps: loss * float("inf"), "the loss became inf at stage 1 step 3"),
        (3, lambda loss, ps: loss - float("inf"), "the loss became -inf at stage 1 step 3"),
        (4 + 2, lambda loss, ps: loss * float("nan"), "the loss became nan at stage 2 step 2"),
        (3, lambda loss, ps: loss + _InfGrad.apply(ps[0]), "the gradient norm became"),
    ],
    ids=["inf", "-inf", "nan-stage2", "inf-gradient"],
)
def test_non_finite_stops_within_one_step(tiny_wan_dir, video, tmp_path, monkeypatch, where, fault, needle):
    from setseq.train import recipe  # (the recipe calls the loss and the optimizer by these names)

    step = _Counter(where, fault)
    monkeypatch.setattr(recipe, "denoising_loss", step)
    out = tmp_path / "run"
    with pytest.raises(SetseqError) as e:
        _train_in_process(tiny_wan_dir, video, out)
    msg = str(e.value)
    print(f"\n{needle}: stopped after {step.calls} steps: {msg}")
    assert needle in msg and "\n" not in msg and "Fix:" in msg and "--resume" in msg
    assert step.calls == where, "detected in the step it happened, not later"
    named = Path(re.search(r"the last good checkpoint is (\S+?)\. Fix:", msg).group(1))
    ck = C.read_checkpoint(named)
    assert ck is not None and C.all_finite(ck.lora()) and C.latest_checkpoint(out).path == named
    assert progress_of(ck) == where - 1, "the checkpoint of the step before the fault"
    assert not (out / "setseq.safetensors").exists()


def progress_of(ck):
    return ck.step + (4 if ck.stage == 2 else 0)


def test_weights_overflow_is_not_checkpointed(tiny_wan_dir, video, tmp_path, monkeypatch):
    """Loss and gradients finite, but the update overflows the weights: stopped before that checkpoint."""
    from setseq.train import recipe  # (the recipe calls the loss and the optimizer by these names)

    real = recipe.make_optimizer
    calls = []

    def make(params, sc):
        opt = real(params, sc)
        step = opt.step

        def overflowing_step(*a, **k):
            step(*a, **k)
            calls.append(1)
            if len(calls) == 3:
                with torch.no_grad():
                    opt.param_groups[0]["params"][0].view(-1)[0] = float("inf")

        opt.step = overflowing_step
        return opt

    monkeypatch.setattr(recipe, "make_optimizer", make)
    out = tmp_path / "run"
    with pytest.raises(SetseqError, match="the weights became non-finite at stage 1 step 3") as e:
        _train_in_process(tiny_wan_dir, video, out)
    assert f"the last good checkpoint is {out / 'checkpoints' / 'stage1-000002'}. Fix:" in str(e.value)
    assert not (out / "checkpoints" / "stage1-000003").exists()
    # And save_checkpoint itself refuses non-finite weights, writing nothing.
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(SetseqError, match="not all finite"):
        C.save_checkpoint(tmp_path / "x", 1, 1, {"a.identity.down": torch.tensor([1.0, math.nan])}, opt, {})
    assert not (tmp_path / "x" / "checkpoints" / "stage1-000001").exists()


def test_last_finite_checkpoint_skips_non_finite(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    latest = C.latest_checkpoint(run)
    t = latest.lora()
    next(iter(t.values())).view(-1)[0] = math.nan
    save_file(t, str(latest.path / "lora.safetensors"))  # a checkpoint of an older setseq, say
    state = json.loads((latest.path / "state.json").read_text())
    state["sha256"]["lora.safetensors"] = C.file_sha256(latest.path / "lora.safetensors")
    (latest.path / "state.json").write_text(json.dumps(state))
    assert C.latest_checkpoint(run).path == latest.path
    good = C.latest_checkpoint(run, finite=True)
    assert good is not None and good.path != latest.path and C.all_finite(good.lora())


# ==============================================================================================================
# 4. The disk: full and read-only


@pytest.fixture
def small_fs(tmp_path):
    """A real 2 MiB tmpfs (needs root and mount); skipped where tests cannot mount."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if sys.platform != "linux" or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root on Linux")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(folder: Path) -> None:
    """Fill the file system of `folder` to the last byte."""
    for name, chunk in (("filler", 65536), ("filler2", 1)):
        try:
            with open(folder / name, "wb", buffering=0) as f:
                while True:
                    f.write(b"\0" * chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def remount_ro(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


def _writers(trained: Path):
    """(name, write(folder)) for each kind of output setseq writes."""
    from setseq.data.video import write_contact_sheet, write_video
    from setseq.io import write_json

    lora = load_setseq(trained)
    frames = np.random.default_rng(0).integers(0, 255, (9, 64, 64, 3), dtype=np.uint8)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(4))])
    ck = C.latest_checkpoint(trained)
    big = {**ck.lora(), "pad": torch.zeros(1 << 19)}  # 2 MiB: more than the small disk holds
    return [
        ("setseq.safetensors", lambda d: save_setseq(d / "setseq.safetensors", lora.tensors, lora.meta)),
        ("export", lambda d: export_file(lora, "comfyui", d / "lora_comfyui.safetensors")),
        ("video", lambda d: write_video(d / "x.mp4", frames)),
        ("contact sheet", lambda d: write_contact_sheet(d / "x.png", frames)),
        ("json", lambda d: write_json(d / "metrics.json", {"a": list(range(100000))})),
        ("checkpoint", lambda d: C.save_checkpoint(d, 1, 7, big, opt, {})),
    ]


def _assert_nothing_partial(folder: Path, before: set[str]) -> None:
    now = {str(p.relative_to(folder)) for p in folder.rglob("*")}
    new = now - before - {"checkpoints"}
    assert not new, f"left behind: {new}"


def test_full_disk_real(trained, small_fs, capsys):
    counts = collections.Counter()
    fill(small_fs)
    before = {str(p.relative_to(small_fs)) for p in small_fs.rglob("*")}
    for name, write in _writers(trained):
        with pytest.raises(SetseqError) as e:
            write(small_fs)
        msg = str(e.value)
        assert "no space left on the device" in msg and "Fix: free some disk space" in msg and "\n" not in msg
        _assert_nothing_partial(small_fs, before)
        counts[name] += 1
    # The command line: export and generate onto the full disk.
    for argv in (
        ["export", trained, "--format", "diffusers", "--out", small_fs / "e.safetensors"],
        ["generate", trained, "--prompt", "a sks person", "--out", small_fs / "g.mp4", "--steps", "1"],
    ):
        code, _, err = run_cli(capsys, *argv)
        assert assert_clean_exit(code, err, "no space left") == "refused"
        _assert_nothing_partial(small_fs, before)
        counts[argv[0]] += 1
    report("full disk (tmpfs)", counts)
    assert sum(counts.values()) == 8


def test_read_only_real(trained, small_fs, capsys):
    counts = collections.Counter()
    (small_fs / "sub").mkdir()
    remount_ro(small_fs)
    for folder in (small_fs, small_fs / "sub", small_fs / "new" / "deeper"):
        before = {str(p.relative_to(small_fs)) for p in small_fs.rglob("*")}
        for name, write in _writers(trained):
            with pytest.raises(SetseqError) as e:
                write(folder)
            msg = str(e.value)
            assert "read-only" in msg and "Fix: choose a writable --out folder" in msg and "\n" not in msg
            _assert_nothing_partial(small_fs, before)
            counts[name] += 1
    code, _, err = run_cli(
        capsys, "generate", trained, "--prompt", "a sks person", "--out", small_fs / "g.mp4", "--steps", "1"
    )
    assert assert_clean_exit(code, err, "read-only") == "refused"
    counts["generate"] += 1
    report("read-only folder (tmpfs)", counts)
    assert sum(counts.values()) == 19


def test_disk_fills_during_training_real(tiny_wan_dir, video, small_fs, monkeypatch, capsys):
    """The disk fills up at stage 1 step 3: a one-line error, the checkpoints before it intact, no temp."""
    from setseq.train import recipe  # (the recipe calls the loss and the optimizer by these names)

    step = _Counter(3, lambda loss, ps: (fill(small_fs), loss)[1])
    monkeypatch.setattr(recipe, "denoising_loss", step)
    out = small_fs / "run"
    code, _, err = run_cli(capsys, *train_argv(tiny_wan_dir, video, out, steps=4))
    assert assert_clean_exit(code, err, "no space left") == "refused"
    assert step.calls == 3
    ck = C.latest_checkpoint(out)
    assert ck is not None and (ck.stage, ck.step) == (1, 2)
    assert not list(out.rglob(".*")), list(out.rglob(".*"))
    assert not (out / "setseq.safetensors").exists()
    check_complete_or_absent(out)


def _failing_save_file(code):
    """safetensors.torch.save_file that writes half of the file, then fails as safetensors does."""
    from safetensors import SafetensorError
    from safetensors.torch import save

    def save_file(tensors, path, metadata=None):
        data = save(tensors, metadata=metadata)
        Path(path).write_bytes(data[: len(data) // 2])
        raise SafetensorError(f"Error while serializing: I/O error: {os.strerror(code)} (os error {code})")

    return save_file


def _failing_av_open(code):
    import av

    real = av.open

    def open_(path, mode="r", **kw):
        if "w" in mode:
            Path(path).write_bytes(b"\0" * 100)
            raise OSError(code, os.strerror(code))
        return real(path, mode, **kw)

    return open_


@pytest.mark.parametrize("code,needle", [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only")])
def test_disk_errors_simulated(trained, tmp_path, monkeypatch, code, needle):
    """Where no tmpfs can be mounted: the same failures injected where they surface (safetensors' Rust
    writer, PyAV's muxer, creating the temporary file or folder)."""
    import tempfile

    import av

    from setseq import export as E
    from setseq.data import cache

    writers = dict(_writers(trained))
    counts = collections.Counter()
    for name in writers:
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        with monkeypatch.context() as m:
            for mod in (E, C, cache):
                m.setattr(mod, "save_file", _failing_save_file(code))
            m.setattr(av, "open", _failing_av_open(code))
            if name in ("contact sheet", "json"):  # PIL and Python write: fail at the temporary file instead
                m.setattr(tempfile, "mkstemp", lambda *a, **k: (_ for _ in ()).throw(OSError(code, "x")))
            with pytest.raises(SetseqError) as e:
                writers[name](folder)
        msg = str(e.value)
        assert needle in msg and "Fix:" in msg and "\n" not in msg, msg
        assert not list(folder.rglob("*.*")) and not list(folder.rglob(".*")), list(folder.rglob("*"))
        counts[name] += 1
    report(f"simulated {errno.errorcode[code]}", counts)
    assert len(counts) == len(writers)


# ==============================================================================================================
# 5. Security


BANNED_IMPORTS = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = ast.unparse(f.value) if isinstance(f, ast.Attribute) else ""
            kw = {k.arg: k.value for k in node.keywords}
            yield node, owner, name, kw


def test_no_unsafe_loading_in_source():
    """No pickle, eval/exec, unsafe YAML, torch.load without weights_only=True, trust_remote_code or
    non-safetensors model loading anywhere in src/."""
    counts = collections.Counter()
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        counts["files"] += 1
        rel = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in BANNED_IMPORTS for n in names):
                    problems.append(f"{rel}:{node.lineno}: imports {names}")
        for node, owner, name, kw in _calls(tree):
            counts["calls"] += 1
            where = f"{rel}:{node.lineno}: {ast.unparse(node)[:80]}"
            if name in ("eval", "exec") and not owner:
                problems.append(where)
            if name == "compile" and not owner:
                problems.append(where)
            if name == "load" and owner == "torch":
                counts["torch.load"] += 1
                w = kw.get("weights_only")
                if not (isinstance(w, ast.Constant) and w.value is True):
                    problems.append(where)
            if owner == "yaml" and name in ("load", "load_all", "unsafe_load", "full_load", "full_load_all"):
                problems.append(where)
            if owner == "yaml" and name.startswith("safe_"):
                counts["yaml.safe_*"] += 1
            if "trust_remote_code" in kw:
                v = kw["trust_remote_code"]
                if not (isinstance(v, ast.Constant) and v.value is False):
                    problems.append(where)
            if "allow_pickle" in kw:
                problems.append(where)
            if name == "from_pretrained" and "Tokenizer" not in owner:
                counts["from_pretrained"] += 1
                v = kw.get("use_safetensors")
                if not (isinstance(v, ast.Constant) and v.value is True):
                    problems.append(where)
            if name in ("load", "load_state_dict") and owner in ("torch.jit", "np", "numpy"):
                problems.append(where)
    report("source scan", counts)
    assert not problems, "\n".join(problems)
    assert counts["files"] > 20 and counts["from_pretrained"] >= 3 and counts["yaml.safe_*"] >= 2


def _tree(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*")}


HOSTILE = {
    "catastrophic targets regex": ({"targets": ["(a+)+$", "(.*a){30}", "((x*)*)*y"]}, None),
    "huge targets": ({"targets": ["a" * 100000]}, "targets"),
    "model_id path escape": ({"model_id": "../../../../etc"}, "cannot load|not a diffusers"),
    "model_id with newline": ({"model_id": "x\nsetseq: all good"}, "model_id"),
    "token with escape codes": ({"token": "sks\x1b[2J"}, "token"),
    "t_motion with newline": ({"t_motion": "a\r\nb"}, "t_motion"),
    "backbone path": ({"backbone": "../../evil"}, "backbone"),
    "rank not a number": ({"rank": "4; rm -rf /"}, "rank"),
    "huge rank": ({"rank": 10**12}, "rank"),
    "alpha nan": ({"alpha": float("nan")}, "alpha"),
    "basis unknown": ({"basis": "sideways"}, "basis"),
    "huge size": ({"size": [100000, 100000]}, "size"),
    "size as text": ({"size": "../../x"}, "size"),
    "huge frames": ({"frames": 10**9}, "frames"),
    "scale as text": ({"identity_scale": "__import__('os')"}, "identity_scale"),
    "path-like keys": ({"../../evil": "x", "__class__": {"a": 1}}, None),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_metadata_is_data(trained, tiny_wan_dir, tmp_path, capsys, case):
    """Metadata from a file is checked as data: one-line messages, no pattern from the file is compiled, and
    nothing is written outside the chosen output folder."""
    extra, needle = HOSTILE[case]
    lora = load_setseq(trained)
    meta = {**lora.meta, **extra}
    work = tmp_path / "work"
    work.mkdir()
    path = work / "hostile.safetensors"
    md = {"format": "setseq", "format_version": "1", **{k: json.dumps(v) for k, v in meta.items()}}
    save_file({k: v.contiguous() for k, v in lora.tensors.items()}, str(path), metadata=md)
    out = work / "out" / "x.mp4"
    before = _tree(tmp_path)
    t0 = time.perf_counter()
    model = [] if "model_id" in case else ["--model", tiny_wan_dir]
    code, stdout, err = run_cli(
        capsys, "generate", path, *model, "--prompt", "a sks person", "--out", out, "--steps", "1"
    )
    assert time.perf_counter() - t0 < 60
    got = assert_clean_exit(code, err)
    if needle is None:
        assert got == "accepted", err
    else:
        assert got == "refused" and re.search(needle, err), err
    for v in extra.values():  # a value with control characters is never echoed to the terminal
        if isinstance(v, str) and any(c in v for c in "\x1b\r\n"):
            assert v not in stdout + err
    new = _tree(tmp_path) - before
    assert all(p.startswith(str(work / "out")) for p in new), new
    # info and export read the same file: one-line errors too, nothing outside their output.
    code, stdout, err = run_cli(capsys, "info", path)
    assert_clean_exit(code, err)
    code, _, err = run_cli(
        capsys, "export", path, "--format", "diffusers", "--out", work / "e" / "e.safetensors"
    )
    assert_clean_exit(code, err)
    new = _tree(tmp_path) - before
    assert all(p.startswith((str(work / "out"), str(work / "e"))) for p in new), new


def test_corrupt_checkpoint_is_never_latest(trained, tmp_path):
    """Damage the newest checkpoint in each way a crash or a disk can: the one before it is the latest."""
    damage = {
        "truncated lora": lambda d: (d / "lora.safetensors").write_bytes(
            (d / "lora.safetensors").read_bytes()[:50]
        ),
        "flipped optimizer byte": lambda d: (d / "optimizer.safetensors").write_bytes(
            bytes([(d / "optimizer.safetensors").read_bytes()[0] ^ 1])
            + (d / "optimizer.safetensors").read_bytes()[1:]
        ),
        "no state.json": lambda d: (d / "state.json").unlink(),
        "empty state.json": lambda d: (d / "state.json").write_text(""),
        "state.json a list": lambda d: (d / "state.json").write_text("[1, 2]"),
        "no lora file": lambda d: (d / "lora.safetensors").unlink(),
        "hashes missing": lambda d: (d / "state.json").write_text(
            json.dumps({**json.loads((d / "state.json").read_text()), "sha256": {}})
        ),
        "stage/step disagree with name": lambda d: (d / "state.json").write_text(
            json.dumps({**json.loads((d / "state.json").read_text()), "step": 999})
        ),
        "a file, not a folder": lambda d: (shutil.rmtree(d), d.write_text("x")),
    }
    counts = collections.Counter()
    for name, hurt in damage.items():
        run = tmp_path / name.replace(" ", "_").replace("/", "_")
        shutil.copytree(trained, run)
        newest = C.latest_checkpoint(run)
        assert (newest.stage, newest.step) == (2, 2)
        hurt(newest.path)
        # A temporary folder of a later step (a kill during its save) is not a candidate either.
        shutil.copytree(
            run / "checkpoints" / "stage2-000001", run / "checkpoints" / ".stage2-000003.abcd1234"
        )
        ck = C.latest_checkpoint(run)
        assert ck is not None and (ck.stage, ck.step) == (2, 1), name
        counts["damaged checkpoint skipped"] += 1
    report("corrupt checkpoints", counts)
    assert counts["damaged checkpoint skipped"] == len(damage)


def test_checkpoint_state_names_only_its_own_files(trained, tmp_path):
    """A state.json whose hashes name other files (../../etc/passwd) is not a valid checkpoint."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    ck = C.latest_checkpoint(run)
    state = json.loads((ck.path / "state.json").read_text())
    state["sha256"]["../../../../etc/hostname"] = "0" * 64
    (ck.path / "state.json").write_text(json.dumps(state))
    assert C.read_checkpoint(ck.path) is None
    renamed = ck.path.parent / "stage2-000999"  # a folder name that disagrees with its state.json
    shutil.copytree(C.latest_checkpoint(run).path, renamed)
    assert C.read_checkpoint(renamed) is None


# ==============================================================================================================
# Output confinement


class WriteAudit:
    """Records every path Python opens for writing, creates, renames, or deletes (sys.addaudithook)."""

    EVENTS = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.symlink", "os.truncate",
              "os.chmod", "tempfile.mkstemp", "tempfile.mkdtemp", "shutil.copyfile", "shutil.move"}  # fmt: skip
    WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    active: WriteAudit | None = None
    installed = False

    def __init__(self):
        self.paths: list[str] = []

    def __enter__(self):
        if not WriteAudit.installed:
            sys.addaudithook(WriteAudit._hook)
            WriteAudit.installed = True
        WriteAudit.active = self
        return self

    def __exit__(self, *exc):
        WriteAudit.active = None

    @staticmethod
    def _hook(event, args):
        me = WriteAudit.active
        if me is None:
            return
        if event == "open":
            path, mode, flags = (list(args) + [None, None])[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & WriteAudit.WRITE
            )
            if writing and isinstance(path, (str, bytes, os.PathLike)):
                me.paths.append(os.path.abspath(os.fsdecode(path)))
        elif event in WriteAudit.EVENTS:
            for a in args[:2]:
                if isinstance(a, (str, bytes, os.PathLike)):
                    me.paths.append(os.path.abspath(os.fsdecode(a)))

    def outside(self, *roots: Path) -> list[str]:
        """Paths written outside `roots`; creating the folders that lead to a root is allowed."""
        ok = tuple(str(r.resolve()) for r in roots) + ("/dev/null",)
        ancestors = {str(a) for r in roots for a in r.resolve().parents}
        return sorted(
            {
                p
                for p in self.paths
                if not os.path.realpath(p).startswith(ok)
                and os.path.realpath(p) not in ancestors
                and "__pycache__" not in p  # (imports may write .pyc)
            }
        )


def test_outputs_stay_in_their_folder(trained, tiny_wan_dir, video, tmp_path, capsys):
    counts = collections.Counter()
    # generate, several prompts (with path-like text): numbered files beside --out, nothing elsewhere.
    out = tmp_path / "gen" / "clip.mp4"
    prompts = ["a sks person", "../../a sks person/..", "a sks person\\..\\x", "/etc/a sks person"]
    with WriteAudit() as audit:
        code, _, err = run_cli(
            capsys,
            "generate",
            trained,
            *sum((["--prompt", p] for p in prompts), []),
            "--out",
            out,
            "--steps",
            "1",
        )
    assert code == 0, err
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        f"clip_{i:02d}{s}" for i in range(len(prompts)) for s in (".mp4", ".png")
    )
    assert not audit.outside(out.parent), audit.outside(out.parent)
    counts["generate writes"] += len(audit.paths)
    from setseq.infer.generate import output_paths

    for n in (1, 2, 12, 150):
        for p in output_paths(tmp_path / "o" / "v.mp4", n):
            assert p.parent == tmp_path / "o"
            counts["numbered names"] += 1
    # train: only inside its run folder; checkpoint names made from integers.
    run = tmp_path / "train" / "run"
    with WriteAudit() as audit:
        assert main(train_argv(tiny_wan_dir, video, run, steps=2)) == 0
    assert not audit.outside(run), audit.outside(run)
    counts["train writes"] += len(audit.paths)
    for p in (run / "checkpoints").iterdir():
        assert re.fullmatch(r"stage[12]-\d{6}", p.name), p
        counts["checkpoint names"] += 1
    # export: only its --out (and its temporary file beside it).
    with WriteAudit() as audit:
        assert (
            main(
                [
                    "export",
                    str(trained),
                    "--format",
                    "motion",
                    "--out",
                    str(tmp_path / "ex" / "m.safetensors"),
                ]
            )
            == 0
        )
    assert not audit.outside(tmp_path / "ex"), audit.outside(tmp_path / "ex")
    counts["export writes"] += len(audit.paths)
    report("output confinement", counts)


def test_demo_writes_only_inside_out(tiny_toy_dir, tmp_path):
    from setseq.tools.demo import run_demo

    out = tmp_path / "demo"
    with WriteAudit() as audit:
        run_demo(out, quick=True, model=str(tiny_toy_dir), log=lambda s: None)
    assert not audit.outside(out), audit.outside(out)
    print(f"\ndemo: {len(audit.paths)} writes, all inside {out}")
    assert len(audit.paths) > 10


# ==============================================================================================================
# 6. Determinism


def test_same_seed_same_lora_on_cpu(trained, tiny_wan_dir, video, tmp_path):
    """Two runs with the same seed on the same machine: bit-identical LoRA files, checkpoints and losses
    (the kill test shows the same across processes); another seed gives another LoRA."""
    again = tmp_path / "again"
    assert main(train_argv(tiny_wan_dir, video, again, steps=2)) == 0
    n = 0
    for name in ("setseq.safetensors", "lora_diffusers.safetensors", "lora_comfyui.safetensors"):
        same_tensors(trained / name, again / name)
        n += 1
    for ck in (trained / "checkpoints").iterdir():
        same_tensors(ck / "lora.safetensors", again / "checkpoints" / ck.name / "lora.safetensors")
        same_tensors(ck / "optimizer.safetensors", again / "checkpoints" / ck.name / "optimizer.safetensors")
        n += 2
    assert losses(trained) == losses(again)
    other = tmp_path / "other"
    assert main(train_argv(tiny_wan_dir, video, other, steps=2, extra=["train.seed=1"])) == 0
    a, b = load_file(str(trained / "setseq.safetensors")), load_file(str(other / "setseq.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    print(f"\ndeterminism: {n} files bit-identical, another seed differs")
