"""Video ingestion and writing with PyAV.

* :func:`probe_video` describes a file (container, codec, size, frame rate, declared frame count, duration).
* :func:`load_clip` decodes a clip: frames in ``[start, end)``, either every source frame or resampled to
  ``fps`` (nearest source frame to each target time ``start + k / fps``), the first ``frames`` of them,
  resized and centre-cropped to ``size``. It seeks to ``start`` and stops decoding as soon as it has what
  it needs, so a clip from an hours-long video costs a few seconds. Timestamps come from each frame's
  ``pts * time_base`` (variable frame rate works), relative to the stream's start. Phone videos with a
  rotation in their display matrix are turned upright.
* :func:`write_video` writes an mp4 (H.264 yuv420p, or MPEG-4 part 2 where the PyAV build has no libx264),
  ``.mkv`` / ``.mov`` (H.264), ``.webm`` (VP9) or ``.avi`` (MPEG-4), atomically.
* :func:`write_contact_sheet` writes a PNG grid of frames, atomically.
* :func:`to_tensor` / :func:`from_tensor` convert between uint8 ``(F, H, W, 3)`` and float ``(F, 3, H, W)``
  in ``[-1, 1]``.

Every problem with the user's file or arguments is a :class:`~setseq.errors.SetseqError` with a one-line
message naming the fix; no PyAV traceback escapes. Nothing here prints.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from PIL import Image

from setseq.errors import SetseqError
from setseq.io import atomic_path

__all__ = [
    "Clip",
    "VideoInfo",
    "from_tensor",
    "load_clip",
    "probe_video",
    "resize_center_crop",
    "to_tensor",
    "write_contact_sheet",
    "write_video",
]

MAX_PIXELS = 8192 * 8192  # larger declared frames are refused (a damaged header or a hostile file)
MAX_CLIP_BYTES = 4 << 30  # a clip decoded without --frames / --end may not take more memory than this
_EPS = 1e-6  # seconds; slack for float rounding of timestamps against start / end / targets
_REENCODE = "re-encode it, e.g. `ffmpeg -i in.mov -c:v libx264 -pix_fmt yuv420p out.mp4`"

# Errors PyAV / FFmpeg raise on unreadable, damaged or odd input. SetseqError is not among them.
_AV_ERRORS: tuple[type[BaseException], ...] = (
    av.FFmpegError,
    OSError,
    ValueError,
    RuntimeError,
    EOFError,
    MemoryError,
    ArithmeticError,
)


# ----------------------------------------------------------------------------------------- probing


@dataclass
class VideoInfo:
    """What a video file declares. ``width`` / ``height`` are the displayed size (after rotation)."""

    path: str
    container: str
    codec: str
    width: int
    height: int
    fps: float  # average frame rate (0.0 when the file declares none)
    frames: int | None  # declared frame count, None when the container does not say
    duration: float | None  # seconds, None when unknown
    rotation: int = 0  # degrees counter-clockwise applied for display (phone videos: -90, 90, 180)


def _check_file(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise SetseqError(f"video {p} does not exist", "check the --video path")
    if p.is_dir():
        raise SetseqError(
            f"video {p} is a folder, not a video file", "pass the path of a video file inside it"
        )
    if not p.is_file():
        raise SetseqError(f"video {p} is not a regular file", "pass the path of a video file")
    if p.stat().st_size == 0:
        raise SetseqError(
            f"video {p} is empty (0 bytes)", "copy the video again; the file was not written completely"
        )
    return p


def _open(p: Path) -> av.container.InputContainer:
    try:
        return av.open(str(p), "r", metadata_errors="replace")
    except PermissionError:
        raise SetseqError(
            f"cannot read video {p}: permission denied", "make the file readable (chmod +r)"
        ) from None
    except av.error.InvalidDataError:
        raise SetseqError(
            f"{p} is not a video PyAV can read (not a video file, or truncated before its header/index)",
            f"check the file plays; if it is a partial download fetch it again, else {_REENCODE}",
        ) from None
    except _AV_ERRORS as exc:
        raise SetseqError(
            f"cannot open video {p}: {_describe(exc)}", f"check the file plays; {_REENCODE}"
        ) from None


def _describe(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:200]


# FFmpeg "video" that is really text: tty renders any .txt/.nfo/.asc file as ANSI art, bintext/xbin/adf/idf
# do the same for BBS art. Refused as "not a video".
_TEXT_FORMATS = {"tty", "bin", "xbin", "adf", "idf"}
_TEXT_CODECS = {"ansi", "bintext", "xbin", "idf"}


def _video_stream(container: av.container.InputContainer, p: Path) -> av.video.stream.VideoStream:
    streams = [
        s
        for s in container.streams.video
        if not (int(s.disposition) & int(av.stream.Disposition.attached_pic))  # cover art of an audio file
    ]
    fmt = container.format.name
    if fmt in _TEXT_FORMATS or any(
        s.codec_context is not None and s.codec_context.name in _TEXT_CODECS for s in streams
    ):
        raise SetseqError(f"{p} is a text file, not a video", "pass a video file (mp4, mov, mkv, webm, ...)")
    if not streams:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        raise SetseqError(
            f"{p} has no video stream (it holds {', '.join(kinds)}): an audio file, or a damaged or truncated video",
            "pass a video file; if this one is a partial download or copy, fetch it again",
        )
    return streams[0]


def _rate(stream: av.video.stream.VideoStream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        try:
            if rate is not None and float(rate) > 0 and math.isfinite(float(rate)):
                return float(rate)
        except (ZeroDivisionError, ValueError, TypeError):
            continue
    return 0.0


def _check_size(p: Path, width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise SetseqError(
            f"video {p} declares no frame size ({width}x{height}); the file may be damaged", _REENCODE
        )
    if width < 2 or height < 2 or width * height > MAX_PIXELS:
        raise SetseqError(
            f"video {p} declares an implausible frame size {width}x{height} (WxH; allowed 2x2 up to 8192x8192 pixels)",
            f"check the file is not damaged; {_REENCODE.replace('-pix_fmt', '-vf scale=1280:-2 -pix_fmt')}",
        )


def _info(p: Path, container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> VideoInfo:
    cc = stream.codec_context
    if cc is None:
        raise SetseqError(
            f"video {p} uses a codec this PyAV build cannot decode, or its header is damaged", _REENCODE
        )
    width, height = int(cc.width or 0), int(cc.height or 0)
    _check_size(p, width, height)
    duration: float | None = None
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration:
        duration = container.duration / av.time_base
    return VideoInfo(
        path=str(p),
        container=container.format.name,
        codec=cc.name,
        width=width,
        height=height,
        fps=_rate(stream),
        frames=int(stream.frames) if stream.frames else None,
        duration=duration,
    )


def _rotation(frame: av.VideoFrame) -> int:
    try:
        return int(round((frame.rotation or 0) / 90.0)) * 90 % 360
    except _AV_ERRORS:
        return 0


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Describe a video file (decodes at most its first frame, to read the display rotation)."""
    p = _check_file(path)
    with _open(p) as container:
        stream = _video_stream(container, p)
        info = _info(p, container, stream)
        try:
            for frame in container.decode(stream):
                info.rotation = _rotation(frame)
                break
        except _AV_ERRORS:
            pass  # damaged data; load_clip reports it with the frame count it reached
    if info.rotation in (90, 270):
        info.width, info.height = info.height, info.width
    if info.rotation == 270:
        info.rotation = -90
    return info


