"""Subject masks: read and check a mask of the training video, bring it to the latent grid, composite the
subject onto plain backgrounds.

A mask is a video or a folder of per-frame images (white = the subject, black = the rest), with the video's
frame count and size. It is sampled with the same frame indices, resized and centre-cropped the same way,
and cached with the video (`setseq.train.encode.encode_concept`). Two uses, each a per-stage option:

- `stageN.background_weight` (w): the loss of a latent position is weighted 1 on the subject and w elsewhere,
  normalised per sample (sum(m * err) / sum(m)), so the LoRA is not asked to reproduce the background;
- `stageN.background_swap` (p): with probability p a sample shows the subject composited onto one of
  `data.swap_backgrounds` (a plain colour), its prompt ending "on a {colour} background", so the concept is
  learned apart from its scene (the paper: "removing backgrounds helps").
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from setseq.errors import SetseqError

__all__ = [
    "IMAGE_SUFFIXES",
    "SWAP_COLOURS",
    "composite",
    "latent_weights",
    "load_mask",
    "mask_sha256",
    "swap_colours_for",
    "swap_prompt",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
#: Plain background colours by name (RGB), the toy world's own values for the colours it knows.
SWAP_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "green": (40, 180, 60),
    "yellow": (240, 220, 40),
    "blue": (40, 80, 220),
    "purple": (140, 60, 190),
    "black": (20, 20, 20),
    "red": (220, 40, 40),
}
MIN_SUBJECT_DISTANCE = (
    90.0  # a swap colour this close (RGB euclidean) to the subject's mean colour is skipped
)
_GREY_SHARE = 0.2  # a mask with more than this share of mid-grey pixels (0.25..0.75) is not a mask
_COLOUR_SPREAD = 40.0  # mean max-min over RGB above this (0..255): a colour video, not a mask


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def mask_sha256(path: str | Path) -> str:
    """A content hash of a mask video, or of a mask folder's images (names and bytes)."""
    from setseq.data.cache import file_sha256

    p = Path(path)
    if p.is_file():
        return file_sha256(p)
    h = hashlib.sha256()
    for f in _images(p):
        h.update(f"{f.name}:{file_sha256(f)}".encode())
    return h.hexdigest()


def _source_frames(video: Path) -> int | None:
    """The video's frame count: declared by the container, else counted by decoding."""
    import av

    from setseq.data.video import probe_video

    n = probe_video(video).frames
    if n:
        return int(n)
    with av.open(str(video)) as c:
        return sum(1 for _ in c.decode(video=0))


def _as_mask(rgb: np.ndarray, what: str) -> np.ndarray:
    """(F, H, W, 3) uint8 -> (F, H, W) float in [0, 1]; refused when it is not a mask."""
    x = rgb.astype(np.float32)
    spread = float((x.max(axis=-1) - x.min(axis=-1)).mean())
    if spread > _COLOUR_SPREAD:
        raise SetseqError(
            f"{what} is not a mask: it is in colour (mean channel spread {spread:.0f} of 255)",
            "pass a black-and-white mask (white = the subject), not the video itself",
        )
    m = x.mean(axis=-1) / 255.0
    grey = float(((m > 0.25) & (m < 0.75)).mean())
    if grey > _GREY_SHARE:
        raise SetseqError(
            f"{what} is not a mask: {100 * grey:.0f}% of its pixels are mid-grey",
            "pass a black-and-white mask (white = the subject, black = the rest)",
        )
    if not (m > 0.5).any():
        raise SetseqError(f"{what} is empty (no white pixel in any frame)", "mark the subject in white")
    return m


