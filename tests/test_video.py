"""Video ingestion and writing (setseq.data.video) on small synthetic videos."""

from __future__ import annotations

import math
import re
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from setseq.data import video as V
from setseq.data.video import (
    from_tensor,
    load_clip,
    probe_video,
    resize_center_crop,
    to_tensor,
    write_contact_sheet,
    write_video,
)
from setseq.errors import SetseqError
from tests.helpers import audio_only, raw_avi, zero_frames

H, W = 48, 64
BITS, STRIPE = 10, 6  # frame index as a 10-bit black/white barcode of 6-px stripes in the top half


def frame_for(i: int, h: int = H, w: int = W) -> np.ndarray:
    """Top half: barcode of `i`. Bottom half: blue, with a red square moving right one pixel a frame."""
    a = np.zeros((h, w, 3), np.uint8)
    for b in range(BITS):
        if (i >> b) & 1:
            a[: h // 2, b * STRIPE : (b + 1) * STRIPE] = 255
    a[h // 2 :, :, 2] = 160
    x = 2 + i % (w - 14)
    a[h // 2 + 6 : h // 2 + 18, x : x + 12] = (220, 30, 30)
    return a


def index_of(a: np.ndarray) -> int:
    top = a[: a.shape[0] // 2].astype(float)
    return sum(int(top[:, b * STRIPE + 1 : (b + 1) * STRIPE - 1].mean() > 128) << b for b in range(BITS))


def square_x(a: np.ndarray) -> float:
    red = (a[..., 0] > 150) & (a[..., 2] < 100)
    return float(np.nonzero(red)[1].mean())


def synth(n: int) -> np.ndarray:
    return np.stack([frame_for(i) for i in range(n)])


@pytest.fixture(scope="module")
def vid(tmp_path_factory):
    """30 frames at 10 fps, 64x48."""
    path = tmp_path_factory.mktemp("vid") / "clip.mp4"
    write_video(path, synth(30), fps=10)
    return path


def write_av(path, frames, *, rate=10, pts=None, time_base=None, gop=None, rotation=None, codec="libx264"):
    """Write with PyAV directly, for what write_video deliberately does not expose."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate, options={"preset": "ultrafast"} if codec == "libx264" else {})
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if gop:
            s.gop_size = gop
        if time_base:
            s.codec_context.time_base = time_base
        if rotation is not None:
            s.set_display_rotation(rotation)
        for i, a in enumerate(frames):
            f = av.VideoFrame.from_ndarray(a, format="rgb24")
            if pts is not None:
                f.pts, f.time_base = pts[i], time_base
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


# ------------------------------------------------------------------------------------- probe / load


def test_probe(vid):
    info = probe_video(vid)
    assert "mp4" in info.container
    assert info.codec in ("h264", "mpeg4")
    assert (info.width, info.height) == (W, H)
    assert info.fps == pytest.approx(10.0)
    assert info.frames == 30
    assert info.duration == pytest.approx(3.0, abs=0.05)
    assert info.rotation == 0


def test_every_frame_in_order(vid, capsys):
    clip = load_clip(vid)
    assert clip.frames.shape == (30, H, W, 3) and clip.frames.dtype == np.uint8
    assert clip.indices == list(range(30))
    assert [index_of(f) for f in clip.frames] == list(range(30))
    assert clip.timestamps == pytest.approx([i / 10 for i in range(30)])
    xs = [square_x(f) for f in clip.frames]
    assert all(b > a for a, b in zip(xs, xs[1:]))  # the square moves right
    assert clip.source_fps == pytest.approx(10.0) and clip.source_size == (H, W)
    s = clip.summary()
    assert (
        "sampled 30 frames" in s and "10.00 fps" in s and "indices [0, 1, 2" in s and s.endswith("48x64 HxW")
    )
    assert "\n" not in s
    assert capsys.readouterr() == ("", "")  # prints nothing


def nearest(t: float, src_fps: float = 10.0) -> int:
    return math.ceil(t * src_fps - 0.5 - 1e-9)  # nearest source frame, ties to the earlier one


@pytest.mark.parametrize("fps", [4.0, 3.0, 7.5, 20.0])
def test_fps_resampling_nearest_frame(vid, fps):
    clip = load_clip(vid, fps=fps)
    n = math.ceil(3.0 * fps - 1e-9)  # targets k/fps inside the 3 s the video lasts
    expected = [nearest(k / fps) for k in range(n)]
    assert clip.indices == expected
    assert [index_of(f) for f in clip.frames] == expected
    assert f"at {fps:g} fps" in clip.summary()


def test_start_end_and_frames(vid):
    clip = load_clip(vid, start=1.0, end=2.0)
    assert clip.indices == list(range(10, 20))
    assert [index_of(f) for f in clip.frames] == clip.indices
    assert clip.timestamps[0] == pytest.approx(1.0)

    clip = load_clip(vid, fps=5, start=0.5, frames=3)
    assert clip.indices == [5, 7, 9] == [index_of(f) for f in clip.frames]

    clip = load_clip(vid, start=0.25, frames=4)  # every frame from the first one at or after start
    assert clip.indices == [3, 4, 5, 6]


def test_resized_load(vid):
    clip = load_clip(vid, frames=5, size=(32, 32))
    assert clip.frames.shape == (5, 32, 32, 3)
    assert clip.summary().endswith("-> 32x32 HxW")


def test_seek_into_long_video(tmp_path):
    """A clip from the middle of a long video: seeked, and the indices still right."""
    path = write_av(tmp_path / "long.mp4", synth(600), rate=30, gop=15)
    clip = load_clip(path, start=15.0, frames=4)
    assert clip.indices == [450, 451, 452, 453] == [index_of(f) for f in clip.frames]
    assert clip.timestamps[0] == pytest.approx(15.0)
    clip = load_clip(path, start=12.0, fps=5, frames=3)
    assert clip.indices == [360, 366, 372] == [index_of(f) for f in clip.frames]


def test_variable_frame_rate_uses_pts(tmp_path):
    pts = [0, 100, 150, 400, 450, 900, 1000]  # milliseconds
    path = write_av(tmp_path / "vfr.mkv", synth(len(pts)), pts=pts, time_base=Fraction(1, 1000))
    clip = load_clip(path)
    assert clip.timestamps == pytest.approx([p / 1000 for p in pts])
    assert [index_of(f) for f in clip.frames] == list(range(len(pts)))
    clip = load_clip(path, fps=10, frames=10)  # targets 0.0, 0.1, ... 0.9 s -> nearest by time
    assert clip.indices == [0, 1, 2, 3, 3, 4, 4, 5, 5, 5]
    assert [index_of(f) for f in clip.frames] == clip.indices


def test_rotated_phone_video_is_upright(tmp_path):
    a = np.zeros((1, H, W, 3), np.uint8)
    a[0, :10, :10] = 255  # white marker top-left as stored
    path = write_av(tmp_path / "rot.mp4", np.repeat(a, 3, 0), rotation=-90)  # display: 90 degrees clockwise
    info = probe_video(path)
    assert (info.width, info.height, info.rotation) == (H, W, -90)
    clip = load_clip(path)
    assert clip.frames.shape == (3, W, H, 3) and clip.source_size == (W, H)
    assert clip.frames[0, :8, -8:].mean() > 200 and clip.frames[0, :8, :8].mean() < 50  # now top-right


# ------------------------------------------------------------------------------------- errors


def test_fewer_frames_error(vid):
    with pytest.raises(SetseqError, match="only 30 frames") as e:
        load_clip(vid, frames=40)
    assert "--frames 30 or fewer" in str(e.value)
    with pytest.raises(
        SetseqError, match=r"only 8 frames at 8 fps between 2\.0 s and 3\.0 s, but 10 were asked"
    ) as e:
        load_clip(vid, frames=10, fps=8, start=2.0)
    assert "--frames 8 or fewer" in str(e.value) and "--start/--end" in str(e.value)
    with pytest.raises(SetseqError, match="only 3 frames"):
        load_clip(vid, start=1.0, end=1.3, frames=5)
    with pytest.raises(SetseqError, match=r"only 3\.00 s long.*--start below 3\.00"):
        load_clip(vid, start=5.0)


def _png(path):
    from PIL import Image

    Image.fromarray(frame_for(3)).save(path)
    return path


def _put(path, data: bytes):
    path.write_bytes(data)
    return path


BAD_FILES = {
    "missing": (lambda d, v: d / "nope.mp4", "does not exist"),
    "directory": (lambda d, v: d, "is a folder"),
    "empty": (lambda d, v: _put(d / "empty.mp4", b""), r"empty \(0 bytes\)"),
    "random bytes": (
        lambda d, v: _put(d / "r.mp4", np.random.default_rng(0).bytes(5000)),
        "not a video",
    ),
    "text file": (
        lambda d, v: _put(d / "notes.txt", b"hello, these are my notes\n" * 50),
        "is a text file, not a video",
    ),
    "truncated header": (
        lambda d, v: _put(d / "cut.mp4", v.read_bytes()[:300]),
        "(not a video PyAV can read|no video stream .*truncated video)",
    ),
    "audio only": (lambda d, v: audio_only(d / "a.wav"), r"has no video stream \(it holds audio\)"),
    "zero frames": (lambda d, v: zero_frames(d / "zero.mkv"), "contains no video frames"),
    "still image": (lambda d, v: _png(d / "photo.png"), r"is a still image \(png\), not a video"),
    "1x1": (lambda d, v: raw_avi(d / "one.avi", 1, 1), "implausible frame size 1x1"),
    "huge": (
        lambda d, v: raw_avi(d / "big.avi", 6, 6, declare=(9000, 9000)),
        "implausible frame size 9000x9000",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files(tmp_path, vid, case):
    make, needle = BAD_FILES[case]
    d = tmp_path / "in"
    d.mkdir()
    path = make(d, vid)
    with pytest.raises(SetseqError) as e:
        load_clip(path, frames=4)
    msg = str(e.value)
    assert re.search(needle, msg) and "Fix:" in msg and "\n" not in msg, msg
    if case not in ("zero frames", "still image"):  # probing describes these; loading refuses them
        with pytest.raises(SetseqError, match="Fix:"):
            probe_video(path)


def test_truncated_video_keeps_what_decodes(tmp_path):
    """Cut off after its header, an mp4 (faststart) still yields its first frames; asking for more names the count."""
    path = tmp_path / "v.mp4"
    write_video(path, synth(30), fps=10)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.9)])
    clip = load_clip(cut)
    m = len(clip.indices)
    assert 0 < m < 30
    assert [index_of(f) for f in clip.frames] == list(range(m))
    # (with frame threads the decoder may drop the damaged tail silently: "readable" + the error are optional)
    with pytest.raises(SetseqError, match=rf"only {m} (readable )?frames .*--frames {m} or fewer"):
        load_clip(cut, frames=30)


def test_corrupted_bytes_never_leak_av_errors(tmp_path):
    path = tmp_path / "v.mp4"
    write_video(path, synth(30), fps=10)
    data = path.read_bytes()
    rng = np.random.default_rng(1)
    for k in range(25):
        b = bytearray(data)
        for pos in rng.integers(0, len(b), size=rng.integers(1, 30)):
            b[pos] = int(rng.integers(0, 256))
        bad = tmp_path / f"c{k}.mp4"
        bad.write_bytes(bytes(b))
        try:
            clip = load_clip(bad, fps=7, frames=3, start=0.1 * (k % 3))
            assert clip.frames.shape[0] == 3
        except SetseqError as e:
            assert "Fix:" in str(e) and "\n" not in str(e)


@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(start=2.0, end=1.0), "is not before --end"),
        (dict(start=1.0, end=1.0), "is not before --end"),
        (dict(start=-1.0), "--start must be 0 or more"),
        (dict(fps=0), "--fps must be a positive number"),
        (dict(fps=-3.0), "--fps must be a positive number"),
        (dict(fps=float("nan")), "--fps must be a positive number"),
        (dict(frames=0), "--frames must be a positive whole number"),
        (dict(frames=-2), "--frames must be a positive whole number"),
        (dict(size=(0, 32)), "--size must be two positive"),
        (dict(size=(32, -1)), "--size must be two positive"),
        (dict(size=(32,)), "--size must be two positive"),
    ],
)
def test_bad_arguments(vid, kw, needle):
    with pytest.raises(SetseqError, match=needle) as e:
        load_clip(vid, **kw)
    assert "Fix:" in str(e.value)


def test_memory_guard(vid, monkeypatch):
    monkeypatch.setattr(V, "MAX_CLIP_BYTES", 20 * H * W * 3)
    with pytest.raises(SetseqError, match="--frames, --end"):
        load_clip(vid)
    assert len(load_clip(vid, frames=10).indices) == 10  # bounded clips are not limited


# ------------------------------------------------------------------------------------- frames


def test_resize_center_crop_keeps_centre():
    a = np.zeros((96, 192, 3), np.uint8)
    a[:, :24] = (0, 255, 0)  # green strips left and right: cropped away
    a[:, -24:] = (0, 255, 0)
    a[40:56, 88:104] = (255, 0, 0)  # red centre: kept
    out = resize_center_crop(a, (32, 32))  # 96x192 -> 32x64, then 16 px off each side
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert tuple(out[16, 16]) == pytest.approx((255, 0, 0), abs=3)
    assert out[:, :, 1].max() < 30  # no green left
    up = resize_center_crop(a, (192, 192))  # enlarging: 192x384, then 96 px off each side
    assert up.shape == (192, 192, 3) and tuple(up[96, 96]) == pytest.approx((255, 0, 0), abs=3)
    assert up[:, :, 1].max() < 30
    rows = resize_center_crop(a, (48, 192))  # same width: rows are cropped, the strips stay
    assert rows.shape == (48, 192, 3) and rows[:, :20, 1].min() > 200 and rows[:, -20:, 1].min() > 200
    same = resize_center_crop(a, (96, 192))
    assert same is not a and np.array_equal(same, a)
    with pytest.raises(ValueError):
        resize_center_crop(a.astype(np.float32), (32, 32))


def test_tensor_round_trip():
    frames = synth(3)
    t = to_tensor(frames)
    assert t.shape == (3, 3, H, W) and t.dtype == torch.float32
    assert t.min() >= -1 and t.max() <= 1
    assert np.array_equal(from_tensor(t), frames)
    wild = torch.tensor([-5.0, -1.0, 0.0, 1.0, 7.0, float("nan")]).view(1, 3, 1, 2)
    assert from_tensor(wild).reshape(-1).tolist() == [0, 128, 255, 0, 255, 128]  # (R, G, B) of 2 pixels
    with pytest.raises(ValueError):
        from_tensor(torch.zeros(3, 4, 4))


# ------------------------------------------------------------------------------------- writing


def test_write_read_back(tmp_path):
    frames = synth(12)
    path = tmp_path / "out" / "v.mp4"  # the folder is created
    write_video(path, frames, fps=8)
    info = probe_video(path)
    assert (info.width, info.height, info.fps, info.frames) == (W, H, 8.0, 12)
    assert info.codec == ("h264" if "libx264" in av.codecs_available else "mpeg4")
    back = load_clip(path).frames
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 4
    assert [index_of(f) for f in back] == list(range(12))
    assert sorted(p.name for p in path.parent.iterdir()) == ["v.mp4"]  # no temp file left


@pytest.mark.parametrize("shape, stored", [((32, 32), (32, 32)), ((31, 33), (32, 34)), ((1, 1), (2, 2))])
def test_write_tiny_and_odd_sizes(tmp_path, shape, stored):
    frames = np.full((4, *shape, 3), 200, np.uint8)
    path = tmp_path / "t.mp4"
    write_video(path, frames, fps=8.0)
    info = probe_video(path)
    assert (info.height, info.width) == stored
    back = load_clip(path).frames
    assert back.shape == (4, *stored, 3) and abs(float(back.mean()) - 200) < 4


@pytest.mark.parametrize("suffix", [".mkv", ".mov", ".avi", ".webm"])
def test_other_containers(tmp_path, suffix):
    if suffix == ".webm" and not {"libvpx-vp9", "libvpx"} & set(av.codecs_available):
        pytest.skip("this PyAV build has no VP8/VP9 encoder")
    frames = synth(6)
    path = tmp_path / f"v{suffix}"
    write_video(path, frames, fps=12.5)
    clip = load_clip(path)
    assert clip.indices == list(range(6)) == [index_of(f) for f in clip.frames]
    assert clip.source_fps == pytest.approx(12.5)


def test_write_refuses_bad_frames_and_leaves_nothing(tmp_path):
    path = tmp_path / "v.mp4"
    for bad in [
        synth(2).astype(np.float32),
        synth(2)[..., :2],
        synth(2)[0],
        np.zeros((0, 8, 8, 3), np.uint8),
        [1, 2],
    ]:
        with pytest.raises((ValueError, SetseqError)):
            write_video(path, bad)
    with pytest.raises(SetseqError, match="unsupported suffix"):
        write_video(tmp_path / "v.xyz", synth(2))
    assert list(tmp_path.iterdir()) == []


def test_write_is_atomic_when_encoding_fails(tmp_path, monkeypatch):
    path = tmp_path / "v.mp4"
    write_video(path, synth(4), fps=8)
    before = path.read_bytes()
    calls = {"n": 0}
    real = av.VideoFrame.from_ndarray

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] > 5:
            raise av.error.InvalidDataError(1094995529, "boom")
        return real(*a, **k)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", failing)
    with pytest.raises(SetseqError, match="could not encode"):
        write_video(path, synth(10), fps=8)
    assert path.read_bytes() == before  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]  # and no temp file is left


def test_contact_sheet(tmp_path):
    from PIL import Image

    frames = synth(5)
    path = tmp_path / "sheet.png"
    write_contact_sheet(path, frames)  # 5 frames -> 3 columns, 2 rows, 2-px gaps
    img = np.asarray(Image.open(path))
    assert img.shape == (2 * H + 2, 3 * W + 4, 3)
    assert np.array_equal(img[:H, :W], frames[0])
    assert np.array_equal(img[H + 2 :, W + 2 : 2 * W + 2], frames[4])
    write_contact_sheet(path, frames, cols=5, scale=2)
    img = np.asarray(Image.open(path))
    assert img.shape == (2 * H, 5 * 2 * W + 8, 3)
    assert np.array_equal(img[: 2 * H : 2, : 2 * W : 2], frames[0])
    with pytest.raises(ValueError):
        write_contact_sheet(path, frames, scale=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sheet.png"]
