"""A new user's first week (issue 31): logs a redirected run can be read by, help that shows defaults and
every config key, "did you mean", the toy recipe by default on a toy model, and the smaller traps (an --out
full of other files, an export named .pt, `setseq info`'s model line, which frames `eval` scores against).

One tiny toy run, trained once through the CLI with the toy model's defaults, serves most of the tests."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import yaml

from setseq.cli import build_parser, main
from setseq.config import _SECTIONS, RunConfig
from setseq.config_keys import config_keys
from setseq.config_load import recipes, resolve_config, resolve_train_config
from tests.test_cli import assert_one_line_error, help_text, run_cli
from tests.test_export import fake_run

FAST = ["lora.rank=4", "stage1.steps=3", "stage2.steps=2", "stage1.batch_size=2", "stage2.batch_size=2"]
FAST += ["train.tensorboard=false", "train.memory_check=false"]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    from setseq.data.video import write_video
    from tests.helpers import moving_square_video

    path = tmp_path_factory.mktemp("ui") / "my clip.mp4"  # (a space: the printed commands quote it)
    write_video(path, moving_square_video(13, (32, 32)), fps=8)
    return path


@pytest.fixture(scope="module")
def toy_run(tiny_toy_dir, video, tmp_path_factory):
    """`setseq train --model TOY --video V --out RUN` with no --config and no --mask, its output captured
    (not a terminal, so no bar): what a user's redirected log holds."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("ui") / "run"
    argv = ["train", "--model", str(tiny_toy_dir), "--video", str(video), "--out", str(out), "--frames", "9"]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([*argv, *FAST, "train.progress_every=2"])
    assert code == 0, stderr.getvalue()
    return out, stdout.getvalue(), stderr.getvalue()


# -- Logs ---------------------------------------------------------------------------------------------------


def test_redirected_run_logs_plain_progress_lines_and_a_summary(toy_run):
    out, stdout, stderr = toy_run
    assert "\r" not in stdout + stderr  # no bar redrawn into the log
    steps = re.findall(
        r"^stage (\d) \((set|sequence)\) step (\d+)/(\d+)  loss ([\d.]+)  lr (\S+)  (\S+) s/step  (.*)$",
        stdout,
        re.M,
    )
    # every train.progress_every=2 steps, and the first and last of each stage
    assert [(s[0], s[2]) for s in steps] == [("1", "1"), ("1", "2"), ("1", "3"), ("2", "1"), ("2", "2")]
    assert all(float(s[5]) == 1e-3 for s in steps)  # the toy recipe's learning rate, shown
    assert all(s[7].endswith("left (both stages)") and s[7].startswith("at least ") for s in steps[:3])
    assert all(re.fullmatch(r"\d+[hms]\S* left", s[7]) for s in steps[3:])
    summary = stdout.strip().splitlines()[-1]
    log = [json.loads(line) for line in (out / "logs" / "loss.jsonl").read_text().splitlines()]
    last = {r["stage"]: r["loss"] for r in log}
    assert summary.startswith("done in ") and f"stage 1 {last[1]:.4f}, stage 2 {last[2]:.4f}" in summary
    assert f"outputs in {out}: setseq.safetensors, lora_diffusers.safetensors" in summary


def test_no_progress_prints_the_plain_lines_too(tiny_toy_dir, video, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)  # a terminal, but --no-progress
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    argv = ["train", "--model", tiny_toy_dir, "--video", video, "--out", tmp_path / "r", "--no-progress"]
    code, out, err = run_cli(capsys, *argv, *FAST, "stage1.steps=1", "stage2.steps=1")
    assert code == 0, err
    assert "stage 1 (set) step 1/1" in out and "stage 2 (sequence) step 1/1" in out and "done in" in out


# -- Help ---------------------------------------------------------------------------------------------------