def load_mask(
    path: str | Path,
    video: str | Path,
    clip,
    *,
    fps: float | None = None,
    start: float = 0.0,
    end: float | None = None,
) -> np.ndarray:
    """The mask of `clip` (a `setseq.data.video.Clip` of `video`): (F, H, W) float32 in [0, 1] at the clip's
    frames and size. Refused with one line: missing, another frame count or size than the video, or not a
    mask."""
    from PIL import Image, UnidentifiedImageError

    from setseq.data.video import load_clip, probe_video, resize_center_crop

    p = Path(path)
    if not p.exists():
        raise SetseqError(
            f"mask {p} does not exist", "check the --mask path (a mask video or a folder of images)"
        )
    size = clip.frames.shape[1:3]
    want_hw = tuple(clip.source_size)
    n_video = _source_frames(Path(video))
    if p.is_dir():
        files = _images(p)
        if not files:
            raise SetseqError(
                f"mask folder {p} holds no images",
                f"put one image per video frame in it ({', '.join(IMAGE_SUFFIXES)})",
            )
        if len(files) != n_video:
            raise SetseqError(
                f"mask folder {p} has {len(files)} images, the video has {n_video} frames",
                "give one mask image per frame of the video",
            )
        frames = []
        for i in clip.indices:
            try:
                with Image.open(files[i]) as im:
                    img = np.asarray(im.convert("RGB"))
            except (OSError, UnidentifiedImageError):
                raise SetseqError(
                    f"mask image {files[i]} is not a readable image", "re-export the mask"
                ) from None
            if img.shape[:2] != want_hw:
                raise SetseqError(
                    f"mask image {files[i].name} is {img.shape[0]}x{img.shape[1]}, the video is "
                    f"{want_hw[0]}x{want_hw[1]} (HxW)",
                    "make the masks at the video's size",
                )
            frames.append(resize_center_crop(img, size))
        rgb = np.stack(frames)
    else:
        info = probe_video(p)
        if (info.height, info.width) != want_hw:
            raise SetseqError(
                f"mask video {p} is {info.height}x{info.width}, the video is {want_hw[0]}x{want_hw[1]} (HxW)",
                "make the mask at the video's size",
            )
        n_mask = _source_frames(p)
        if n_mask != n_video:
            raise SetseqError(
                f"mask video {p} has {n_mask} frames, the video has {n_video}",
                "give one mask frame per video frame",
            )
        mclip = load_clip(p, frames=len(clip.indices), fps=fps, start=start, end=end, size=size)
        if list(mclip.indices) != list(clip.indices):
            raise SetseqError(
                f"mask video {p}'s frames do not line up with the video's (frame rate {info.fps:g})",
                "write the mask at the video's frame rate",
            )
        rgb = mclip.frames
    return _as_mask(rgb, f"mask {p}")


def latent_weights(mask: np.ndarray, set_shape: tuple[int, ...], clip_shape: tuple[int, ...]):
    """The subject's share of each latent position: ((F, 1, 1, h, w) for the frame latents, (1, 1, f, h, w)
    for the clip's). Space: area average over each latent cell. Time (the clip): the latent frames cover the
    video frames as a causal VAE groups them (the first alone, then (F - 1) / (f - 1) each), or evenly; a
    latent frame takes the most of its frames, so a subject anywhere in them counts."""
    import torch
    import torch.nn.functional as F

    m = torch.from_numpy(np.asarray(mask, np.float32))[:, None]  # (F, 1, H, W)
    h, w = set_shape[-2:]
    cells = F.adaptive_avg_pool2d(m, (h, w))  # (F, 1, h, w)
    set_w = cells[:, :, None]  # (F, 1, 1, h, w)
    n, f = cells.shape[0], clip_shape[2]
    if f == n:
        groups = [[i] for i in range(n)]
    elif f > 1 and (n - 1) % (f - 1) == 0:
        s = (n - 1) // (f - 1)
        groups = [[0]] + [list(range(1 + s * (j - 1), 1 + s * j)) for j in range(1, f)]
    else:
        edges = np.linspace(0, n, f + 1).round().astype(int)
        groups = [list(range(edges[j], max(edges[j] + 1, edges[j + 1]))) for j in range(f)]
    clip_w = torch.stack([cells[g].amax(0) for g in groups], dim=1)[None]  # (1, 1, f, h, w)
    ch, cw = clip_shape[-2:]
    if (ch, cw) != (h, w):
        clip_w = F.adaptive_avg_pool3d(clip_w, (f, ch, cw))
    return set_w.contiguous(), clip_w.contiguous()


def swap_colours_for(frames: np.ndarray, mask: np.ndarray, names: list[str]) -> list[str]:
    """The colours of `names` far enough from the subject's mean colour to keep it visible on them."""
    sel = mask > 0.5
    mean = frames[sel].reshape(-1, 3).astype(np.float64).mean(axis=0)
    return [
        c
        for c in names
        if np.linalg.norm(mean - np.asarray(SWAP_COLOURS[c], np.float64)) >= MIN_SUBJECT_DISTANCE
    ]


def swap_prompt(prompt: str, colour: str) -> str:
    """The prompt of a sample whose background was swapped to `colour`."""
    return f"{prompt} on a {colour} background"


def composite(frames: np.ndarray, mask: np.ndarray, colour: str) -> np.ndarray:
    """The subject of `frames` (F, H, W, 3) uint8 over a plain `colour`, blended by the soft `mask` (F, H, W)."""
    m = np.asarray(mask, np.float32)[..., None]
    bg = np.asarray(SWAP_COLOURS[colour], np.float32)
    return np.clip(np.round(m * frames.astype(np.float32) + (1.0 - m) * bg), 0, 255).astype(np.uint8)
