"""Two bench folders on the same edits: each run's unseen and motion edits as the second folder's runs group
them (by the colours *they* composited onto), scored for both. For a candidate that composites onto other
colours than the recipe (so some of the recipe's unseen edits became seen), this compares the two on the edits
that are unseen in both (issue #29).

    python benchmarks/same_edits.py /work/b29/f_recipe_s0 /work/b29/f_light_s0

Prints, per concept and group, the successes of each, and the totals: n edits, kept, success.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from setseq.data.synthetic import CONCEPTS
from setseq.eval import edits as E

_spec = importlib.util.spec_from_file_location("edit_table", Path(__file__).with_name("edit_table.py"))
assert _spec is not None and _spec.loader is not None
edit_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(edit_table)


def main(first: str, second: str) -> None:
    rows = edit_table.load([f"A={first}", f"B={second}"])
    totals: dict[tuple[str, str], list[int]] = {}
    for (method, concept, seed), b in sorted(rows.items()):
        a = rows.get(("A", concept, seed))
        if method != "B" or a is None:
            continue
        spec = CONCEPTS[concept]
        groups = E.group_edits(
            E.edit_suite("sks", "zwx", spec.appearance.shape, spec), edit_table._composited(b)
        )
        for group in ("unseen", "motion"):
            names = [n for n, g in groups.items() if g == group]
            for label, row in (("A", a), ("B", b)):
                t = totals.setdefault((group, label), [0, 0, 0])
                t[0] += len(names)
                t[1] += sum(bool(row["edits"][n]["kept"]) for n in names)
                t[2] += sum(bool(row["edits"][n]["success"]) for n in names)
            ok = [sum(bool(r["edits"][n]["success"]) for n in names) for r in (a, b)]
            print(f"{concept} seed {seed} {group}: success {ok[0]} / {ok[1]} of {len(names)}")
    for (group, label), (n, kept, success) in sorted(totals.items()):
        name = first if label == "A" else second
        print(f"{group} {name}: n {n}, kept {kept}, success {success}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
