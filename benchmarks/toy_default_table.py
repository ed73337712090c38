"""The ablation table on the default `toy` model (BENCHMARKS.md, "On the default `toy` model"), put together
from several `setseq bench` records: runs of the same methods with different overrides live in different
`--out` folders, so each record after the first may carry a label that renames its setseq rows.

    python benchmarks/toy_default_table.py benchmarks/ablation_toy_default.json \\
        "setseq dc0.2=benchmarks/ablation_toy_default_dc02.json"

Prints every method's mean ± std (as `setseq bench` does), each setseq variant against each baseline run by
run (wins / ties / losses over the same concept and seed), the issue's checks for each variant, and the means
of each seed on its own. A (method, concept, seed) row present in two records must hold the same figures.
"""

from __future__ import annotations

import json
import sys

from setseq.tools.bench_tables import COLUMNS, checks, paired, summarize, table


def load(args: list[str]) -> list[dict]:
    rows: dict[tuple[str, str, int], dict] = {}
    for arg in args:
        label, _, path = arg.rpartition("=")
        for r in json.load(open(path))["rows"]:
            r = dict(r, method=label if label and r["method"] == "setseq" else r["method"])
            key = (r["method"], r["concept"], int(r["seed"]))
            if key in rows and any(abs(rows[key][c] - r[c]) > 1e-9 for c in COLUMNS):
                sys.exit(f"{path}: {key} differs from the same run in an earlier record")
            rows[key] = r
    return list(rows.values())


def main(args: list[str]) -> None:
    rows = load(args)
    summary = summarize(rows)
    print(table(summary))
    variants = [m for m in summary if m.startswith("setseq")]
    baselines = [m for m in summary if not m.startswith("setseq")]
    print("\nrun by run, wins/ties/losses:", " ".join(COLUMNS))
    for v in variants:
        for b in baselines + [w for w in variants if w != v]:
            tally = paired(rows, v, b)
            print(f"  {v} vs {b}: " + "  ".join("/".join(map(str, tally[c])) for c in COLUMNS))
    for v in variants:
        print(f"\nchecks for {v}:")
        only = {"setseq": summary[v], **{b: summary[b] for b in baselines}}
        for text, ok in checks(only):
            print(f"  {text}: {'n/a' if ok is None else ('yes' if ok else 'no')}")
    print("\nper seed (appearance / edit / motion):")
    for seed in sorted({int(r["seed"]) for r in rows}):
        per = summarize([r for r in rows if int(r["seed"]) == seed])
        for m, cols in per.items():
            figs = " / ".join(f"{cols[c]['mean']:.3f}" for c in ("appearance", "edit", "motion"))
            print(f"  seed {seed} {m}: {figs} (n={cols['motion']['n']})")


if __name__ == "__main__":
    main(sys.argv[1:])
