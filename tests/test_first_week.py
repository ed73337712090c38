"""A new user's first week (issue 31): run folders that work from any directory, videos at the run's frame
rate, advice that works when pasted, one line instead of a traceback, frame counts that make sense.

Every test trains on a tiny random toy model (2 layers) in a folder whose name holds a space."""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from setseq.cli import main
from tests.helpers import TINY_TRAINING, moving_square_video

FAST = [*TINY_TRAINING, "--no-progress"]
SRC = Path(__file__).resolve().parents[1] / "src"


def one_line_error(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err
    # (a run's notes, e.g. the toy recipe's swaps turned off for want of a mask, may come before the error)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("note: ")]
    assert code == 2 and len(lines) == 1 and lines[-1].startswith("setseq: error:"), err
    for n in needles:
        assert n in lines[-1], (n, lines[-1])
    return lines[-1]


def video(path: Path, frames: int = 13, fps: float = 24.0) -> Path:
    from setseq.data.video import write_video

    write_video(path, moving_square_video(frames, (40, 56)), fps=fps)
    return path


def rate(path: Path) -> float:
    from setseq.data.video import probe_video

    return probe_video(path).fps


@pytest.fixture(scope="module")
def base(tiny_toy_dir, tmp_path_factory):
    """A finished run trained from inside its own folder with relative --video and --model (a 24 fps clip,
    samples every 2 steps): (root, run)."""
    root = tmp_path_factory.mktemp("first week") / "my runs"
    root.mkdir()
    shutil.copytree(tiny_toy_dir, root / "tinytoy")
    video(root / "clip.mp4")
    here = os.getcwd()
    os.chdir(root)
    try:
        code = main(
            ["train", "--model", "tinytoy", "--video", "clip.mp4", "--out", "run", "--frames", "9", *FAST]
            + ["train.sample_every=2", "train.sample_steps=1"]
        )
    finally:
        os.chdir(here)
    assert code == 0
    return root, root / "run"


@pytest.fixture()
def run(base, tmp_path):
    """A copy of the base run, to resume."""
    return Path(shutil.copytree(base[1], tmp_path / "a run"))


def config(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


def checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith("."))


# ----------------------------------------------------------------------------------------- run folders


def test_run_folder_stores_absolute_paths_and_resumes_from_anywhere(base, run, tmp_path, monkeypatch):
    root, _ = base
    cfg = config(run)
    assert cfg["data"]["video"] == str(root / "clip.mp4") and cfg["model"]["path"] == str(root / "tinytoy")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume", str(run), "stage2.steps=3", "--no-progress"]) == 0
    assert "stage2-000003" in checkpoints(run)
    assert main(["train", "--resume", "--out", str(run), "stage2.steps=4", "--no-progress"]) == 0
    assert "stage2-000004" in checkpoints(run)


def test_generate_from_elsewhere_uses_the_runs_local_model(base, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["generate", str(base[1]), "--prompt", "a sks person", "--out", "g.mp4", "--steps", "1"])
    assert code == 0, capsys.readouterr().err


def test_resume_points_to_a_moved_video_and_model(tiny_toy_dir, tmp_path, monkeypatch, capsys):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    clip = video(old / "clip.mp4")
    shutil.copytree(tiny_toy_dir, old / "model")
    out = tmp_path / "run"
    assert main(["train", "--model", str(old / "model"), "--video", str(clip), "--out", str(out), *FAST]) == 0
    # Moved; the model copied without its files' dates (another weights stamp, the same architecture).
    shutil.copytree(old / "model", new / "model", copy_function=shutil.copyfile)
    shutil.move(clip, new / "clip.mp4")
    shutil.rmtree(old)
    capsys.readouterr()
    line = one_line_error(capsys, main(["train", "--resume", str(out)]), "--video")
    assert "`setseq train --resume" in line
    one_line_error(capsys, main(["train", "--resume", str(out), "--video", str(new / "clip.mp4")]), "--model")
    # A video of other content is refused before anything loads, and config.yaml keeps its paths.
    other = video(tmp_path / "other.mp4", frames=11)
    before = (out / "config.yaml").read_text()
    args = ["--model", str(new / "model"), "--no-progress"]
    code = main(["train", "--resume", str(out), "--video", str(other), *args])
    one_line_error(capsys, code, "is not the video", str(out))
    assert (out / "config.yaml").read_text() == before
    code = main(["train", "--resume", str(out), "--video", str(new / "clip.mp4"), *args, "stage2.steps=3"])
    assert code == 0 and "other dates" in capsys.readouterr().out
    cfg = config(out)
    assert cfg["data"]["video"] == str(new / "clip.mp4") and cfg["model"]["path"] == str(new / "model")
    assert "stage2-000003" in checkpoints(out)


def test_run_saved_with_relative_paths(base, run, tmp_path, monkeypatch, capsys):
    """A run from before paths were stored absolute resumes from the directory it was trained in (and is
    stored absolute from then on); from elsewhere it gets one line naming the fix; generating never tries a
    relative model folder on the hub."""
    from setseq.export import load_setseq, save_setseq

    root, _ = base
    cfg = config(run)
    cfg["data"]["video"], cfg["model"]["path"] = "clip.mp4", "tinytoy"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    lora = load_setseq(run)
    save_setseq(run / "setseq.safetensors", lora.tensors, {**lora.meta, "model_id": "tinytoy"})
    monkeypatch.chdir(tmp_path)
    one_line_error(capsys, main(["train", "--resume", str(run)]), "clip.mp4", "--video", "relative")
    code = main(["generate", str(run), "--prompt", "a sks person", "--out", "g.mp4", "--steps", "1"])
    one_line_error(capsys, code, "tinytoy", "--model")
    monkeypatch.chdir(root)
    assert main(["train", "--resume", str(run), "stage2.steps=3", "--no-progress"]) == 0
    assert config(run)["data"]["video"] == str(root / "clip.mp4")


def test_resume_takes_safe_overrides_and_refuses_the_rest(run, capsys):
    import json

    assert main(["train", "--resume", str(run), "stage2.steps=3", "stage2.lr=0.005", "--no-progress"]) == 0
    state = json.loads((run / "checkpoints" / "stage2-000003" / "state.json").read_text())
    assert [g["lr"] for g in state["param_groups"]] == [0.005]
    assert config(run)["stage2"]["lr"] == 0.005  # and a later resume keeps it
    capsys.readouterr()
    one_line_error(
        capsys, main(["train", "--resume", str(run), "lora.rank=8"]), "(got lora.rank=8)", "stage1.lr"
    )


# ----------------------------------------------------------------------------------------- frame rate


def test_every_video_carries_the_runs_frame_rate(base, tmp_path, capsys):
    root, run = base
    assert rate(run / "samples" / "stage1-000002.mp4") == pytest.approx(24)
    gen = ["generate", str(run), "--prompt", "a sks person", "--steps", "1", "--out"]
    assert main([*gen, str(tmp_path / "a.mp4")]) == 0 and rate(tmp_path / "a.mp4") == pytest.approx(24)
    assert main([*gen, str(tmp_path / "b.mp4"), "--fps", "12"]) == 0 and rate(tmp_path / "b.mp4") == 12
    comp = ["compose", str(run), "--prompt", "a sks person", "--steps", "1", "--fps", "10"]
    assert main([*comp, "--out", str(tmp_path / "c.mp4")]) == 0 and rate(tmp_path / "c.mp4") == 10
    base_only = ["generate", "--model", str(root / "tinytoy"), "--prompt", "a person", "--steps", "1"]
    assert main([*base_only, "--out", str(tmp_path / "d.mp4")]) == 0
    assert rate(tmp_path / "d.mp4") == 8  # the toy backbone's own rate
    capsys.readouterr()
    one_line_error(capsys, main([*gen, str(tmp_path / "e.mp4"), "--fps", "0"]), "--fps")
    assert not (tmp_path / "e.mp4").exists()


# ----------------------------------------------------------------------------------------- frame counts


def test_generate_frame_counts(base, tmp_path, capsys):
    gen = ["generate", str(base[1]), "--prompt", "a sks person", "--out", str(tmp_path / "g.mp4")]
    one_line_error(capsys, main([*gen, "--frames", "12"]), "use --frames 9 or 13")
    one_line_error(capsys, main([*gen, "--frames", "0"]), "at least 1")
    assert not list(tmp_path.iterdir())


def test_training_frame_counts_and_rates(base, tmp_path, capsys):
    root, _ = base
    model = ["--model", str(root / "tinytoy")]
    out = tmp_path / "run"
    three = video(tmp_path / "three.mp4", frames=3)
    code = main(["train", *model, "--video", str(three), "--out", str(out), *FAST])
    one_line_error(capsys, code, "only 3 frames", "at least 5 frames")
    # An --fps above the video's own 24 is warned of as the run opens; --frames 1 is refused after it.
    clip = ["--video", str(root / "clip.mp4"), "--fps", "30"]
    code = main(["train", *model, *clip, "--out", str(out), "--frames", "1", *FAST])
    warned = capsys.readouterr().out
    assert (
        "warning: data.fps=30 is above the 24 fps" in warned and "repeated" in warned and "--fps 24" in warned
    )
    capsys.readouterr()
    one_line_error(
        capsys, main(["train", *model, *clip, "--out", str(out), "--frames", "1", *FAST]), "single"
    )
    assert not out.exists()


# ----------------------------------------------------------------------------------------- one line


def test_no_traceback_for_what_users_do(base, tmp_path, capsys):
    root, run = base
    new = ["train", "--model", str(root / "tinytoy"), "--video", str(root / "clip.mp4"), *FAST]
    out = tmp_path / "run"
    one_line_error(capsys, main([*new, "--out", str(out), "--mask", "nope.mp4"]), "nope.mp4", "--mask")
    one_line_error(capsys, main([*new, "--out", str(out), "stage1.lr=1e300"]), "lr must be at most")
    one_line_error(capsys, main([*new, "--out", str(out), "--init-lora", "nope.safetensors"]), "nope")
    assert not out.exists()  # nothing half-made: the same command, mended, runs
    one_line_error(capsys, main(["train", "--resume", str(tmp_path / "none")]), "not a setseq run folder")
    one_line_error(capsys, main(["train", "--resume", str(run), "--out", str(tmp_path)]), "two different")


def test_a_reader_that_closes_early_gets_no_traceback(base):
    """`setseq info RUN | head -c 1`: the SIGPIPE status and nothing on stderr, as well-behaved CLIs do.
    The pipe's reading end is closed before the command starts, so that its first write fails (no race)."""
    read, write = os.pipe()
    os.close(read)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    try:
        p = subprocess.run(
            [sys.executable, "-m", "setseq.cli", "info", str(base[1])],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    finally:
        os.close(write)
    assert p.returncode == 141 and p.stderr == "", p.stderr


# ----------------------------------------------------------------------------------------- pasted advice

# Every place in the code that writes a `setseq ...` command into a message (found by scanning the source,
# below) is either pasted and run by `test_every_suggested_command_works_when_pasted`, or named here as a
# mention of a command rather than a command to run.
MENTIONS = {
    "setseq/tools/bench_tables.py:write_markdown",  # a table's title
    "setseq/tools/demo.py:_prepare_out",  # "made by setseq demo", "not a setseq demo folder"
    "setseq/export.py:load_setseq",  # "re-export it from its run with `setseq export`"
    "setseq/export.py:_bad_meta",
    "setseq/info.py:describe_run",  # "pass the --out folder of `setseq train`"
    "setseq/tools/report.py:find_inputs",  # "pass the folder that `setseq train --out` ... wrote"
    "setseq/tools/report.py:build_report",  # the page's title, "pass the one `setseq eval` wrote"
    "setseq/commands.py:cmd_eval",  # --reference's help: "the frames it trained on (as `setseq report` shows them)"
    "setseq/config_keys.py:format_keys",  # the listing's head: "set as key=value after `setseq train`"
    "setseq/eval/run_eval.py:reference_frames",  # "as `setseq report` shows"
    "setseq/tools/report.py:_training_clip",  # "as `setseq eval --reference RUN` scores"
}
COMMAND = re.compile(r"setseq (train|generate|compose|export|info|demo|eval|bench|report|mask)\b")


def advice_sites() -> set[str]:
    """file:function of every string in the source (docstrings aside) that names a setseq command."""
    sites = set()
    for f in sorted((SRC / "setseq").rglob("*.py")):
        tree = ast.parse(f.read_text())
        docs = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef))
            and n.body
            and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)
        }
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            for n in ast.walk(fn):
                text = n.value if isinstance(n, ast.Constant) and isinstance(n.value, str) else None
                if isinstance(n, ast.JoinedStr):
                    text = ast.unparse(n)
                if text and id(n) not in docs and COMMAND.search(text):
                    sites.add(f"{f.relative_to(SRC)}:{fn.name}")
    return sites


