"""`setseq report`: the page is self-contained, finds a demo's or a run's pieces, and works in a real
browser: headless Chromium driven over the DevTools protocol loads it, the one control plays, pauses and
seeks every video, nothing is fetched from outside, and a screenshot shows the grid."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from setseq.cli import main
from setseq.data.synthetic import CONCEPTS, Appearance, ConceptSpec, Motion, render
from setseq.data.video import write_contact_sheet, write_video
from setseq.errors import SetseqError
from setseq.tools.report import build_report, find_inputs, read_losses

CONFIG = """model:
  backbone: toy
  path: toy
data:
  frames: 9
stage1:
  steps: 40
stage2:
  steps: 60
"""


def _write_run(run: Path) -> None:
    (run / "logs").mkdir(parents=True)
    (run / "config.yaml").write_text(CONFIG)
    rng = np.random.default_rng(0)
    lines = []
    for stage, n in ((1, 40), (2, 60)):
        for step in range(1, n + 1):
            loss = 0.3 + 0.5 * np.exp(-step / 15) + 0.05 * rng.random()
            lines.append(json.dumps({"stage": stage, "step": step, "loss": loss, "grad_norm": 0.1}))
    lines.insert(5, '{"stage": 1, "step": 99, "loss": NaN}')  # non-finite: skipped
    (run / "logs" / "loss.jsonl").write_text("\n".join(lines) + '\n{"stage": 2, "st')  # torn last line


@pytest.fixture()
def demo_dir(tmp_path) -> Path:
    """What `setseq demo` writes: run/, the videos, metrics.json (demo format), contact_sheet.png."""
    d = tmp_path / "demo"
    _write_run(d / "run")
    spec = CONCEPTS["orange_star_figure8"]
    a = spec.appearance
    white = Appearance(a.shape, a.colour, a.pattern, a.size, "white")
    videos = {
        "reference": render(spec, 9, 32),
        "reproduced": render(spec, 9, 32, noise=6),
        "identity_only": render(ConceptSpec(a, Motion("static", None)), 9, 32),
        "edit_background": render(ConceptSpec(white, spec.motion), 9, 32),
        "edit_motion": render(ConceptSpec(a, Motion("linear", "left")), 9, 32),
    }
    metrics: dict = {"concept": "orange_star_figure8", "quick": True}
    for name, v in videos.items():
        write_video(d / f"{name}.mp4", v, fps=8.0)
        if name != "reference":
            metrics[name] = {"prompt": f"a sks star ({name})", "mse": 0.01, "appearance_fidelity": 1.0}
    (d / "metrics.json").write_text(json.dumps(metrics))
    write_contact_sheet(d / "contact_sheet.png", np.concatenate(list(videos.values())), cols=9)
    return d


def test_report_is_self_contained(demo_dir, tmp_path):
    out = tmp_path / "r" / "report.html"
    assert build_report(demo_dir, out, progress=False) == out
    page = out.read_text()
    assert page.count("<video class='sync'") == 5
    assert page.count("src='data:video/mp4;base64,") == 5
    assert page.count("src='data:image/png;base64,") == 2  # the loss curves and the contact sheet
    assert not re.search(r"""(src|href)=['"](?!data:)""", page)  # nothing loaded from anywhere else
    assert "http://" not in page and "https://" not in page
    labels = re.findall(r"<figcaption><b>([^<]+)</b>", page)
    assert labels == ["reference", "identity only", "identity + motion", "edit: background", "edit: motion"]
    assert "a sks star (edit_motion)" in page and "appearance" in page  # demo metrics table
    assert "stage2:" in page and "steps: 60" in page  # the config
    assert not list(out.parent.glob(".*"))  # no temporary file left beside it


def test_read_losses_skips_bad_lines(demo_dir):
    losses = read_losses(demo_dir / "run" / "logs" / "loss.jsonl")
    assert sorted(losses) == [1, 2] and len(losses[1]) == 40 and len(losses[2]) == 60


def test_report_of_a_run_with_videos_and_eval_metrics(demo_dir, tmp_path, capsys):
    run = demo_dir / "run"
    eval_metrics = {
        "metrics": ["mse", "tc", "motion"],
        "order": ["reproduced", "edit_motion"],
        "notes": ["ID: CLIP image similarity (tiny); no --arcface or --dino given"],
        "reference_tc": 0.99,
        "videos": {
            "edit_motion": {"mse": 0.05, "tc": 0.98, "motion": 0.4, "prompt": "moving left"},
            "reproduced": {"mse": 0.01, "tc": 0.97, "motion": 0.9, "prompt": None},
        },
    }
    m = tmp_path / "metrics.json"
    m.write_text(json.dumps(eval_metrics))
    out = tmp_path / "run_report.html"
    assert main(["report", str(run), "--videos", str(demo_dir), "--metrics", str(m), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    page = out.read_text()
    assert page.index("<th>reproduced</th>") < page.index("<th>edit_motion</th>")  # eval's order
    assert "MSE lower is better" in page and "no --arcface" in page and "(reference)" in page
    assert "motion 0.9" in page  # per-video summary under the video
    # a run alone: no videos, still a page with the loss curves and the config
    out2 = tmp_path / "bare.html"
    build_report(run, out2, progress=False)
    assert "No videos in" in out2.read_text() and "loss curves" in out2.read_text()


def test_report_bad_input(tmp_path, demo_dir, capsys):
    with pytest.raises(SetseqError, match="neither a run folder"):
        find_inputs(tmp_path)
    with pytest.raises(SetseqError, match="is not a folder"):
        find_inputs(tmp_path / "missing")
    assert main(["report", str(demo_dir), "--metrics", str(tmp_path / "no.json"), "--out", "x.html"]) == 2
    assert "--metrics" in capsys.readouterr().err


def test_report_reencodes_videos_browsers_cannot_play(demo_dir, tmp_path):
    """An MPEG-4 part 2 .avi is shown as H.264 (or VP9)."""
    import av

    from setseq.data.video import probe_video

    (demo_dir / "reference.mp4").unlink()
    write_video(demo_dir / "reference.avi", render(CONCEPTS["orange_star_figure8"], 9, 32), fps=8.0)
    assert probe_video(demo_dir / "reference.avi").codec == "mpeg4"
    shutil.move(demo_dir / "reference.avi", demo_dir / "reference.mkv")
    out = tmp_path / "r.html"
    build_report(demo_dir, out, progress=False)
    uri = re.search(r"<video class='sync' id='v0'[^>]*src='data:(video/\w+);base64,([^']+)'", out.read_text())
    assert uri is not None
    clip = tmp_path / ("v0.mp4" if uri.group(1) == "video/mp4" else "v0.webm")
    clip.write_bytes(base64.b64decode(uri.group(2)))
    with av.open(str(clip)) as c:
        assert c.streams.video[0].codec_context.name in {"h264", "vp9"}


# ------------------------------------------------------------------------------------ the browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--mute-audio",
    "--autoplay-policy=no-user-gesture-required",
    "--remote-allow-origins=*",
    "--remote-debugging-port=0",
    "--window-size=1280,900",
]


class DevTools:
    """A minimal Chrome DevTools protocol client over one page's websocket."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def js(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"JS error: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_event(self, method: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events:
                if e.get("method") == method:
                    return e
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(method)


@pytest.fixture()
def browser(tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (CI installs Debian's chromium in .ci/run)")
    pytest.importorskip("websocket", reason="websocket-client is a dev dependency")
    profile = tmp_path / "chromium-profile"
    proc = subprocess.Popen(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"chromium did not start (exit {proc.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        dt = DevTools(page["webSocketDebuggerUrl"])
        yield dt
        dt.ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


PLAYBACK_CHECK = """(async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const vids = Array.from(document.querySelectorAll('video'));
  for (let i = 0; i < 100 && !vids.every(v => v.readyState >= 2); i++) await sleep(100);
  const btn = document.getElementById('play'), seek = document.getElementById('seek');
  const state = () => vids.map(v => ({t: v.currentTime, paused: v.paused, ready: v.readyState,
                                       d: v.duration, w: v.videoWidth, err: v.error && v.error.code}));
  if (window.setseqReport.isPlaying()) btn.click();        // pause through the control
  await sleep(200);
  const paused = state();
  seek.value = 0; seek.dispatchEvent(new Event('input'));  // rewind through the control
  await sleep(200);
  const rewound = state();
  btn.click();                                             // play through the control
  await sleep(500);
  const playing = state();
  btn.click();                                             // pause, then seek to the middle
  seek.value = 500; seek.dispatchEvent(new Event('input'));
  await sleep(300);
  const middle = state();
  return {paused, rewound, playing, middle, label: btn.textContent};
})()"""


def test_report_in_headless_chromium(demo_dir, tmp_path, browser):
    from PIL import Image

    out = tmp_path / "report.html"
    build_report(demo_dir, out, progress=False)
    browser.call("Network.enable")
    browser.call("Page.enable")
    browser.call("Page.navigate", url=out.as_uri())
    browser.wait_event("Page.loadEventFired")
    assert browser.js("document.title").startswith("setseq report")

    r = browser.js(PLAYBACK_CHECK)
    assert len(r["playing"]) == 5
    for v in r["playing"]:
        assert v["err"] is None and v["ready"] >= 2 and v["w"] == 32, v  # decoded by the browser
        assert not v["paused"] and v["t"] > 0.1, v  # the play control started every video
    assert all(v["paused"] for v in r["paused"]) and all(v["t"] < 0.05 for v in r["rewound"])
    for v in r["middle"]:  # the seek bar moved every video to the same fraction of its duration
        assert v["paused"] and v["t"] == pytest.approx(0.5 * v["d"], abs=0.05), v
    assert r["label"] == "Play"

    # nothing was requested from anywhere but the file itself and its data: URIs
    urls = [
        e["params"]["request"]["url"]
        for e in browser.events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    assert urls and all(u.startswith(("file:", "data:")) for u in urls), urls

    shot = browser.call("Page.captureScreenshot", format="png")
    png = base64.b64decode(shot["data"])
    (tmp_path / "report.png").write_bytes(png)
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(float)
    assert img.shape[0] >= 600 and img.shape[1] >= 1000
    assert img.std() > 20  # not a blank page
    # the grid: five video tiles side by side, each showing a frame (a sprite on a background: not a
    # uniform area, which is what an empty <video> box or the page would be)
    tiles = browser.js(
        "Array.from(document.querySelectorAll('video')).map(v => {const r = v.getBoundingClientRect();"
        " return [r.left, r.top, r.width, r.height];})"
    )
    assert len({round(t[1]) for t in tiles}) == 1  # side by side on one row
    for left, top, w, h in tiles:
        tile = img[int(top) + 2 : int(top + h) - 2, int(left) + 2 : int(left + w) - 2]
        assert w > 150 and tile.size and tile.std() > 10, (left, top, tile.std())


def test_report_of_a_run_shows_its_own_reference_clip(demo_dir, tmp_path):
    """`setseq report RUN --videos DIR`: the run's training clip is shown first, sampled as it trained."""
    run = demo_dir / "run"
    video = tmp_path / "clip.mp4"
    truth = render(CONCEPTS["red_star_bounce"], 12, 32)
    write_video(video, truth, fps=8.0)
    (run / "config.yaml").write_text(CONFIG.replace("data:\n", f"data:\n  video: {video}\n"))
    vids = tmp_path / "vids"
    vids.mkdir()
    for name in ("reproduced", "edit_background_white"):
        (vids / f"{name}.mp4").write_bytes((demo_dir / "reproduced.mp4").read_bytes())
    out = tmp_path / "r.html"
    build_report(run, out, videos=vids, progress=False)
    page = out.read_text()
    labels = re.findall(r"<figcaption><b>([^<]+)</b>", page)
    assert labels == ["reference", "identity + motion", "edit: background white"]
    assert page.count("<video class='sync'") == 3
    video.unlink()  # the training video gone: a note, no reference
    build_report(run, out, videos=vids, progress=False)
    page = out.read_text()
    assert "is gone: no reference clip shown" in page and page.count("<video class='sync'") == 2