# ----------------------------------------------------------------------------------------- decoding


@dataclass
class Clip:
    """Decoded frames plus where they came from."""

    frames: np.ndarray  # (F, H, W, 3) uint8 RGB, after resize + centre crop
    indices: list[int]  # source frame index of each sample (decode/pts order)
    timestamps: list[float]  # seconds from the start of the video, from pts * time_base
    source_fps: float  # declared average frame rate of the source
    source_size: tuple[int, int]  # (H, W) of the source as displayed
    fps: float | None = None  # sampling rate asked for; None = every source frame
    path: str = ""

    def summary(self) -> str:
        n = len(self.indices)
        rate = f"at {self.fps:g} fps" if self.fps else "(every source frame)"
        span = f"{self.timestamps[0]:.2f}-{self.timestamps[-1]:.2f} s" if self.timestamps else "-"
        idx = self.indices if n <= 8 else [*self.indices[:5], "...", self.indices[-1]]
        idx_text = "[" + ", ".join(str(i) for i in idx) + "]"
        sh, sw = self.source_size
        oh, ow = self.frames.shape[1:3]
        name = f"{Path(self.path).name}: " if self.path else ""
        return (
            f"{name}sampled {n} frames {rate} over {span} (source {self.source_fps:.2f} fps, {sh}x{sw} HxW) "
            f"indices {idx_text} -> {oh}x{ow} HxW"
        )


