"""Helpers the tests share: synthetic inputs and the tiny-training settings (fixtures stay in conftest.py)."""

from __future__ import annotations

import struct

import av
import numpy as np

# A few steps of both stages on a tiny model, every checkpoint kept: what the backbone and I2V tests train with.
TINY_TRAINING = [
    "lora.rank=4",
    "stage1.steps=2",
    "stage2.steps=2",
    "stage1.batch_size=2",
    "stage2.batch_size=2",
    "train.checkpoint_every=1",
    "train.keep_checkpoints=10",
    "train.tensorboard=false",
    "train.sample_every=0",
    "stage1.lr=1e-2",
    "stage2.lr=1e-2",
    "stage1.grad_clip=1.0",
    "stage2.grad_clip=1.0",
]


def moving_square_video(frames: int = 13, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    """(F, H, W, 3) uint8: a red square moving right on a blue background."""
    h, w = size
    out = np.zeros((frames, h, w, 3), np.uint8)
    out[..., 2] = 160
    for i in range(frames):
        x = 4 + i * max(1, (w - 20) // max(1, frames))
        out[i, h // 2 - 6 : h // 2 + 6, x : x + 12] = (220, 30, 30)
    return out


def _mux_silence(container) -> None:
    """A tenth of a second of silence, as an audio stream of `container`."""
    stream = container.add_stream("pcm_s16le", rate=8000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
    frame.sample_rate = 8000
    for p in stream.encode(frame):
        container.mux(p)


def audio_only(path):
    """A file with an audio stream and no video stream."""
    with av.open(str(path), "w") as c:
        _mux_silence(c)
    return path


def zero_frames(path):
    """A matroska file with a video stream that holds no packets (an audio packet forces the header out)."""
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=8)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        _mux_silence(c)
    return path


def raw_avi(path, w, h, declare=None):
    """rawvideo AVI; `declare` patches the header to claim another size (a damaged / hostile file)."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("rawvideo", rate=8)
        s.width, s.height, s.pix_fmt = w, h, "rgb24"
        for _ in range(3):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((h, w, 3), 9, np.uint8), format="rgb24")):
                c.mux(p)
    if declare:
        b = bytearray(path.read_bytes())
        i = b.find(b"strf")  # BITMAPINFOHEADER: size, biWidth, biHeight
        b[i + 12 : i + 20] = struct.pack("<ii", *declare)
        j = b.find(b"avih")  # main header: dwWidth, dwHeight at 32
        b[j + 40 : j + 48] = struct.pack("<II", *declare)
        path.write_bytes(bytes(b))
    return path


def cyan_demo_config(tmp_path, *overrides: str, mask: bool = True):
    """The toy recipe on the demo's concept (cyan_diamond_bounce), no TensorBoard or memory check, with the
    concept's exact mask written under `tmp_path` unless `mask` is False."""
    import dataclasses

    from setseq.config_load import resolve_config
    from setseq.tools.demo import CONCEPT_DIR, DEMO_CONFIG, concept_mask

    name = "cyan_diamond_bounce"
    cfg = resolve_config(
        DEMO_CONFIG,
        {"data": {"video": str(CONCEPT_DIR / f"{name}.mp4")}},
        ["concept.class_word=diamond", "train.tensorboard=false", "train.memory_check=false", *overrides],
    )
    if mask:
        cfg = dataclasses.replace(
            cfg, data=dataclasses.replace(cfg.data, mask=str(concept_mask(name, tmp_path / "m")))
        )
    return cfg
