"""`setseq report`: one self-contained HTML page of a run, to look at rather than read.

What the page shows, top to bottom:

1. the videos side by side, playing in sync: the reference, identity only, identity + motion, the edits,
   then any other video (one play / pause button, a seek bar and a speed menu drive every <video>, all
   muted and looping; a video of another length follows at the same fraction of its duration);
2. the metrics table: ``setseq eval``'s metrics.json (MSE, ID, C-T, TC, motion) or the demo's;
3. the loss curves of stage 1 and stage 2 (PNG drawn with matplotlib from ``RUN/logs/loss.jsonl``);
4. the contact sheet, where the videos folder has one, and the run's ``config.yaml``.

Where the inputs are: ``setseq report DEMO_DIR`` (what ``setseq demo`` writes: ``run/`` + the videos +
metrics.json) or ``setseq report RUN --videos DIR`` (videos named as the demo names them:
``reference.mp4``, ``identity_only.mp4``, ``reproduced.mp4``, ``edit_*.mp4``; other names are shown too,
after them). Without ``--videos`` a run's ``samples/`` is used. The metrics: ``--metrics FILE``, else the
first of ``RUN/eval/metrics.json`` (``setseq eval --out RUN/eval``), ``VIDEOS/eval/metrics.json``,
``VIDEOS/metrics.json`` (the demo's), ``RUN/metrics.json``.

Everything is embedded (videos and PNGs as base64 data URIs; no script, style or font from elsewhere),
so the file can be mailed or attached to an issue. Videos whose codec browsers do not play (MPEG-4 part
2) are re-encoded to H.264 / VP9 first. The file is written atomically.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm.auto import tqdm

from setseq.data.masks import load_mask
from setseq.data.video import load_clip, probe_video, write_contact_sheet, write_video
from setseq.errors import SetseqError
from setseq.eval.run_eval import trained_clip
from setseq.io import write_text

__all__ = ["ReportInputs", "build_report", "find_inputs", "loss_plot_png", "read_losses", "render_html"]

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".m4v")
BROWSER_CODECS = {"h264", "vp8", "vp9", "av1"}
_MIME = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/mp4", ".webm": "video/webm"}
# Order and labels of the demo's videos; anything else follows, labelled by its file name.
_KNOWN = [
    ("reference", "reference"),
    ("identity_only", "identity only"),
    ("reproduced", "identity + motion"),
    ("lora_off", "LoRA off"),
]
_COLUMN_TITLES = {
    "mse": "MSE",
    "id": "ID",
    "clip_t": "C-T",
    "tc": "TC",
    "motion": "motion",
    "motion_distance": "motion dist.",
    "appearance_fidelity": "appearance",
    "motion_similarity": "motion sim.",
    "motion_family": "motion family",
    "motion_family_match": "family match",
    "edit_adherence": "edit",
    "kind": "edit kind",
    "followed": "followed",
    "kept": "concept kept",
    "success": "edit success",
    "temporal_consistency": "TC (pixels)",
    "identity_scale": "id scale",
    "motion_scale": "motion scale",
}
_HIDDEN_COLUMNS = {"path", "prompt", "requested", "frames", "motion_static", "detected"}


@dataclass
class ReportInputs:
    """Where the report's pieces come from."""

    run: Path
    videos: list[tuple[str, Path]]  # (label, file) in display order
    metrics: Path | None
    images: list[Path] = field(default_factory=list)  # PNGs shown as they are (contact sheet)
    video_dir: Path | None = None


def _label(stem: str) -> str:
    for key, label in _KNOWN:
        if stem == key:
            return label
    if stem.startswith("edit_"):
        return "edit: " + stem[5:].replace("_", " ")
    if stem == "base_from_caption":
        return "base model (caption)"
    return stem.replace("_", " ")


def _order(stem: str) -> tuple[int, str]:
    keys = [k for k, _ in _KNOWN]
    if stem in keys:
        return keys.index(stem), stem
    return (len(keys), stem) if stem.startswith("edit_") else (len(keys) + 1, stem)


