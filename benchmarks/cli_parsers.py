"""The CLI-parser candidates of issue #32, built from `setseq.commands`' signatures as each library's own way
(litgpt's `jsonargparse.CLI` of functions; tyro's `subcommand_cli_from_dict`), for timing `--help` and reading
their error messages beside setseq's argparse parser (`python -m setseq.cli`). Not project dependencies:

    pip install --target /tmp/parsers jsonargparse docstring-parser tyro
    PYTHONPATH=src:/tmp/parsers python benchmarks/cli_parsers.py jsonargparse train --help
    PYTHONPATH=src:/tmp/parsers python benchmarks/cli_parsers.py tyro train --out o --frmes 9

BENCHMARKS.md, "CLI parser (issue #32)", has the figures.
"""

from __future__ import annotations

import sys

from setseq.cli import COMMANDS


def main() -> None:
    library, argv = sys.argv[1], sys.argv[2:]
    functions = {f.__name__.removeprefix("cmd_"): f for f in COMMANDS}
    sys.argv = [f"setseq-{library}", *argv]
    if library == "jsonargparse":  # (each imported here: which library is imported is the measurement)
        from jsonargparse import CLI

        CLI(functions, as_positional=False)
    elif library == "tyro":
        import tyro

        tyro.extras.subcommand_cli_from_dict(functions)
    else:
        raise SystemExit("usage: cli_parsers.py {jsonargparse,tyro} ARGS...")


if __name__ == "__main__":
    main()