def test_help_shows_defaults_and_every_flag_is_explained(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    text = help_text(capsys, "train")
    assert "(concept.token; default sks)" in text and "(data.frames; toy recipe 9)" in text
    assert "(method; default setseq)" in text
    assert "(default: 0)" in help_text(capsys, "generate")  # --seed: argparse's own default
    assert "default: None" not in text
    for name, sub in build_parser().subcommands.items():
        for action in sub._actions:
            assert action.help and action.help.strip(), (name, action.option_strings or action.dest)


def test_list_keys_prints_every_config_key_with_its_default_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--list-keys"])  # no --out needed
    assert e.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    every = [
        f"{f.name}.{g.name}" if (RunConfig, f.name) in _SECTIONS else f.name
        for f in dataclasses.fields(RunConfig)
        for g in (
            dataclasses.fields(_SECTIONS[(RunConfig, f.name)]) if (RunConfig, f.name) in _SECTIONS else [f]
        )
    ]
    listed = {m.group(1): m.group(2) for ln in lines if (m := re.match(r"  (\S+) = (.*?)  +(\S.*)$", ln))}
    assert sorted(listed) == sorted(every)
    assert all(text for _, _, text in config_keys())
    row = next(ln for ln in lines if ln.startswith("  stage2.dropconnect = "))
    assert "0.5 (toy: 0.2)" in row and "drop probability" in row  # its default, the toy recipe's, its help


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["trian", "--out", "x"], "did you mean 'train'?"),
        (["train", "--out", "x", "--vidoe", "a.mp4"], "did you mean '--video'?"),
        (["export", "r", "--format", "difusers", "--out", "x.safetensors"], "did you mean 'diffusers'?"),
    ],
)
def test_misspelt_commands_and_flags_get_a_did_you_mean(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and needle in capsys.readouterr().err


def test_misspelt_config_keys_get_a_did_you_mean(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--out", tmp_path / "r", "stage1.stepz=3")
    assert_one_line_error(
        code, err, "unknown config key 'stage1.stepz'", "did you mean 'stage1.steps'?", "--list-keys"
    )
    code, _, err = run_cli(capsys, "train", "--out", tmp_path / "r", "regularisers.token_mask=0")
    assert_one_line_error(code, err, "did you mean 'regularizers'?")
    code, _, err = run_cli(capsys, "train", "--out", tmp_path / "r", "--method", "dreambooht")
    assert_one_line_error(code, err, "did you mean 'dreambooth'?")
    assert not (tmp_path / "r").exists()


# -- Toy traps ----------------------------------------------------------------------------------------------


def test_the_toy_recipe_is_the_default_on_a_toy_model(toy_run):
    out, stdout, stderr = toy_run
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["lora"]["rank"] == 4  # the override, over...
    assert saved["stage1"]["lr"] == 1e-3 and saved["stage1"]["grad_clip"] == 1.0  # ...the toy recipe
    assert saved["stage2"]["dropconnect"] == 0.2
    assert "recipe: toy-demo" in stdout
    # its background swaps need a mask: none given, so they are off, said in one line, and training ran
    assert saved["stage1"]["background_swap"] == 0.0 and saved["stage2"]["background_swap"] == 0.0
    note = "need a subject mask and none was given: they are off"
    assert sum(note in ln and "--mask" in ln for ln in (stdout + stderr).splitlines()) == 1


def test_the_paper_recipe_stays_the_default_elsewhere_and_recipes_have_names():
    wan = resolve_train_config(None, {"model": {"backbone": "wan", "path": "x"}}, [], log=lambda s: None)
    assert wan.lora.rank == 128 and wan.stage1.lr == 1e-4
    assert set(recipes()) >= {"toy-demo", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b"}
    for name, path in recipes().items():
        assert resolve_config(name) == resolve_config(path), name
    named = resolve_train_config("toy-demo", None, ["data.mask=m.mp4"], log=lambda s: None)
    assert named.lora.rank == 16 and named.stage1.background_swap == 1.0  # with a mask, the swaps stay


def test_an_unknown_recipe_name_gets_a_did_you_mean(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--out", tmp_path / "r", "--config", "toy-dmo")
    assert_one_line_error(code, err, "no shipped recipe", "did you mean 'toy-demo'?", "wan2.1-t2v-1.3b")


def test_words_the_toy_tokenizer_does_not_know_are_refused(tiny_toy_dir, video, tmp_path, capsys):
    argv = ["train", "--model", tiny_toy_dir, "--video", video, "--out", tmp_path / "r"]
    code, _, err = run_cli(capsys, *argv, "--token", "ohwx", "--class-word", "dog")
    assert_one_line_error(
        code, err, "'ohwx' (concept.token)", "'dog' (concept.class_word)", "<unk>", "--token sks"
    )
    code, _, err = run_cli(capsys, *argv, "--action", "moonwalking")
    assert_one_line_error(code, err, "'moonwalking' (concept.action)")
    assert not (tmp_path / "r").exists()


# -- Smaller ------------------------------------------------------------------------------------------------


def test_an_out_folder_of_other_files_is_refused(tiny_toy_dir, video, tmp_path, capsys):
    mine = tmp_path / "Videos"
    mine.mkdir()
    (mine / "holiday.mp4").write_bytes(b"not ours")
    argv = ["train", "--model", tiny_toy_dir, "--video", video, "--out", mine, *FAST]
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, "already holds other files (holiday.mp4)", "--out")
    assert [p.name for p in mine.iterdir()] == ["holiday.mp4"]  # nothing written into it
    fresh = re.search(r"--out (\S+)\.$", err.strip()).group(1)
    assert not (tmp_path / fresh).exists() and fresh.startswith(str(mine))


def test_export_to_another_suffix_is_refused(tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    code, _, err = run_cli(capsys, "export", run, "--format", "diffusers", "--out", tmp_path / "x.pt")
    assert_one_line_error(code, err, "does not end in .safetensors", f"--out {tmp_path / 'x.safetensors'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    code, _, err = run_cli(
        capsys, "export", run, "--format", "diffusers", "--out", tmp_path / "x.safetensors"
    )
    assert code == 0 and (tmp_path / "x.safetensors").is_file()  # the suggested name works


def test_info_names_the_model_once(toy_run, tiny_toy_dir, capsys):
    out, _, _ = toy_run
    code, text, _ = run_cli(capsys, "info", out)
    model = next(ln for ln in text.splitlines() if ln.startswith("model:"))
    assert model == f"model: {tiny_toy_dir} (toy, float32)"
    (fake := out.parent / "shipped").mkdir()
    (fake / "config.yaml").write_text(RunConfig().to_yaml())
    code, text, _ = run_cli(capsys, "info", fake)
    assert "model: toy (float32)" in text and "toy toy" not in text


def test_eval_scores_against_the_frames_the_run_trained_on(toy_run, video, tmp_path, capsys):
    out, _, _ = toy_run
    gen = tmp_path / "gen.mp4"
    gen.write_bytes(video.read_bytes())
    code, printed, err = run_cli(
        capsys, "eval", gen, "--reference", out, "--metrics", "mse", "--out", tmp_path / "a", "--no-progress"
    )
    assert code == 0, err
    run_ref = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert run_ref["frames"] == 9 and "the 9 frames run" in run_ref["reference_frames"]  # what report shows
    code, printed, err = run_cli(
        capsys,
        "eval",
        gen,
        "--reference",
        video,
        "--metrics",
        "mse",
        "--out",
        tmp_path / "b",
        "--no-progress",
    )
    video_ref = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert (
        video_ref["frames"] == 13
        and "all 13 frames" in video_ref["reference_frames"]
        and "--reference RUN" in printed
    )
    assert run_ref["videos"]["gen"]["mse"] != video_ref["videos"]["gen"]["mse"]