def _check_args(frames: int | None, fps: float | None, start: float, end: float | None, size) -> None:
    if frames is not None and (
        not isinstance(frames, (int, np.integer)) or isinstance(frames, bool) or frames <= 0
    ):
        raise SetseqError(f"--frames must be a positive whole number, got {frames}", "pass e.g. --frames 17")
    if fps is not None and not (isinstance(fps, (int, float, np.number)) and math.isfinite(fps) and fps > 0):
        raise SetseqError(
            f"--fps must be a positive number, got {fps}",
            "pass e.g. --fps 8, or leave it out to keep every frame",
        )
    if not math.isfinite(start) or start < 0:
        raise SetseqError(f"--start must be 0 or more seconds, got {start}", "pass e.g. --start 0")
    if end is not None:
        if not math.isfinite(end):
            raise SetseqError(
                f"--end must be a finite number of seconds, got {end}", "leave --end out to read to the end"
            )
        if end <= start:
            raise SetseqError(
                f"--start {start} s is not before --end {end} s", "pass an --end later than --start"
            )
    if size is not None:
        ok = isinstance(size, (tuple, list)) and len(size) == 2
        ok = ok and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in size)
        if not ok:
            raise SetseqError(
                f"--size must be two positive whole numbers HxW, got {size}", "pass e.g. --size 480x832"
            )
        if size[0] * size[1] > MAX_PIXELS:
            raise SetseqError(
                f"--size {size[0]}x{size[1]} is larger than 8192x8192 pixels", "pass a smaller --size"
            )