def find_inputs(
    path: str | Path, videos: str | Path | None = None, metrics: str | Path | None = None
) -> ReportInputs:
    """Resolve a demo folder or a run folder (+ optional videos folder and metrics file)."""
    d = Path(path).expanduser().resolve()
    if not d.is_dir():
        raise SetseqError(
            f"{d} is not a folder",
            "pass a run folder (`setseq train --out`) or a demo folder (`setseq demo --out`)",
        )
    if (d / "run" / "config.yaml").is_file():
        run, vdir = d / "run", Path(videos).resolve() if videos else d
    elif (d / "config.yaml").is_file():
        run = d
        vdir = Path(videos).resolve() if videos else (d / "samples" if (d / "samples").is_dir() else None)
    else:
        raise SetseqError(
            f"{d} is neither a run folder (no config.yaml) nor a demo folder (no run/config.yaml)",
            "pass the folder that `setseq train --out` or `setseq demo --out` wrote",
        )
    if vdir is not None and not vdir.is_dir():
        raise SetseqError(f"--videos {vdir} is not a folder", "pass the folder holding the generated videos")
    found: list[Path] = []
    if vdir is not None:
        found = [
            p
            for p in vdir.iterdir()
            if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file() and not p.name.startswith(".")
        ]
    found.sort(key=lambda p: _order(p.stem))
    if metrics is not None:
        m: Path | None = Path(metrics)
        if not m.is_file():
            raise SetseqError(
                f"--metrics {m} does not exist", "pass the metrics.json that `setseq eval` wrote"
            )
    else:
        # `setseq eval --out RUN/eval` first, then a metrics.json beside the videos (the demo's), then the run's
        folders = [run / "eval", *([vdir / "eval", vdir] if vdir is not None else []), run]
        cands = [p / "metrics.json" for p in folders]
        m = next((p for p in cands if p.is_file()), None)
    images = (
        [vdir / "contact_sheet.png"] if vdir is not None and (vdir / "contact_sheet.png").is_file() else []
    )
    return ReportInputs(run, [(_label(p.stem), p) for p in found], m, images, vdir)


# ----------------------------------------------------------------------------------------- pieces


def read_losses(path: Path) -> dict[int, list[tuple[int, float]]]:
    """loss.jsonl -> {stage: [(step, loss), ...]}, skipping torn or non-finite lines."""
    out: dict[int, list[tuple[int, float]]] = {}
    if not path.is_file():
        return out
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
            stage, step, loss = int(rec["stage"]), int(rec["step"]), float(rec["loss"])
        except (ValueError, KeyError, TypeError):
            continue
        if math.isfinite(loss):
            out.setdefault(stage, []).append((step, loss))
    for pts in out.values():
        pts.sort()
    return out


