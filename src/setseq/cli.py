"""The `setseq` command line: a parser built from the subcommands' typed functions, and dispatch.

Each subcommand is one function of `setseq.commands` or, for the tools, `setseq.tool_commands` (`COMMANDS`);
each of its parameters declares its flag once, in its type (`setseq.flags`), and `build_parser` turns the
signatures into argparse parsers. `main` calls the function with the parsed values as keyword arguments.
Nothing here imports torch: `setseq --help` is instant. `--help` shows each option's default (a train flag
that sets a config key names the key and its default, read from `setseq.config_keys`); `setseq train --list-keys`
lists every config key; a misspelt subcommand, flag or choice gets a "did you mean".
User errors (`SetseqError`) are printed as one line, without a traceback, with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from setseq import commands, tool_commands
from setseq.errors import SetseqError
from setseq.flags import RESUME_KEYS, add_arguments, flag_params
from setseq.names import METHODS

# The subcommands, in the order `setseq --help` lists them; each is named after its function (`cmd_train`:
# train).
COMMANDS = (
    commands.cmd_train,
    commands.cmd_generate,
    commands.cmd_compose,
    commands.cmd_export,
    commands.cmd_info,
    tool_commands.cmd_demo,
    commands.cmd_eval,
    tool_commands.cmd_bench,
    tool_commands.cmd_report,
    commands.cmd_mask,
)
METHOD_NAMES = tuple(METHODS)
# `train --resume` continues a run with its saved config: the only train fields it takes are those whose
# `Arg` says `resume` (--video, --model, --mask: the same file or folder, moved; checked by content), and the
# config keys of `RESUME_KEYS`. Every other train flag defaults to None (the overrides to []), so one that is
# set was given.
RESUME_TAKES = tuple(name for name, _, arg in flag_params(commands.cmd_train) if arg.resume)
__all__ = ["COMMANDS", "METHOD_NAMES", "RESUME_KEYS", "RESUME_TAKES", "build_parser", "main"]


def _show(value: Any) -> str:
    """A default as shown in --help: a list comma-separated, an empty text quoted."""
    if isinstance(value, list):
        return ",".join(map(str, value))
    return repr(value) if value == "" else str(value)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults after each help text, without the uninformative ones (None, flags' True/False);
    a flag that sets a config key names it, with its default and the toy recipe's where that differs."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        key = getattr(action, "config_key", None)
        if key:
            # (here, not at the top: the config modules load dataclasses and YAML, too slow for `setseq --help`)
            from setseq.config_keys import key_default, recipe_value
            from setseq.config_load import TOY_RECIPE

            default, toy = key_default(key), recipe_value(TOY_RECIPE, key)
            shown = [f"default {_show(default)}"] if default not in (None, "") else []
            if toy is not None and toy != default and self._prog.endswith(" train"):
                shown.append(f"toy recipe {_show(toy)}")
            return f"{text} ({'; '.join([key, *shown])})".replace("%", "%%")
        if isinstance(action.default, bool) or action.default in (None, argparse.SUPPRESS, "", []):
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that shows defaults (`_Formatter`) and whose errors add a "did you mean" for a
    misspelt subcommand, choice or flag."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, formatter_class=_Formatter, **kwargs)

    def error(self, message: str) -> Any:  # type: ignore[override]
        from setseq.config import did_you_mean  # (only on an error: see _Formatter)

        hint = None
        if m := re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message):
            hint = did_you_mean(m.group(1), re.findall(r"'([^']*)'", m.group(2)))
        elif m := re.match(r"unrecognized arguments: (.*)", message):
            flags = [o for a in self._actions for o in a.option_strings]
            hints = [did_you_mean(w, flags) for w in m.group(1).split() if w.startswith("-")]
            hint = " ".join(h for h in hints if h) or None
        super().error(f"{message}; {hint}" if hint else message)


class _ListKeys(argparse.Action):
    """`--list-keys`: print every config key with its default and help, then exit (as --help does)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from setseq.config_keys import format_keys  # (only when asked: see _Formatter)

        try:
            print(format_keys(), flush=True)
        except BrokenPipeError:  # `setseq train --list-keys | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        parser.exit()