class _Collector:
    """Turns picked av frames into resized RGB arrays, converting each source frame at most once."""

    def __init__(self, size: tuple[int, int] | None, p: Path, budget: int | None) -> None:
        self.size, self.p, self.budget = size, p, budget
        self.frames: list[np.ndarray] = []
        self.indices: list[int] = []
        self.timestamps: list[float] = []
        self.source_size: tuple[int, int] | None = None
        self._last: tuple[int, np.ndarray] | None = None
        self._bytes = 0
        # One reformatter for the whole clip: frame.to_ndarray() builds a new swscale context (and thread
        # pool) per call, 30x slower on small frames.
        self._reformatter = VideoReformatter()

    def add(self, idx: int, t: float, frame: av.VideoFrame) -> None:
        if self._last is not None and self._last[0] == idx:
            arr = self._last[1]
        else:
            arr = self._reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()
            rot = _rotation(frame)
            if rot:
                arr = np.ascontiguousarray(np.rot90(arr, k=rot // 90))
            if self.source_size is None:
                self.source_size = (arr.shape[0], arr.shape[1])
            target = self.size or self.source_size
            if arr.shape[:2] != tuple(target):  # resize, or a mid-stream resolution change
                arr = resize_center_crop(arr, target)
            self._last = (idx, arr)
        self._bytes += arr.nbytes
        if self.budget is None and self._bytes > MAX_CLIP_BYTES:
            raise SetseqError(
                f"decoding all of {self.p} would take more than {MAX_CLIP_BYTES / 2**30:.3g} GiB of memory "
                f"({len(self.frames)} frames so far)",
                "limit the clip with --frames, --end or a lower --fps, or pass a smaller --size",
            )
        self.frames.append(arr)
        self.indices.append(idx)
        self.timestamps.append(t)

    def __len__(self) -> int:
        return len(self.frames)


def _decode(
    p: Path,
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    t0: float,
    src_fps: float,
    *,
    seek_to: float,
):
    """Yield (index, t, frame) in presentation order from about `seek_to` seconds, then a final (None, err, None)
    with the decode error that stopped it early (or None at the clean end of the stream)."""
    tb = stream.time_base
    exact = True  # indices are exact counts from the first frame, unless we seeked into the middle
    if seek_to > 0 and tb:
        try:
            container.seek(int((t0 + seek_to) / tb), stream=stream, backward=True, any_frame=False)
            exact = False
        except _AV_ERRORS:
            try:
                container.seek(0, stream=stream, backward=True)
            except _AV_ERRORS:
                pass
            exact = True
    idx = -1
    prev_t: float | None = None
    step = 1.0 / src_fps if src_fps > 0 else 1.0 / 25
    errors: list[BaseException] = []
    for frame in _frames(container, stream, errors):
        if frame.pts is not None and frame.time_base:
            t = float(frame.pts * frame.time_base) - t0
        elif frame.time is not None:
            t = float(frame.time) - t0
        else:
            t = 0.0 if prev_t is None else prev_t + step
        if idx < 0:
            if not exact and t > step / 2:
                idx = int(round(t * src_fps)) if src_fps > 0 else 0  # after a seek: from time x average rate
            else:
                idx = 0
        else:
            idx += 1
        prev_t = t
        yield idx, t, frame
    yield None, (errors[0] if errors else None), None


_MAX_BAD_PACKETS = 50  # consecutive undecodable packets before giving up on a damaged stream


def _frames(container, stream, errors: list[BaseException]):
    """Decoded frames of `stream`, packet by packet: a damaged packet is skipped (as ffmpeg does); a demuxer
    error (truncated file) ends the stream after flushing the frames the decoder still holds. The first
    error is appended to `errors`."""
    demux = container.demux(stream)
    bad = 0
    while True:
        try:
            packet = next(demux)
        except StopIteration:
            return  # the demuxer's final empty packet has already flushed the decoder
        except _AV_ERRORS as exc:
            errors.append(exc)
            break
        try:
            decoded = packet.decode()
        except _AV_ERRORS as exc:
            if not errors:
                errors.append(exc)
            bad += 1
            if bad >= _MAX_BAD_PACKETS:
                break
            continue
        bad = 0
        yield from decoded
    try:  # flush: frames still buffered in the decoder (B-frames, frame threads)
        flushed = stream.decode(None)
    except _AV_ERRORS:
        return
    yield from flushed


def _frame_duration(frame: av.VideoFrame | None, fallback: float) -> float:
    try:
        if frame is not None and frame.duration and frame.time_base:
            return float(frame.duration * frame.time_base)
    except _AV_ERRORS:
        pass
    return fallback


def _sample(
    p: Path,
    info: VideoInfo,
    container,
    stream,
    *,
    frames: int | None,
    fps: float | None,
    start: float,
    end: float | None,
    size: tuple[int, int] | None,
    seek: bool,
) -> tuple[_Collector, BaseException | None, float | None, bool]:
    """Returns (collected, decode error or None, end time of the last candidate frame, began_after_start)."""
    t0 = 0.0
    if stream.start_time is not None and stream.time_base:
        t0 = float(stream.start_time * stream.time_base)
    src_fps = info.fps
    step = 1.0 / src_fps if src_fps > 0 else 1.0 / 25
    out = _Collector(size, p, frames)
    stop = end if end is not None else math.inf
    prev: tuple[int, float, av.VideoFrame] | None = None
    k = 0
    err: BaseException | None = None
    first_t: float | None = None

    def target(j: int) -> float:
        return start + j / fps  # type: ignore[operator]

    for idx, t, frame in _decode(p, container, stream, t0, src_fps, seek_to=start if seek else 0.0):
        if idx is None:
            err = t  # type: ignore[assignment]
            break
        if first_t is None:
            first_t = t
        if t < start - _EPS:
            continue
        if t >= stop - _EPS:
            break
        if fps is None:
            out.add(idx, t, frame)
        else:
            while (frames is None or k < frames) and target(k) <= t + _EPS and target(k) < stop - _EPS:
                tk = target(k)
                if prev is not None and (tk - prev[1]) <= (t - tk) + 1e-9:
                    out.add(*prev)
                else:
                    out.add(idx, t, frame)
                k += 1
            prev = (idx, t, frame)
        if frames is not None and len(out) >= frames:
            break
    last_end = None
    if fps is not None and prev is not None:
        # Targets after the last candidate frame but within its display time (and before `end`) get it.
        last_end = prev[1] + _frame_duration(prev[2], step)
        while (frames is None or k < frames) and target(k) < min(stop, last_end) - _EPS:
            out.add(*prev)
            k += 1
    elif fps is None and out.timestamps:
        last_end = out.timestamps[-1] + step
    began_late = first_t is not None and first_t > start + _EPS and seek
    return out, err, last_end, began_late


def load_clip(
    path: str | os.PathLike[str],
    *,
    frames: int | None = None,
    fps: float | None = None,
    start: float = 0.0,
    end: float | None = None,
    size: tuple[int, int] | None = None,
    frame_multiple: int = 1,
) -> Clip:
    """Decode frames of `path` in ``[start, end)`` seconds: every source frame (``fps=None``) or the source
    frame nearest each time ``start + k / fps``; the first `frames` of them (all when None); each resized so
    both sides cover `size` (H, W) and centre-cropped to it (source size when None). `frame_multiple`: the
    clip lengths a model takes are `m k + 1` (at least `m + 1`, two latent frames, where m > 1): a video too
    short for `frames` is refused with the longest such length it holds."""
    if size is not None:
        size = tuple(size)  # type: ignore[assignment]
    _check_args(frames, fps, float(start), None if end is None else float(end), size)
    start = float(start)
    end = None if end is None else float(end)
    p = _check_file(path)
    with _open(p) as container:
        stream = _video_stream(container, p)
        info = _info(p, container, stream)
        try:
            stream.thread_type = "AUTO"
        except _AV_ERRORS:
            pass
        kw = dict(frames=frames, fps=fps, start=start, end=end, size=size)
        got, err, last_end, began_late = _sample(p, info, container, stream, seek=start > 0, **kw)
    if began_late or (start > 0 and err is not None and len(got) == 0):
        # The seek landed after `start` (a bad index) or broke decoding: read from the beginning instead.
        with _open(p) as container:
            stream = _video_stream(container, p)
            got, err, last_end, _ = _sample(p, info, container, stream, seek=False, **kw)

    n = len(got)
    want = frames if frames is not None else 1
    if n < want:
        raise _too_few(p, info, n, frames, fps, start, end, last_end, err, frame_multiple)
    return Clip(
        frames=np.stack(got.frames),
        indices=got.indices,
        timestamps=got.timestamps,
        source_fps=info.fps,
        source_size=got.source_size or (info.height, info.width),
        fps=fps,
        path=str(p),
    )


def _sec(x: float) -> str:
    """Seconds for messages: 0.0, 1.5, 2.93."""
    text = f"{x:.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _too_few(p, info, n, frames, fps, start, end, last_end, err, m: int = 1) -> SetseqError:
    if info.container == "image2" or info.container.endswith("_pipe"):
        return SetseqError(
            f"{p} is a still image ({info.codec}), not a video, so it has 1 frame", "pass a video file"
        )
    rate = f" at {fps:g} fps" if fps else ""
    window_end = end if end is not None else last_end
    upto = f"{_sec(window_end)} s" if window_end is not None else "the end"
    where = f"between {_sec(start)} s and {upto}"
    damaged = f" (decoding stopped early: {_describe(err)})" if err is not None else ""
    can_widen = start > 0 or end is not None
    if n == 0:
        if info.duration is not None and start >= info.duration - _EPS:
            return SetseqError(
                f"video {p} is only {info.duration:.2f} s long, so it has no frames after --start {start:g} s",
                f"pass a --start below {info.duration:.2f}",
            )
        if damaged:
            return SetseqError(f"video {p} is damaged: no frame could be decoded {where}{damaged}", _REENCODE)
        if not can_widen:
            return SetseqError(
                f"video {p} contains no video frames", f"check the file plays; it may be damaged; {_REENCODE}"
            )
        return SetseqError(f"video {p} has no frames{rate} {where}", "widen --start/--end")
    fit = (n - 1) // m * m + 1  # the longest clip a model of frame multiple m takes from n frames
    fixes = [f"ask for --frames {fit} or fewer"] if m == 1 or fit > m else []
    span = (window_end - start) if window_end is not None else None
    if fps and span and span > 0:
        need = frames / span
        if info.fps <= 0 or need <= info.fps + _EPS:
            fixes.append(f"raise --fps to {math.ceil(need * 100) / 100:g} or more")
    longer = "use a longer video" + (f" (at least {m + 1} frames)" if m > 1 and fit <= m else "")
    fixes.append("widen --start/--end" if can_widen else longer)
    what = ("readable frame" if damaged else "frame") + ("" if n == 1 else "s")
    return SetseqError(
        f"video {p} has only {n} {what}{rate} {where}, but {frames} were asked{damaged}",
        ", ".join(fixes[:-1]) + ", or " + fixes[-1] if len(fixes) > 1 else fixes[0],
    )


# ----------------------------------------------------------------------------------------- frames


def _check_frames(frames: object, what: str) -> np.ndarray:
    if not isinstance(frames, np.ndarray):
        raise ValueError(
            f"{what}: frames must be a numpy array (F, H, W, 3) uint8, got {type(frames).__name__}"
        )
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{what}: frames must have shape (F, H, W, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(
            f"{what}: frames must be uint8, got {frames.dtype} (use from_tensor for float tensors)"
        )
    if 0 in frames.shape:
        raise ValueError(f"{what}: frames must not be empty, got shape {frames.shape}")
    return frames


def resize_center_crop(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize `frame` (H, W, 3) uint8 keeping its aspect ratio so it covers `size` (H, W), then crop the
    centre to exactly `size`. Bicubic (antialiased when shrinking, as PIL does)."""
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(
            f"resize_center_crop: frame must be (H, W, 3) uint8, got {getattr(frame, 'shape', type(frame))}"
        )
    th, tw = (int(v) for v in size)
    if th <= 0 or tw <= 0:
        raise ValueError(f"resize_center_crop: size must be positive (H, W), got {size}")
    h, w = frame.shape[:2]
    if (h, w) == (th, tw):
        return frame.copy()
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    if (nh, nw) != (h, w):
        img = Image.fromarray(np.ascontiguousarray(frame), "RGB").resize((nw, nh), Image.Resampling.BICUBIC)
        frame = np.asarray(img)
    top, left = (nh - th) // 2, (nw - tw) // 2
    return np.ascontiguousarray(frame[top : top + th, left : left + tw])


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float32 (F, 3, H, W) in [-1, 1]."""
    frames = _check_frames(frames, "to_tensor")
    t = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    return t / 127.5 - 1.0


def from_tensor(t: torch.Tensor) -> np.ndarray:
    """float (F, 3, H, W) in [-1, 1] (any device/dtype) -> uint8 (F, H, W, 3); out-of-range values are
    clamped and NaN becomes mid-grey."""
    if not isinstance(t, torch.Tensor) or t.ndim != 4 or t.shape[1] != 3:
        raise ValueError(f"from_tensor: expected a tensor (F, 3, H, W), got {getattr(t, 'shape', type(t))}")
    x = t.detach().to("cpu", torch.float32)
    x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0).clamp(-1, 1)
    x = ((x + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


# ----------------------------------------------------------------------------------------- writing


def _codec_for(suffix: str) -> str:
    h264 = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    table = {".mp4": h264, ".m4v": h264, ".mov": h264, ".mkv": h264, ".avi": "mpeg4"}
    for vp in ("libvpx-vp9", "libvpx"):
        if vp in av.codecs_available:
            table[".webm"] = vp
            break
    return table.get(suffix.lower(), "")


def write_video(path: str | os.PathLike[str], frames: np.ndarray, fps: float = 8.0) -> None:
    """Write uint8 (F, H, W, 3) RGB frames as a video, atomically. The codec follows the suffix: .mp4 /
    .mov / .m4v / .mkv get H.264 yuv420p (MPEG-4 part 2 without libx264), .webm VP9, .avi MPEG-4. Odd
    sizes are padded by one edge row/column to even (yuv420p needs even sizes)."""
    frames = _check_frames(frames, "write_video")
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"write_video: fps must be a positive number, got {fps}")
    path = Path(path)
    codec = _codec_for(path.suffix)
    if not codec:
        raise SetseqError(
            f"cannot write video {path}: unknown or unsupported suffix '{path.suffix}'",
            "use a name ending in .mp4 (or .mkv, .mov, .webm, .avi)",
        )
    f, h, w, _ = frames.shape
    ph, pw = h % 2, w % 2
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    h, w = h + ph, w + pw
    rate = Fraction(fps).limit_denominator(1001)
    options: dict[str, str] = {}
    if codec == "libx264":
        options = {"crf": "18", "preset": "medium"}
    elif codec.startswith("libvpx"):
        options = {"crf": "24", "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"}
    container_options = {"movflags": "+faststart"} if path.suffix.lower() in (".mp4", ".m4v", ".mov") else {}
    with atomic_path(path) as tmp:
        try:
            with av.open(str(tmp), "w", container_options=container_options) as out:
                stream = out.add_stream(codec, rate=rate, options=options)
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                if codec in ("mpeg4",) or codec.startswith("libvpx"):
                    stream.bit_rate = max(1_000_000, int(w * h * float(rate) * 0.4))
                for frame in frames:
                    vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                    for packet in stream.encode(vf):
                        out.mux(packet)
                for packet in stream.encode():
                    out.mux(packet)
        except _AV_ERRORS as exc:
            if isinstance(exc, OSError):
                raise  # disk full, read-only...: atomic_path removes the temp file and names the fix
            raise SetseqError(
                f"could not encode video {path} with {codec}: {_describe(exc)}",
                "check the output folder and frames",
            ) from None


def write_contact_sheet(
    path: str | os.PathLike[str], frames: np.ndarray, cols: int | None = None, scale: int = 1
) -> None:
    """Write frames as a PNG grid (row-major, `cols` wide, default about square), each frame enlarged
    `scale` times (nearest neighbour), with a 2-pixel dark gap; atomically."""
    frames = _check_frames(frames, "write_contact_sheet")
    if not isinstance(scale, (int, np.integer)) or isinstance(scale, bool) or scale < 1:
        raise ValueError(f"write_contact_sheet: scale must be a whole number >= 1, got {scale}")
    n, h, w, _ = frames.shape
    if cols is None:
        cols = max(1, math.ceil(math.sqrt(n)))
    if not isinstance(cols, (int, np.integer)) or isinstance(cols, bool) or cols < 1:
        raise ValueError(f"write_contact_sheet: cols must be a whole number >= 1, got {cols}")
    cols = min(int(cols), n)
    rows = math.ceil(n / cols)
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    gap = 2
    sheet = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3), 24, np.uint8)
    for i, frame in enumerate(frames):
        r, c = divmod(i, cols)
        y, x = r * (h + gap), c * (w + gap)
        sheet[y : y + h, x : x + w] = frame
    with atomic_path(path) as tmp:
        Image.fromarray(sheet, "RGB").save(tmp, format="PNG")
