"""How a parameter of a `setseq.commands` function is given on the command line: declared once, on it.

A subcommand is one typed function, `cmd_<name>`; each keyword-only parameter is one flag. Its name gives
the flag (`class_word` -> `--class-word`), its type the value's (`X | None`: optional; `Literal[...]`: the
choices; `bool`: a switch; `int`, `float`: converted), and the `Arg` in its `Annotated` type the help text,
the default, the config key it sets and any other argparse detail. The parameter has no Python default of
its own: the flag's default is the one in its `Arg` (none: the flag is required). `setseq.cli` builds the
parser from these signatures (`flag_params`); `setseq.commands.cmd_train` reads the config keys from them.

We build on argparse rather than a signature-reading library: BENCHMARKS.md, "CLI parser (issue #32)",
measured jsonargparse and tyro at 2-4x the start-up time of `setseq --help`, with multi-line errors and
no "did you mean". This module imports only the standard library: `setseq --help` is instant.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable
from typing import Any

# The default of a required flag.
REQUIRED: Any = argparse.SUPPRESS

# The config keys `train --resume` may change (mid-run safe: the learning rate, steps, checkpointing,
# logging, samples); any other override is refused by name.
RESUME_KEYS = (
    "stage1.lr",
    "stage2.lr",
    "stage1.steps",
    "stage2.steps",
    "concept.embedding_lr",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.log_every",
    "train.tensorboard",
    "train.sample_every",
    "train.sample_steps",
    "train.memory_check",
)


class Arg:
    """One parameter's command-line details.

    help: the --help text. default: the flag's default (`REQUIRED`: none). key: the dotted config key the
    flag sets (`setseq train`; --help then shows the key and its default, read from `setseq.config`).
    flag: the option string, when not the parameter's name (`--prompt` for `prompts`, `--no-progress` for a
    switch that is on by default). positional: an argument, not an option. resume: `train --resume` takes it.
    extra: passed to argparse's `add_argument` as is (nargs, action, type, metavar, const).
    """

    __slots__ = ("help", "default", "key", "flag", "positional", "resume", "extra")

    def __init__(
        self,
        help: str,
        default: Any = REQUIRED,
        *,
        key: str | None = None,
        flag: str | None = None,
        positional: bool = False,
        resume: bool = False,
        **extra: Any,
    ) -> None:
        self.help, self.default, self.key, self.flag = help, default, key, flag
        self.positional, self.resume, self.extra = positional, resume, extra


def flag_params(func: Callable[..., Any]) -> list[tuple[str, Any, Arg]]:
    """(name, type, Arg) of each parameter of a `cmd_*` function, in order; the type without its `None`."""
    out = []
    for name, hint in func.__annotations__.items():
        if name == "return":
            continue
        if typing.get_origin(hint) is not typing.Annotated:
            raise TypeError(f"{func.__name__}({name}): annotate it as Annotated[type, Arg(...)]")
        kind, arg = hint.__origin__, hint.__metadata__[0]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # `X | None` -> X
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        out.append((name, kind, arg))
    return out


def add_arguments(parser: argparse.ArgumentParser, func: Callable[..., Any]) -> None:
    """One argparse argument per parameter of `func`, from its type and its `Arg`."""
    for name, kind, arg in flag_params(func):
        kwargs: dict[str, Any] = {"help": arg.help, **arg.extra}
        if kind is bool:
            off = (arg.flag or "").startswith("--no-")  # a switch that turns off what is on by default
            kwargs.update(action="store_false" if off else "store_true")
        elif typing.get_origin(kind) is typing.Literal:
            kwargs["choices"] = list(typing.get_args(kind))
        elif kind in (int, float):
            kwargs["type"] = kind
        elif typing.get_origin(kind) is list and not {"nargs", "action", "type"} & set(arg.extra):
            raise TypeError(f"{func.__name__}({name}): a list flag needs nargs, an action or a type")
        if arg.positional:
            if arg.default is not REQUIRED:
                kwargs["default"] = arg.default
            parser.add_argument(name, **kwargs)
            continue
        if arg.default is REQUIRED:
            kwargs["required"] = True
        elif kind is not bool:
            kwargs["default"] = arg.default
        action = parser.add_argument(arg.flag or f"--{name.replace('_', '-')}", dest=name, **kwargs)
        action.config_key = arg.key  # type: ignore[attr-defined]  # (read by setseq.cli's help formatter)


def config_flags(func: Callable[..., Any], values: dict[str, Any]) -> dict[str, Any]:
    """The values of `func`'s parameters that set a config key and were given (not None), as the nested
    dict of sections that `setseq.config_load.resolve_config` takes: {"data": {"frames": 9}, "method": ...}."""
    tree: dict[str, Any] = {}
    for name, _, arg in flag_params(func):
        if arg.key and values[name] is not None:
            section, _, leaf = arg.key.rpartition(".")
            (tree.setdefault(section, {}) if section else tree)[leaf] = values[name]
    return tree


# ---- Value types of flags


def parse_size(text: str) -> list[int]:
    """'480x832' -> [480, 832]; '256' -> [256, 256]."""
    try:
        parts = [int(p) for p in text.lower().replace("*", "x").split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"size must look like 480x832 (height x width), got {text!r}")
    return parts


def parse_csv(text: str) -> list[str]:
    """'a, b,' -> ['a', 'b']."""
    return [t.strip() for t in text.split(",") if t.strip()]


def csv_of(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """A comma-separated list of `kind` ('1,0.8' -> [1.0, 0.8] for float)."""

    def parse(text: str) -> list[Any]:
        try:
            return [kind(t) for t in parse_csv(text)]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__} values, got {text!r}"
            ) from None

    parse.__name__ = f"{kind.__name__} list"
    return parse
