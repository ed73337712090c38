"""The command line on a tiny random Wan: the happy path, and each bad input's one-line message."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys

import pytest
import torch

from setseq.cli import METHOD_NAMES, _parse, build_parser, main
from setseq.config import METHODS
from setseq.export import load_setseq, save_setseq

FAST = [
    "lora.rank=4",
    "stage1.steps=2",
    "stage2.steps=2",
    "stage1.batch_size=2",
    "stage2.batch_size=2",
    "train.tensorboard=false",
    "train.checkpoint_every=1",
]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("setseq: error:"), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(scope="module")
def cli_run(tiny_wan_dir, tmp_path_factory):
    from setseq.data.video import write_video
    from tests.helpers import moving_square_video

    root = tmp_path_factory.mktemp("cli")
    video = root / "clip.mp4"
    write_video(video, moving_square_video(13, (40, 56)), fps=8)
    out = root / "run"
    code = main(
        [
            "train",
            "--model",
            str(tiny_wan_dir),
            "--video",
            str(video),
            "--out",
            str(out),
            "--frames",
            "9",
            "--action",
            "dancing",
            "--no-progress",
            *FAST,
        ]
    )
    assert code == 0
    return out, video


def test_train_generate_export_info(cli_run, tiny_wan_dir, capsys, tmp_path):
    run, _ = cli_run
    code, out, err = run_cli(
        capsys,
        "generate",
        run,
        "--prompt",
        "a sks person dancing on a beach",
        "--out",
        tmp_path / "beach.mp4",
        "--steps",
        "2",
    )
    assert code == 0, err
    assert (tmp_path / "beach.mp4").stat().st_size > 0 and (tmp_path / "beach.png").stat().st_size > 0
    code, out, err = run_cli(
        capsys, "export", run, "--format", "motion", "--out", tmp_path / "motion.safetensors"
    )
    assert code == 0 and (tmp_path / "motion.safetensors").is_file()
    code, out, err = run_cli(capsys, "info", run)
    assert code == 0 and "T_motion: 'a sks person in zwx motion, dancing'" in out and "stage 2 step 2" in out


def test_generate_without_token_warns(cli_run, capsys, tmp_path):
    run, _ = cli_run
    code, out, err = run_cli(
        capsys, "generate", run, "--prompt", "a person", "--out", tmp_path / "x.mp4", "--steps", "1"
    )
    assert code == 0 and "warning" in err and "sks" in err


def test_existing_run_needs_resume(cli_run, tiny_wan_dir, capsys):
    run, video = cli_run
    code, out, err = run_cli(
        capsys, "train", "--model", tiny_wan_dir, "--video", video, "--out", run, "--frames", "9", *FAST
    )
    assert_one_line_error(code, err, "already holds a run", "--resume")


@pytest.mark.parametrize(
    "make,args,needles",
    [
        (None, ["--video", "{tmp}/missing.mp4"], ["does not exist"]),
        ("garbage", ["--video", "{tmp}/bad.mp4"], ["bad.mp4"]),
        (None, ["--video", "{video}", "--frames", "17"], ["13", "17"]),
        (None, ["--video", "{video}", "--frames", "10"], ["4k+1", "--frames 9"]),
        (None, ["--video", "{video}", "--frames", "9", "--size", "40x40"], ["multiple of 16"]),
        (
            None,
            ["--video", "{video}", "--frames", "9", "concept.static_prompt=a person"],
            ["concept token 'sks'"],
        ),
        (
            None,
            ["--video", "{video}", "--frames", "9", "stage1.lr=1e30", "stage1.grad_clip=1e30"],
            ["loss became", "last good checkpoint"],
        ),
    ],
    ids=["missing", "corrupt", "too-few-frames", "not-4k+1", "bad-size", "prompt-without-token", "nan-loss"],
)
def test_train_bad_input(cli_run, tiny_wan_dir, capsys, tmp_path, make, args, needles):
    _, video = cli_run
    if make == "garbage":
        (tmp_path / "bad.mp4").write_bytes(b"\x00\x01garbage" * 100)
    argv = [a.format(tmp=tmp_path, video=video) for a in args]
    out = tmp_path / "run"
    code, _, err = run_cli(
        capsys, "train", "--model", tiny_wan_dir, "--out", out, "--no-progress", *FAST, *argv
    )
    assert_one_line_error(code, err, *needles)
    assert not list(out.glob("*.safetensors")), "no outputs from a failed run"
    if "loss became" not in needles:  # input errors leave no run folder behind; a retry just works
        assert not out.exists()


def test_lora_for_another_backbone(cli_run, tiny_wan_dir, capsys, tmp_path):
    run, _ = cli_run
    lora = load_setseq(run)
    other = tmp_path / "other.safetensors"
    save_setseq(other, lora.tensors, {**lora.meta, "backbone": "cogvideox", "model_id": "THUDM/CogVideoX-2b"})
    code, _, err = run_cli(
        capsys,
        "generate",
        other,
        "--model",
        tiny_wan_dir,
        "--backbone",
        "wan",
        "--prompt",
        "a sks person",
        "--out",
        tmp_path / "x.mp4",
    )
    assert_one_line_error(code, err, "'cogvideox' backbone", "--model THUDM/CogVideoX-2b")
    assert not (tmp_path / "x.mp4").exists()


def test_wrong_rank_and_corrupt_lora(cli_run, tiny_wan_dir, capsys, tmp_path):
    run, _ = cli_run
    lora = load_setseq(run)
    wrong = tmp_path / "wrong.safetensors"
    save_setseq(
        wrong,
        {
            k: torch.zeros(v.shape[0] * 2 if k.endswith("down") else v.shape[0], *v.shape[1:])
            for k, v in lora.tensors.items()
        },
        lora.meta,
    )
    code, _, err = run_cli(capsys, "generate", wrong, "--prompt", "a sks person", "--out", tmp_path / "x.mp4")
    assert_one_line_error(code, err, "shape")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((run / "setseq.safetensors").read_bytes()[:200])
    code, _, err = run_cli(capsys, "generate", bad, "--prompt", "a sks person", "--out", tmp_path / "x.mp4")
    assert_one_line_error(code, err, "not a readable safetensors")
    code, _, err = run_cli(
        capsys,
        "generate",
        run / "lora_diffusers.safetensors",
        "--prompt",
        "a sks person",
        "--out",
        tmp_path / "x.mp4",
    )
    assert_one_line_error(code, err, "not a setseq LoRA file")


@pytest.mark.parametrize(
    "flag", [["--end", "3"], ["--start", "1"], ["--action", "running"], ["--token", "m"]]
)
def test_resume_refuses_every_other_flag(tmp_path, capsys, flag):
    code = main(["train", "--resume", "--out", str(tmp_path / "run"), *flag])
    err = capsys.readouterr().err
    assert code == 2 and "other flags are not allowed" in err and flag[0] in err and err.count("\n") == 1


# The smallest valid argv of each subcommand: parsing it gives every field its function receives.
MINIMAL = {
    "train": ["--out", "o"],
    "generate": ["--prompt", "p", "--out", "o"],
    "compose": ["r", "--prompt", "p", "--out", "o"],
    "export": ["r", "--format", "diffusers", "--out", "o"],
    "info": ["r"],
    "demo": [],
    "eval": ["v", "--reference", "r", "--out", "o"],
    "bench": [],
    "report": ["r", "--out", "o"],
    "mask": ["v", "--prompt", "p", "--out", "o"],
}


def help_text(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def help_flags(text: str) -> list[str]:
    """The option strings of a --help text's option lines, in order (`-h, --help` gives both)."""
    return [
        f
        for line in text.splitlines()
        if re.match(r"  -", line)
        for f in re.findall(r"(?<![\w-])--?[\w-]+", line.split("  ")[1])
    ]


