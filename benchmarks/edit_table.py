"""Edits that keep the concept (issue #22): setseq variants against DreamBooth-LoRA on the edit suite, from
`setseq bench` folders. Variants with different overrides live in different `--out` folders; each argument is
`LABEL=FOLDER`, and a folder's setseq rows take the label (its other methods keep their names).

    python benchmarks/edit_table.py "setseq=/work/b22/base" "setseq swap0.5=/work/b22/swap1" \\
        "setseq swap0.5=/work/b22/swap1b" "dreambooth=/work/b22/db" --save benchmarks/edits_toy_default.json
    python benchmarks/edit_table.py benchmarks/edits_toy_default.json      # the saved record again

Reads every finished run's `row.json` (so a bench still running contributes what it has finished), and prints,
over the (concept, seed) pairs each method has: the reproduction and edit columns (mean), the per-kind shares
(followed / kept / success), each setseq variant against DreamBooth-LoRA run by run, and the issue's checks
restated on the pairs every method shares. `colour_kept` is recomputed from each edit's detected colour where
a run was scored before that column existed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from setseq.data.synthetic import CONCEPTS

EDIT_KINDS = ("background", "pattern", "motion", "context")
COLS = (
    "mse",
    "appearance",
    "tc",
    "motion",
    "edit",
    "edit_id",
    "kept",
    "colour_kept",
    "success",
    "edit_motion",
)


def load(args: list[str]) -> dict[tuple[str, str, int], dict]:
    rows: dict[tuple[str, str, int], dict] = {}
    for arg in args:
        label, _, folder = arg.rpartition("=")
        if folder.endswith(".json"):  # a saved record: {"rows": [...]} with the labels already applied
            found = [dict(r) for r in json.loads(Path(folder).read_text())["rows"]]
        else:
            found = [
                dict(json.loads(f.read_text())["row"]) for f in sorted(Path(folder).glob("runs/*/*/row.json"))
            ]
        for r in found:
            if "edits" not in r:  # scored before the edit suite existed
                continue
            if "colour_kept" not in r:
                colour = CONCEPTS[r["concept"]].appearance.colour
                r["colour_kept"] = float(
                    np.mean([e["detected"]["colour"] == colour for e in r["edits"].values()])
                )
            method = label if label and r["method"] == "setseq" else r["method"]
            rows[(method, r["concept"], int(r["seed"]))] = dict(r, method=method)
    return rows


def _means(rows: dict, method: str, pairs: list) -> dict[str, float]:
    return {c: float(np.nanmean([float(rows[(method, *p)][c]) for p in pairs])) for c in COLS}


def main(args: list[str]) -> None:
    save = None
    if "--save" in args:
        i = args.index("--save")
        save, args = args[i + 1], args[:i] + args[i + 2 :]
    rows = load(args)
    if save:
        Path(save).write_text(json.dumps({"rows": list(rows.values())}, indent=1) + "\n")
    methods = list(dict.fromkeys(k[0] for k in rows))
    pairs = {m: sorted((c, s) for (mm, c, s) in rows if mm == m) for m in methods}
    print("Each method over its own (concept, seed) runs:\n")
    print("| method | n | " + " | ".join(COLS) + " |")
    print("|" + "---|" * (len(COLS) + 2))
    for m in methods:
        mean = _means(rows, m, pairs[m])
        print(f"| {m} | {len(pairs[m])} | " + " | ".join(f"{mean[c]:.3f}" for c in COLS) + " |")
    print("\nper kind, % followed / kept / success:")
    print("| method | " + " | ".join(EDIT_KINDS) + " |")
    print("|" + "---|" * (len(EDIT_KINDS) + 1))
    for m in methods:
        mine = [rows[(m, *p)] for p in pairs[m]]
        cells = [
            "/".join(
                f"{100 * np.mean([r['kinds'][k][x] for r in mine]):.0f}"
                for x in ("followed", "kept", "success")
            )
            for k in EDIT_KINDS
        ]
        print(f"| {m} | " + " | ".join(cells) + " |")
    if "dreambooth" not in methods:
        return
    for m in (m for m in methods if m.startswith("setseq")):
        shared = sorted(set(pairs[m]) & set(pairs["dreambooth"]))
        if not shared:
            continue
        s, db = _means(rows, m, shared), _means(rows, "dreambooth", shared)
        print(f"\n{m} vs dreambooth on the {len(shared)} runs both have ({', '.join(c for c, _ in shared)}):")
        print(
            "  "
            + ", ".join(
                f"{c} {s[c]:.3f} vs {db[c]:.3f}"
                for c in ("edit", "edit_id", "kept", "colour_kept", "success", "appearance", "motion")
            )
        )
        wins = [
            (
                c,
                sum(rows[(m, *p)][c] > rows[("dreambooth", *p)][c] for p in shared),
                sum(rows[(m, *p)][c] < rows[("dreambooth", *p)][c] for p in shared),
            )
            for c in ("kept", "colour_kept", "success")
        ]
        print("  run by run (better / worse): " + ", ".join(f"{c} {w}/{lo}" for c, w, lo in wins))
        print(
            f"  - identity on edits within 5% of dreambooth's (or above): {s['edit_id'] >= 0.95 * db['edit_id']}"
        )
        print(f"  - edit success > dreambooth's: {s['success'] > db['success']}")
        print(f"  - edit success >= dreambooth's + 15 points: {s['success'] - db['success'] >= 0.15}")
        print(f"  - kept >= 80%: {s['kept'] >= 0.8}; followed (adherence) >= 80%: {s['edit'] >= 0.8}")
        print(f"  - edit success >= 70%: {s['success'] >= 0.7}")


if __name__ == "__main__":
    main(sys.argv[1:])