def _help_line(func: Any) -> str:
    """A subcommand's help: the first paragraph of its function's docstring, as argparse writes help."""
    first = " ".join((func.__doc__ or "").strip().split("\n\n")[0].split())
    return first[:1].lower() + first[1:].removesuffix(".")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="setseq",
        description="Set-and-Sequence: personalize a text-to-video DiT to a dynamic concept from one video.",
    )
    sub = p.add_subparsers(dest="command", required=True)  # (each subcommand's parser is a _Parser too)
    for func in COMMANDS:
        s = sub.add_parser(func.__name__.removeprefix("cmd_"), help=_help_line(func))
        s.set_defaults(func=func)
        add_arguments(s, func)
        if func is commands.cmd_train:
            s.add_argument(
                "--list-keys",
                action=_ListKeys,
                help="print every config key with its default and help, then exit",
            )
    p.subcommands = sub.choices  # type: ignore[attr-defined]
    return p


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> dict[str, Any]:
    """argv -> the subcommand's fields by name, `func` (the `cmd_*` function) and `command` included.

    Two liberties argparse does not take by itself: key=value overrides anywhere after a subcommand that
    has them (`train`, `bench`), between flags too; and `eval`'s videos before and after its options."""
    args, extra = parser.parse_known_args(argv)
    if args.command == "eval":
        args.videos = list(args.videos) + [a for a in extra if not a.startswith("-")]
        extra = [a for a in extra if a.startswith("-")]
    takes_overrides = hasattr(args, "overrides")
    stray = [a for a in extra if not takes_overrides or a.startswith("-") or "=" not in a]
    if stray:  # (the subcommand's parser, whose flags a "did you mean" picks from)
        parser.subcommands[args.command].error(f"unrecognized arguments: {' '.join(stray)}")  # type: ignore[attr-defined]
    if takes_overrides:
        args.overrides = list(args.overrides) + extra
    return vars(args)


def _resume_fields(fields: dict[str, Any]) -> None:
    """`train --resume [RUN]`: the run folder into `out` (RUN and --out must agree when both are given), an
    override that argparse took for RUN back among the overrides; then refuse any flag or override that
    `--resume` does not take, by name."""
    run = fields["resume"]
    if isinstance(run, str) and "=" in run and not Path(run).exists():  # `--resume --out R stage1.lr=1e-5`
        fields["overrides"], run = [run, *fields["overrides"]], True
    if isinstance(run, str):
        if fields["out"] is not None and Path(fields["out"]).resolve() != Path(run).resolve():
            raise SetseqError(
                f"--resume {run} and --out {fields['out']} name two different run folders",
                f"give the run once: `setseq train --resume {shlex.quote(run)}`",
            )
        fields["out"] = run
    fields["resume"] = True
    if fields["out"] is None:
        raise SetseqError("--resume needs the run folder", "name it: `setseq train --resume RUN`")
    named = [
        f"--{k.replace('_', '-')}"
        for k, v in fields.items()
        if k not in (*RESUME_TAKES, "overrides") and v is not None
    ] + [o for o in fields["overrides"] if o.partition("=")[0] not in RESUME_KEYS]
    if named:
        raise SetseqError(
            f"--resume continues a run with its saved config; other flags are not allowed with it "
            f"(got {', '.join(named)})",
            f"drop them (it takes --video, --model, --mask and {', '.join(RESUME_KEYS)}), or start a new run "
            "with --init-lora",
        )


def main(argv: list[str] | None = None) -> int:
    fields = _parse(build_parser(), argv)
    func = fields.pop("func")
    del fields["command"]
    try:
        if fields.get("resume"):  # train --resume
            _resume_fields(fields)
        elif func is commands.cmd_train and fields["out"] is None:
            raise SetseqError("train needs a run folder", "pass --out RUN (a new folder)")
        func(**fields)
    except SetseqError as exc:
        print(f"setseq: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("setseq: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _reader_left()
    return 0


def _reader_left() -> int:
    """The reader of our output closed it (`setseq info RUN | head -1`): stop quietly, with the status of a
    command ended by SIGPIPE, as well-behaved CLIs do. Python's own flush of stdout at exit would fail
    again, so stdout is pointed at /dev/null first (the recipe of Python's `signal` documentation)."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 128 + 13


if __name__ == "__main__":
    sys.exit(main())