def loss_plot_png(losses: dict[int, list[tuple[int, float]]]) -> bytes:
    """One PNG with a panel per stage: the loss per step and its moving average."""
    import matplotlib  # (here: the Agg backend must be chosen before pyplot is imported, and only a report plots)

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    stages = sorted(losses)
    fig, axes = plt.subplots(1, len(stages), figsize=(5.2 * len(stages), 3.2), squeeze=False, dpi=100)
    names = {1: "stage 1 (set: identity)", 2: "stage 2 (sequence: motion)"}
    for ax, stage in zip(axes[0], stages):
        steps = [s for s, _ in losses[stage]]
        vals = [v for _, v in losses[stage]]
        win = max(1, len(vals) // 20)
        avg = [
            sum(vals[max(0, i - win + 1) : i + 1]) / len(vals[max(0, i - win + 1) : i + 1])
            for i in range(len(vals))
        ]
        if win > 1:
            ax.plot(steps, vals, color="#9bb7d4", lw=0.8, label="loss per step")
        ax.plot(steps, avg, color="#1f4e79", lw=1.8, label=f"mean of {win} steps" if win > 1 else "loss")
        ax.set_title(names.get(stage, f"stage {stage}"), fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("flow-matching loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _playable(path: Path, tmp: Path) -> tuple[bytes, str]:
    """The video's bytes and MIME type, re-encoded when browsers cannot play its codec."""
    info = probe_video(path)
    suffix = path.suffix.lower()
    if info.codec in BROWSER_CODECS and suffix in _MIME:
        return path.read_bytes(), _MIME[suffix]
    clip = load_clip(path)
    out = tmp / (path.stem + ".mp4")
    write_video(out, clip.frames, fps=info.fps or 8.0)
    if probe_video(out).codec not in BROWSER_CODECS:  # no libx264 in this PyAV build: VP9 instead
        out = tmp / (path.stem + ".webm")
        write_video(out, clip.frames, fps=info.fps or 8.0)
    return out.read_bytes(), _MIME[out.suffix]


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if v is None:
        return "-"
    return str(v)


def metric_rows(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Rows of a metrics.json: `setseq eval`'s ({"videos": {...}}) or the demo's (one dict per shot)."""
    if isinstance(data.get("videos"), dict):
        videos = data["videos"]
        order = [n for n in data.get("order") or [] if n in videos]
        order += [n for n in videos if n not in order]
        return {k: videos[k] for k in order if isinstance(videos[k], dict)}
    rows = {
        k: v for k, v in data.items() if isinstance(v, dict) and ("mse" in v or "appearance_fidelity" in v)
    }
    return {k: rows[k] for k in sorted(rows, key=_order)}  # the demo's json is sorted: use the grid's order


def _metrics_html(data: dict[str, Any]) -> str:
    rows = metric_rows(data)
    if not rows:
        return "<p class='note'>The metrics file holds no per-video rows.</p>"
    cols: list[str] = [c for c in _COLUMN_TITLES if any(c in row for row in rows.values())]
    for row in rows.values():
        for k, v in row.items():
            if (
                k not in cols
                and k not in _HIDDEN_COLUMNS
                and (v is None or isinstance(v, (int, float, str, bool)))
            ):
                cols.append(k)
    head = "".join(f"<th>{html.escape(_COLUMN_TITLES.get(c, c))}</th>" for c in cols)
    body = []
    if data.get("reference_tc") is not None and "tc" in cols:
        cells = "".join(f"<td>{_fmt(data['reference_tc']) if c == 'tc' else '-'}</td>" for c in cols)
        body.append(f"<tr><th>(reference)</th>{cells}<td></td></tr>")
    for name, row in rows.items():
        cells = "".join(f"<td>{html.escape(_fmt(row.get(c)))}</td>" for c in cols)
        prompt = html.escape(str(row.get("prompt") or ""))
        body.append(f"<tr><th>{html.escape(name)}</th>{cells}<td class='prompt'>{prompt}</td></tr>")
    notes = "".join(f"<li>{html.escape(str(n))}</li>" for n in data.get("notes", []))
    legend = "MSE lower is better; ID, C-T, TC and motion higher." if "videos" in data else ""
    return (
        f"<table class='metrics'><thead><tr><th>video</th>{head}<th>prompt</th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
        + (f"<p class='note'>{legend}</p>" if legend else "")
        + (f"<ul class='note'>{notes}</ul>" if notes else "")
    )


_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; background: #fafafa; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
.sub { color: #666; font-size: 13px; }
.controls { position: sticky; top: 0; background: #fafafa; padding: 8px 0; display: flex; gap: 12px;
  align-items: center; z-index: 2; }
.controls button { font-size: 15px; padding: 4px 16px; }
#seek { width: 320px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 14px; }
figure { margin: 0; background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px; }
figure video { width: 100%; aspect-ratio: var(--ar); background: #000; image-rendering: pixelated;
  display: block; }
figcaption { font-size: 13px; margin-top: 6px; } figcaption b { display: block; }
figcaption .prompt, td.prompt { color: #555; font-size: 12px; } .vm { color: #1f4e79; font-size: 12px; }
table.metrics { border-collapse: collapse; font-size: 13px; background: #fff; }
table.metrics th, table.metrics td { border: 1px solid #ddd; padding: 4px 8px; text-align: right; }
table.metrics th:first-child, table.metrics td.prompt, table.metrics th:last-child { text-align: left; }
.note { color: #666; font-size: 12px; }
img.plot { max-width: 100%; border: 1px solid #ddd; background: #fff; }
img.sheet { max-width: 100%; image-rendering: pixelated; }
pre { background: #fff; border: 1px solid #ddd; padding: 10px; font-size: 12px; overflow: auto; }
"""

# One control drives every video: play/pause all, seek all to the same fraction of their duration, keep
# followers within 0.1 s of the leader (the first video) while playing. window.setseqReport is for tests.
_JS = """
(function () {
  const vids = Array.from(document.querySelectorAll('video.sync'));
  const btn = document.getElementById('play'), seek = document.getElementById('seek');
  const clock = document.getElementById('clock'), speed = document.getElementById('speed');
  if (!vids.length) { btn.disabled = true; seek.disabled = true; return; }
  const lead = vids[0];
  let playing = false;
  const frac = () => (lead.duration ? lead.currentTime / lead.duration : 0);
  function seekAll(f) { for (const v of vids) { if (v.duration) v.currentTime = Math.min(f, 0.9999) * v.duration; } }
  async function play() {
    seekAll(frac());
    playing = true; btn.textContent = 'Pause';
    await Promise.all(vids.map(v => v.play().catch(() => {})));
  }
  function pause() { playing = false; btn.textContent = 'Play'; for (const v of vids) v.pause(); seekAll(frac()); }
  btn.addEventListener('click', () => (playing ? pause() : play()));
  seek.addEventListener('input', () => seekAll(seek.value / 1000));
  speed.addEventListener('change', () => { for (const v of vids) v.playbackRate = parseFloat(speed.value); });
  lead.addEventListener('timeupdate', () => {
    const f = frac();
    seek.value = Math.round(f * 1000);
    clock.textContent = lead.currentTime.toFixed(2) + ' / ' + (lead.duration || 0).toFixed(2) + ' s';
    if (!playing) return;
    for (const v of vids.slice(1)) {
      if (!v.duration) continue;
      const want = f * v.duration;
      if (Math.abs(v.currentTime - want) > 0.1 && Math.abs(v.currentTime - want) < v.duration - 0.1) v.currentTime = want;
      if (v.paused) v.play().catch(() => {});
    }
  });
  window.setseqReport = { play, pause, seek: seekAll, videos: vids, isPlaying: () => playing };
  // Start playing once every video can play (muted autoplay is allowed).
  Promise.all(vids.map(v => v.readyState >= 3 ? null : new Promise(r => v.addEventListener('canplay', r, { once: true }))))
    .then(() => { if (!playing) play(); });
})();
"""


def render_html(
    title: str,
    subtitle: str,
    videos: list[dict[str, Any]],
    metrics: dict[str, Any] | None,
    loss_png: bytes | None,
    images: list[tuple[str, bytes]],
    config_text: str | None,
    notes: list[str],
) -> str:
    """The page. `videos`: dicts with label, uri, prompt, metrics (a short string), aspect (w / h)."""
    e = html.escape
    figs = []
    for i, v in enumerate(videos):
        prompt = f"<span class='prompt'>{e(v['prompt'])}</span>" if v.get("prompt") else ""
        vm = f"<span class='vm'>{e(v['metrics'])}</span><br>" if v.get("metrics") else ""
        figs.append(
            f"<figure><video class='sync' id='v{i}' style='--ar: {v['aspect']:.4f}' muted loop playsinline "
            f"preload='auto' src='{v['uri']}'></video>"
            f"<figcaption><b>{e(v['label'])}</b>{vm}{prompt}</figcaption></figure>"
        )
    grid = f"<div class='grid'>{''.join(figs)}</div>" if figs else "<p class='note'>No videos found.</p>"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1><div class='sub'>{e(subtitle)}</div>",
        "<div class='controls'><button id='play' type='button'>Play</button>",
        "<input id='seek' type='range' min='0' max='1000' value='0' aria-label='seek'>",
        "<select id='speed' aria-label='speed'><option value='0.25'>0.25x</option>"
        "<option value='0.5'>0.5x</option><option value='1' selected>1x</option></select>",
        "<span id='clock' class='sub'></span></div>",
        grid,
    ]
    parts += [f"<p class='note'>{e(n)}</p>" for n in notes]
    parts.append("<h2>Metrics</h2>")
    parts.append(
        _metrics_html(metrics) if metrics is not None else "<p class='note'>No metrics.json found.</p>"
    )
    parts.append("<h2>Loss</h2>")
    if loss_png:
        parts.append(f"<img class='plot' alt='loss curves' src='{_data_uri(loss_png, 'image/png')}'>")
    else:
        parts.append("<p class='note'>No loss log (logs/loss.jsonl) in the run.</p>")
    for label, png in images:
        parts.append(
            f"<h2>{e(label)}</h2><img class='sheet' alt='{e(label)}' src='{_data_uri(png, 'image/png')}'>"
        )
    parts.append("<h2>Config</h2>")
    parts.append(f"<pre>{e(config_text)}</pre>" if config_text else "<p class='note'>No config.yaml.</p>")
    parts.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(parts)


def _short_metrics(row: dict[str, Any] | None) -> str:
    if not row:
        return ""
    keys = [
        k
        for k in ("mse", "id", "clip_t", "tc", "motion", "appearance_fidelity", "motion_similarity")
        if isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool)
    ]
    return " · ".join(f"{_COLUMN_TITLES.get(k, k)} {row[k]:.3g}" for k in keys[:5])


def _training_clip(run: Path, notes: list[str]) -> tuple[Any, dict[str, Any]] | None:
    """The run's own training clip, sampled as the run sampled it (`setseq.eval.run_eval.trained_clip`, the
    frames `setseq eval --reference RUN` compares with), and the config's data section; None with a note when
    its video is gone."""
    try:
        clip = trained_clip(run)
    except SetseqError as exc:
        problem = str(exc).split(". Fix:")[
            0
        ]  # "the run's training video X is gone", or why it cannot be read
        gone = "is gone" in problem
        notes.append(
            f"{problem[0].upper()}{problem[1:]}: no reference clip shown."
            if gone
            else f"No reference clip shown: {exc}"
        )
        return None
    if clip is None:
        return None
    notes.append(
        f"The reference is the {len(clip.frames)} frames the run trained on (as `setseq eval --reference RUN` scores)."
    )
    data = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("data") or {}
    return clip, data


def _reference_clip(clip: Any, tmp: Path) -> Path:
    """The training clip as a video in `tmp`."""
    out = tmp / "reference.mp4"
    write_video(out, clip.frames, fps=clip.fps or clip.source_fps or 8.0)
    return out


def _run_mask(run: Path, data: dict[str, Any]) -> Path | None:
    """The run's subject mask: `data.mask`, or for `auto` the newest mask folder of the run's cache."""
    mask = data.get("mask")
    if mask != "auto":
        return Path(mask) if mask else None
    made = sorted((p for p in (run / "cache").glob("mask-*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return made[-1] if made else None


def mask_overlay(frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The subject as it is, the rest dimmed and tinted red: what the mask keeps, at a glance."""
    m = np.asarray(mask, np.float32)[..., None]
    rest = frames.astype(np.float32) * 0.35 + np.array([160.0, 0.0, 0.0], np.float32)
    return np.clip(np.round(m * frames + (1 - m) * rest), 0, 255).astype(np.uint8)


def _mask_parts(run: Path, clip: Any, data: dict[str, Any], tmp: Path, notes: list[str]):
    """(the overlay clip, a one-row contact sheet PNG) of the run's subject mask on its training clip, so the
    user checks the mask before trusting the run; None when the run has no mask (a note when it is gone)."""
    path = _run_mask(run, data)
    if path is None:
        return None
    try:
        start, end = float(data.get("start") or 0.0), data.get("end")
        mask = load_mask(path, data["video"], clip, fps=data.get("fps"), start=start, end=end)
    except SetseqError as exc:
        notes.append(f"No subject mask shown: {exc}")
        return None
    over = mask_overlay(clip.frames, mask)
    video = tmp / "subject_mask.mp4"
    write_video(video, over, fps=clip.fps or clip.source_fps or 8.0)
    sheet = tmp / "subject_mask.png"
    write_contact_sheet(sheet, over, cols=len(over), scale=max(1, 96 // over.shape[1]))
    return video, sheet.read_bytes()


def build_report(
    path: str | Path,
    out: str | Path,
    videos: str | Path | None = None,
    metrics: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Write the HTML report of a demo or run folder to `out` (atomically); returns `out`."""
    inputs = find_inputs(path, videos, metrics)
    out = Path(out)
    notes: list[str] = []
    metrics_data: dict[str, Any] | None = None
    if inputs.metrics is not None:
        try:
            metrics_data = json.loads(inputs.metrics.read_text())
        except (ValueError, OSError) as exc:
            raise SetseqError(
                f"cannot read {inputs.metrics}: {exc}", "pass a metrics.json that setseq wrote"
            ) from None
        if not isinstance(metrics_data, dict):
            raise SetseqError(
                f"{inputs.metrics} is not a metrics.json of setseq", "pass the one `setseq eval` wrote"
            )
    rows = metric_rows(metrics_data) if metrics_data else {}
    if not inputs.videos:
        notes.append(f"No videos in {inputs.video_dir or inputs.run}; pass --videos DIR to show some.")

    steps = len(inputs.videos) + 2
    with (
        tempfile.TemporaryDirectory() as tmp,
        tqdm(total=steps, desc="report", unit="part", disable=not progress) as bar,
    ):
        shown = []
        videos_shown = list(inputs.videos)
        images = [(p.stem.replace("_", " "), p.read_bytes()) for p in inputs.images]
        need_ref = not any(p.stem == "reference" for _, p in videos_shown)
        training = _training_clip(inputs.run, notes if need_ref else [])
        if training is not None:
            if need_ref:
                videos_shown.insert(0, ("reference", _reference_clip(training[0], Path(tmp))))
            if (parts := _mask_parts(inputs.run, *training, Path(tmp), notes)) is not None:
                videos_shown.insert(1, ("subject mask", parts[0]))
                images.insert(0, ("subject mask (overlay, one frame each)", parts[1]))
        for label, p in videos_shown:
            info = probe_video(p)
            data, mime = _playable(p, Path(tmp))
            row = rows.get(p.stem) or rows.get(str(p))
            shown.append(
                {
                    "label": label,
                    "uri": _data_uri(data, mime),
                    "prompt": (row or {}).get("prompt"),
                    "metrics": _short_metrics(row),
                    "aspect": info.width / info.height,
                }
            )
            bar.update()
        losses = read_losses(inputs.run / "logs" / "loss.jsonl")
        loss_png = loss_plot_png(losses) if losses else None
        bar.update()
        cfg_path = inputs.run / "config.yaml"
        config_text = cfg_path.read_text(errors="replace") if cfg_path.is_file() else None
        title = f"setseq report: {inputs.run.parent.name if inputs.run.name == 'run' else inputs.run.name}"
        if metrics_data and isinstance(metrics_data.get("concept"), str):
            title += f" ({metrics_data['concept']})"
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        subtitle = f"run {inputs.run} · videos {inputs.video_dir or '-'} · made {stamp}"
        page = render_html(title, subtitle, shown, metrics_data, loss_png, images, config_text, notes)
        write_text(out, page)
        bar.update()
    return out
