"""The demo pipeline end to end at a reduced step count, on the shipped toy model (as `setseq demo` runs it)."""

from __future__ import annotations

import json

from PIL import Image

from setseq.demo import run_demo


def test_demo_quick(tmp_path):
    out = tmp_path / "demo"
    res = run_demo(out, quick=True, log=lambda s: None)
    names = [
        "reference",
        "base_from_caption",
        "reproduced",
        "identity_only",
        "edit_background",
        "edit_motion",
        "edit_context",
    ]
    for n in names:
        assert (out / f"{n}.mp4").stat().st_size > 0, n
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.height >= len(names) * 32 * 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(res))
    for n in names[1:]:
        assert 0.0 <= metrics[n]["appearance_fidelity"] <= 1.0 and metrics[n]["mse"] >= 0.0
    assert {"edit_adherence", "requested"} <= set(metrics["edit_background"])
    assert (out / "run" / "setseq.safetensors").is_file()
    # A second run replaces its own folder.
    run_demo(out, quick=True, log=lambda s: None)