def pasted(capsys, line: str, **fill: str) -> int:
    """Run the one `setseq ...` command in backticks of an error line, its placeholders filled in."""
    commands = re.findall(r"`(setseq [^`]+)`", line)
    assert len(commands) == 1, line
    argv = shlex.split(commands[0])[1:]
    argv = [fill.get(a, a) for a in argv]
    code = main(argv)
    assert code == 0, (commands[0], capsys.readouterr().err)
    return code


def test_every_suggested_command_works_when_pasted(base, run, tmp_path, monkeypatch, capsys):
    from setseq.train import recipe  # (the recipe calls the loss and the optimizer by these names)

    root, _ = base
    covered = set()

    # "already holds a run" -> resume it.
    new = ["train", "--model", str(root / "tinytoy"), "--video", str(root / "clip.mp4"), *FAST]
    capsys.readouterr()
    pasted(capsys, one_line_error(capsys, main([*new, "--out", str(run)]), "already holds a run"))
    covered.add("setseq/train/setup.py:open_run")

    # --resume without a folder; --resume RUN with another --out -> the run named once.
    capsys.readouterr()
    pasted(capsys, one_line_error(capsys, main(["train", "--resume"]), "needs the run folder"), RUN=str(run))
    capsys.readouterr()
    line = one_line_error(
        capsys, main(["train", "--resume", str(run), "--out", str(tmp_path)]), "two different"
    )
    pasted(capsys, line)
    covered.add("setseq/cli.py:_resume_fields")

    # A moved video -> resume with --video at its new place.
    moved = tmp_path / "moved" / "clip.mp4"
    moved.parent.mkdir()
    cfg = config(run)
    shutil.copy(cfg["data"]["video"], moved)
    cfg["data"]["video"] = str(tmp_path / "gone.mp4")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    capsys.readouterr()
    line = one_line_error(capsys, main(["train", "--resume", str(run)]), "is not here")
    pasted(capsys, line, PATH=str(moved))
    covered.add("setseq/train/setup.py:resumed_config")

    # The loss blows up -> resume from the last good checkpoint at a lower learning rate.
    real = recipe.denoising_loss

    def nan_at_stage2(backbone, batch, *a, **k):
        loss = real(backbone, batch, *a, **k)
        return loss * float("nan") if batch.latents.shape[2] > 1 else loss  # the clip: stage 2

    monkeypatch.setattr(recipe, "denoising_loss", nan_at_stage2)
    capsys.readouterr()
    line = one_line_error(
        capsys, main(["train", "--resume", str(run), "stage2.steps=3", "--no-progress"]), "loss became nan"
    )
    monkeypatch.setattr(recipe, "denoising_loss", real)
    assert "stage2.lr=0.001" in line  # a tenth of TINY_TRAINING's 1e-2
    pasted(capsys, line)
    assert config(run)["stage2"]["lr"] == 0.001 and "stage2-000003" in checkpoints(run)
    covered.add("setseq/train/checkpoint.py:lower_lr_advice")

    # The end-of-run summary names where the outputs are -> `setseq info RUN` on them.
    summary = [ln for ln in capsys.readouterr().out.splitlines() if "`setseq info" in ln]
    assert len(summary) == 1, summary
    pasted(capsys, summary[0])
    covered.add("setseq/train/loop.py:run_summary")

    # A misspelt config key -> the listing of every key.
    line = one_line_error(
        capsys, main(["train", "--out", str(tmp_path / "k"), "stage1.stepz=3"]), "--list-keys"
    )
    (listing,) = re.findall(r"`(setseq [^`]+)`", line)
    with pytest.raises(SystemExit) as exited:  # (--list-keys exits as --help does)
        main(shlex.split(listing)[1:])
    assert exited.value.code in (0, None) and "stage1.steps" in capsys.readouterr().out
    covered.add("setseq/config_load.py:_build")

    # A one-stage run has no motion part -> train stage 2 on it, from its own config.
    one = tmp_path / "one stage"
    assert main([*new, "--out", str(one), "--method", "dreambooth", "stage2.steps=1"]) == 0
    capsys.readouterr()
    motion = ["--format", "diffusers", "--part", "motion", "--out", str(tmp_path / "m.safetensors")]
    pasted(capsys, one_line_error(capsys, main(["export", str(one), *motion]), "no motion part"))
    assert main(["export", f"{one}_stage2", *motion]) == 0  # the pasted command trained its stage 2
    covered.add("setseq/export.py:_stage2_command")

    assert advice_sites() == covered | MENTIONS, (
        "a new command in a message: paste it here, or list it in MENTIONS"
    )
