"""Edits that keep the concept (issue #22): setseq variants against DreamBooth-LoRA on the edit suite, from
`setseq bench` folders. Variants with different overrides live in different `--out` folders; each argument is
`LABEL=FOLDER`, and a folder's setseq rows take the label (its other methods keep their names).

    python benchmarks/edit_table.py "setseq=/work/b22/base" "setseq swap0.5=/work/b22/swap1" \\
        "setseq swap0.5=/work/b22/swap1b" "dreambooth=/work/b22/db" --save benchmarks/edits_toy_default.json
    python benchmarks/edit_table.py benchmarks/edits_toy_default.json      # the saved record again
    python benchmarks/edit_table.py benchmarks/edits_toy_default.json --ceiling-cache src/setseq/assets/toy/base_ceiling.json \
        [--seed 0] [--concepts cyan_diamond_bounce,pink_cross_zigzag]

Reads every finished run's `row.json` (so a bench still running contributes what it has finished), and prints,
over the (concept, seed) pairs each method has: the reproduction and edit columns (mean), the per-kind shares
(followed / kept / success), each setseq variant against DreamBooth-LoRA run by run, and the issue's checks
restated on the pairs every method shares. `colour_kept` is recomputed from each edit's detected colour where
a run was scored before that column existed.

Then every run's edits in the three groups of issue #29 (seen: a background its training composited onto;
unseen; motion), each beside the base model's ceiling on the same edits from `--ceiling-cache` (the JSON of
`setseq.tools.ceiling`; "-" where it holds no ceiling for a run's concept and seed), and the headline: unseen-background
success as a share of the ceiling, per concept. A run's composites come from its config (a bench folder), its
row's "composited" (a record saved since), or, in a record saved before, its label: "heldout" with "swap" = the
default colours less the edit colours, "swap" alone = every default colour, anything else = none (those labels
name the palettes the record's runs were made with, BENCHMARKS.md "Edits").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import yaml

from setseq.config_load import resolve_config
from setseq.data.synthetic import CONCEPTS
from setseq.eval import edits as E
from setseq.tools.bench_tables import groups_table, headline, headline_table, summarize_groups
from setseq.tools.ceiling import (
    CeilingCache,
    ceiling_key,
    composited_colours,
    model_fingerprint,
    suite_fingerprint,
)

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
            found = [_from_row_file(f) for f in sorted(Path(folder).glob("runs/*/*/row.json"))]
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


def _from_row_file(path: Path) -> dict:
    """A bench folder's row, with the colours its run composited onto (from its config)."""
    saved = json.loads(path.read_text())
    row = dict(saved["row"])
    if "composited" not in row and isinstance(saved.get("config"), str):
        row["composited"] = composited_colours(resolve_config(None, yaml.safe_load(saved["config"]) or {}))
    return row


def _composited(r: dict) -> list[str]:
    if "composited" in r:
        return list(r["composited"])
    label, spec = r["method"], CONCEPTS[r["concept"]]
    if "swap" in label and "heldout" in label:
        held = set(E.edit_backgrounds(spec))
        return [c for c in ("white", "gray", "green", "yellow", "blue", "purple", "black") if c not in held]
    return ["white", "gray", "green", "yellow", "blue", "purple", "black"] if "swap" in label else []


def add_groups(rows: dict, cache: CeilingCache | None) -> None:
    """Each row's edits in groups beside the base model's ceiling (judged by the run's own shape rule: from
    its row, or where a record lacks it, whether any edit kept the colour but not the shape)."""
    fp = model_fingerprint("toy")
    for r in rows.values():
        spec = CONCEPTS[r["concept"]]
        suite = E.edit_suite("sks", "zwx", spec.appearance.shape, spec)
        entry = None
        if cache is not None:
            key = ceiling_key(
                fp, r["concept"], int(r["seed"]), None, suite_fingerprint(spec, spec.appearance.shape)
            )
            entry = cache.get(key)
        for e in r["edits"].values():  # scored before the per-edit column existed
            e.setdefault("colour_kept", e["detected"]["colour"] == spec.appearance.colour)
        shape_ok = r.get("shape_reproduced")
        if shape_ok is None:
            shape_ok = any(
                e["colour_kept"] and not e["kept"] for e in r["edits"].values() if "colour_kept" in e
            )
        ceiling = (
            {n: E.judge_kept(c, spec, shape_reproduced=bool(shape_ok)) for n, c in entry["edits"].items()}
            if entry
            else None
        )
        r["groups"] = E.summarize_groups(r["edits"], E.group_edits(suite, _composited(r)), ceiling)


def _means(rows: dict, method: str, pairs: list) -> dict[str, float]:
    return {c: float(np.nanmean([float(rows[(method, *p)][c]) for p in pairs])) for c in COLS}


def _option(args: list[str], flag: str) -> tuple[str | None, list[str]]:
    if flag not in args:
        return None, args
    i = args.index(flag)
    return args[i + 1], args[:i] + args[i + 2 :]


def main(args: list[str]) -> None:
    save, args = _option(args, "--save")
    ceiling_cache, args = _option(args, "--ceiling-cache")
    seed, args = _option(args, "--seed")
    concepts, args = _option(args, "--concepts")
    rows = load(args)
    if seed is not None:  # one seed's runs only (e.g. those the ceiling cache has)
        rows = {k: r for k, r in rows.items() if k[2] == int(seed)}
    if concepts is not None:  # those concepts only (e.g. the ones a stopped bench finished)
        rows = {k: r for k, r in rows.items() if k[1] in concepts.split(",")}
    if save:
        Path(save).write_text(json.dumps({"rows": list(rows.values())}, indent=1) + "\n")
    add_groups(rows, CeilingCache(ceiling_cache) if ceiling_cache else None)
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
    listed = list(rows.values())
    print("\nby background (issue #29): n edits, % kept (base model's), % success (base model's):")
    print(groups_table(summarize_groups(listed)))
    print("\nheadline: unseen-background success as % of the base model's on the same edits, per concept:")
    print(headline_table(headline(listed)))
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