def test_every_subcommand_is_covered_and_declares_each_flag_once(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one option per line
    top = help_text(capsys)
    assert set(re.search(r"\{([\w,]+)\}", top).group(1).split(",")) == set(MINIMAL)
    for command, argv in MINIMAL.items():
        flags = help_flags(help_text(capsys, command))
        assert "--out" in flags or command == "info", (command, flags)
        assert len(flags) == len(set(flags)), (command, flags)
        # The function takes exactly the parsed fields, by name, each without a default of its own.
        fields = _parse(build_parser(), [command, *argv])
        params = inspect.signature(fields.pop("func")).parameters
        assert set(params) == set(fields) - {"command"}, command
        assert all(p.kind is p.KEYWORD_ONLY and p.default is p.empty for p in params.values()), command


def test_method_help_names_every_method(capsys, monkeypatch):
    assert METHOD_NAMES == tuple(METHODS)
    monkeypatch.setenv("COLUMNS", "200")
    line = next(ln for ln in help_text(capsys, "train").splitlines() if ln.strip().startswith("--method"))
    assert re.findall(r"\w+", line.split("baseline:")[1].split("(")[0]) == [
        m for m in METHODS if m != "setseq"
    ]
    assert "(method; default setseq)" in line  # the config key and its default, from setseq.config


def test_help_does_not_import_torch():
    code = (
        "import contextlib, io, sys\n"
        "from setseq.cli import main\n"
        f"for argv in ([], *([c] for c in {sorted(MINIMAL)!r})):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main([*argv, '--help'])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'diffusers')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_resume_refuses_every_train_flag_it_cannot_take(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    takes = {
        "-h",
        "--help",
        "--out",
        "--resume",
        "--no-progress",
        "--video",
        "--model",
        "--mask",
        "--list-keys",
    }
    refused = [f for f in help_flags(help_text(capsys, "train")) if f not in takes]
    assert {"--config", "--init-lora", "--method", "--class-word", "--frames"} <= set(refused)
    out = str(tmp_path / "run")
    for flag in [*refused, "lora.rank=3"]:
        value = ["1"] if flag.startswith("-") else []
        assert main(["train", "--resume", "--out", out, flag, *value]) == 2, flag
        err = capsys.readouterr().err
        assert "other flags are not allowed" in err and f"(got {flag})" in err, (flag, err)
    main(["train", "--resume", "--out", out, "--no-progress"])
    assert "other flags are not allowed" not in capsys.readouterr().err


def test_each_flag_that_sets_a_config_key_names_a_real_key():
    from setseq.cli import COMMANDS
    from setseq.config_keys import config_keys
    from setseq.flags import flag_params

    keys = {k for k, _, _ in config_keys()}
    named = [arg.key for func in COMMANDS for _, _, arg in flag_params(func) if arg.key]
    assert "data.frames" in named and set(named) <= keys, set(named) - keys


def test_train_flags_become_config_sections():
    from setseq.commands import cmd_train
    from setseq.flags import config_flags

    fields = _parse(
        build_parser(), ["train", "--out", "o", "--frames", "9", "--size", "32x48", "--method", "lora1"]
    )
    del fields["func"], fields["command"]
    assert config_flags(cmd_train, fields) == {"data": {"frames": 9, "size": [32, 48]}, "method": "lora1"}


@pytest.mark.parametrize("flag, bad, near", [("--part", "identiy", "identity"), ("--expert", "hgh", "high")])
def test_an_optional_choice_keeps_its_choices(capsys, flag, bad, near):
    with pytest.raises(SystemExit) as e:
        main(["export", "r", "--format", "comfyui", flag, bad, "--out", "o"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"invalid choice: '{bad}'" in err and f"did you mean '{near}'?" in err
