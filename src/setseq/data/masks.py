"""Subject masks: read and check a mask of the training video, bring it to the latent grid, composite the
subject onto plain backgrounds.

A mask is a video or a folder of per-frame images (white = the subject, black = the rest), with the video's
frame count and size. It is sampled with the same frame indices, resized and centre-cropped the same way,
and cached with the video (`setseq.train.encode.encode_concept`). Two uses, each a per-stage option:

- `stageN.background_weight` (w): the loss of a latent position is weighted 1 on the subject and w elsewhere,
  normalised per sample (sum(m * err) / sum(m)), so the LoRA is not asked to reproduce the background;
- `stageN.background_swap` (p): with probability p a sample shows the subject composited onto another
  background, its prompt ending "on a {colour} background" (`data.swap_named`), so the concept is learned
  apart from its scene (the paper: "removing backgrounds helps"). The backgrounds (`data.swap_source`,
  `swap_backgrounds`): the plain colours of `data.swap_backgrounds` (`named`), or `data.swap_count` drawn
  ones (`random` plain colours, `gradient`s between two colours, smooth colour `noise`), or the images of a
  folder (`textures`).

Whatever the source, a background never shows a colour that `data.swap_backgrounds` leaves out (the bench
and the demo leave out the colours the concept's edits ask for, so that "unseen" means unseen): a pixel
counts as every named colour the toy detector could read it as (`counts_as`: the background colour its vote
would pick, and every colour within its tolerance), and a background with a pixel that counts as a
left-out colour, or that comes closer than `MIN_SUBJECT_DISTANCE` to the subject's mean colour, is not used.

torch, PyAV, PIL and `setseq.data.video` / `setseq.data.cache` are imported inside the functions that read or
resize masks: checking a config (`setseq.config.DataConfig`) imports this module for its colour names, and
`setseq train --list-keys` must start without torch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from setseq.data.synthetic import BG_COLOURS, BG_SHADES
from setseq.errors import SetseqError
from setseq.eval.toy_detect import _MASK_THRESHOLD as TOLERANCE

__all__ = [
    "IMAGE_SUFFIXES",
    "SWAP_COLOURS",
    "SWAP_SOURCES",
    "Background",
    "check_swap_source",
    "composite",
    "composite_over",
    "counts_as",
    "swap_backgrounds",
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
    mean = subject_colour(frames, mask)
    return [
        c
        for c in names
        if np.linalg.norm(mean - np.asarray(SWAP_COLOURS[c], np.float64)) >= MIN_SUBJECT_DISTANCE
    ]


def subject_colour(frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The subject's mean RGB colour (3,) over every frame."""
    return frames[mask > 0.5].reshape(-1, 3).astype(np.float64).mean(axis=0)


def swap_prompt(prompt: str, colour: str) -> str:
    """The prompt of a sample whose background was swapped to `colour` ("": not named, the prompt itself)."""
    return f"{prompt} on a {colour} background" if colour else prompt


def composite(frames: np.ndarray, mask: np.ndarray, colour: str) -> np.ndarray:
    """The subject of `frames` (F, H, W, 3) uint8 over a plain `colour`, blended by the soft `mask` (F, H, W)."""
    return composite_over(frames, mask, np.asarray(SWAP_COLOURS[colour], np.float32))


def composite_over(frames: np.ndarray, mask: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The subject of `frames` (F, H, W, 3) uint8 over `background` (RGB (3,), an image (H, W, 3) or a video
    (F, H, W, 3)), blended by the soft `mask` (F, H, W)."""
    m = np.asarray(mask, np.float32)[..., None]
    bg = np.asarray(background, np.float32)
    return np.clip(np.round(m * frames.astype(np.float32) + (1.0 - m) * bg), 0, 255).astype(np.uint8)


# -- background sources (`data.swap_source`) ---------------------------------------------------------------

#: Where composite backgrounds come from: the named plain colours, drawn ones, a folder of images, or videos
#: the base model generates (`setseq.train.encode.generated_scenes`).
SWAP_SOURCES = ("named", "random", "gradient", "noise", "textures", "generated")
_SWAP_SEED = 20261207  # the drawn backgrounds are the same for every run of a config (they are cached)
_TRIES = 400  # draws per wanted background before the source counts as yielding nothing
_NOISE_AMPLITUDE = 48.0  # smooth noise: +- this much per channel around a drawn colour
_NOISE_CELLS = 4  # ... varying over a 4x4 grid, bilinearly upsampled


@dataclass(frozen=True)
class Background:
    """One composite background: its pixels, an image (H, W, 3) or a video (F, H, W, 3) uint8, and the colour
    name its prompt uses."""

    image: np.ndarray
    name: str


def _palette() -> tuple[list[str], np.ndarray, np.ndarray]:
    """Every colour name a background may be read as (the detector's background colours and the swap
    colours): names, each one's colour and its pattern shade (its colour when it has none), (K, 3)."""
    names = list(dict.fromkeys([*BG_COLOURS, *SWAP_COLOURS]))
    rgb = {**BG_COLOURS, **SWAP_COLOURS}
    cols = np.array([rgb[n] for n in names], np.float32)
    shades = np.array([BG_SHADES.get(n, rgb[n]) for n in names], np.float32)
    return names, cols, shades


def _nearest_name(v: np.ndarray, names: list[str], cols: np.ndarray, shades: np.ndarray) -> np.ndarray:
    """For pixels (P, 3), the index into `names` of the nearest colour or pattern shade."""
    protos = np.concatenate([cols, shades])
    return ((v[:, None, :] - protos[None]) ** 2).sum(-1).argmin(1) % len(names)


def counts_as(pixels: np.ndarray) -> set[str]:
    """Every named colour that some pixel of `pixels` (..., 3) counts as: the background colour the toy
    detector's vote picks for it (the nearest of its background colours and their pattern shades), and every
    colour of the palette within the detector's tolerance of it (distance to the colour-to-shade segment
    below the detector's background threshold)."""
    v = np.asarray(pixels, np.float32).reshape(-1, 3)
    bg = list(BG_COLOURS)
    vote = _nearest_name(
        v,
        bg,
        np.array([BG_COLOURS[n] for n in bg], np.float32),
        np.array([BG_SHADES[n] for n in bg], np.float32),
    )
    found = {bg[i] for i in np.unique(vote)}
    names, cols, shades = _palette()
    ab = shades - cols  # (K, 3); zero for a colour without a shade
    t = np.clip(((v[:, None] - cols[None]) * ab[None]).sum(-1) / np.maximum((ab**2).sum(-1), 1e-6), 0, 1)
    d = np.linalg.norm(v[:, None] - cols[None] - t[..., None] * ab[None], axis=-1)  # (P, K)
    return found | {names[k] for k in np.nonzero((d < TOLERANCE).any(0))[0]}


def _allowed(image: np.ndarray, banned: set[str], subject: np.ndarray | None) -> bool:
    """Whether a background shows no banned colour and keeps every pixel away from the subject's colour."""
    if counts_as(image) & banned:
        return False
    if subject is None:
        return True
    d = np.linalg.norm(image.reshape(-1, 3).astype(np.float64) - subject, axis=-1)
    return bool(d.min() >= MIN_SUBJECT_DISTANCE)


def _name_of(image: np.ndarray) -> str:
    """The colour name a background's prompt uses: the nearest palette colour of most of its pixels."""
    names, cols, shades = _palette()
    nearest = _nearest_name(image.reshape(-1, 3).astype(np.float32), names, cols, shades)
    return names[int(np.bincount(nearest, minlength=len(names)).argmax())]


def _draw(source: str, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """One drawn background (H, W, 3) uint8 of a `random`, `gradient` or `noise` source."""
    import torch
    import torch.nn.functional as F

    h, w = size
    if source == "random":
        return np.broadcast_to(rng.integers(0, 256, 3).astype(np.uint8), (h, w, 3)).copy()
    if source == "gradient":  # two colours, blended along a random direction
        a, b = rng.uniform(0, 255, (2, 3))
        ang = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        t = np.cos(ang) * xx / max(w - 1, 1) + np.sin(ang) * yy / max(h - 1, 1)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
        return np.round(a + t[..., None] * (b - a)).astype(np.uint8)
    base = rng.uniform(_NOISE_AMPLITUDE, 255 - _NOISE_AMPLITUDE, 3)
    cells = torch.from_numpy(rng.uniform(-1, 1, (1, 3, _NOISE_CELLS, _NOISE_CELLS)).astype(np.float32))
    smooth = F.interpolate(cells, size=(h, w), mode="bilinear", align_corners=True)[0].permute(1, 2, 0)
    return np.clip(np.round(base + _NOISE_AMPLITUDE * smooth.numpy()), 0, 255).astype(np.uint8)


def _texture_images(folder: Path, size: tuple[int, int]) -> list[np.ndarray]:
    """The images of a texture folder at `size` (resized to cover it, centre-cropped); unreadable ones are
    skipped."""
    from PIL import Image, UnidentifiedImageError

    from setseq.data.video import resize_center_crop

    out = []
    for f in _images(folder):
        try:
            with Image.open(f) as im:
                out.append(resize_center_crop(np.asarray(im.convert("RGB")), size))
        except (OSError, UnidentifiedImageError):
            continue
    return out


def check_swap_source(data) -> None:
    """One-line refusal of a background source that yields nothing, before anything is written: a texture
    folder that is missing, holds no readable image, or none without a left-out colour; a drawn source
    whose every draw shows a left-out colour."""
    if data.swap_source in ("named", "generated"):  # (generated: checked once its scenes are drawn)
        return
    banned = set(SWAP_COLOURS) - set(data.swap_backgrounds)
    if data.swap_source == "textures":
        folder = Path(data.swap_textures or "")
        if not folder.is_dir():
            raise SetseqError(
                f"data.swap_textures {folder} is not a folder", "pass a folder of background images"
            )
        images = _texture_images(folder, (64, 64))
        if not images:
            raise SetseqError(
                f"data.swap_textures {folder} holds no readable image",
                f"put background images in it ({', '.join(IMAGE_SUFFIXES)})",
            )
        if not any(_allowed(im, banned, None) for im in images):
            raise SetseqError(
                f"every image of data.swap_textures {folder} shows a colour data.swap_backgrounds leaves out "
                f"({', '.join(sorted(banned))})",
                "add images without those colours, or name them in data.swap_backgrounds",
            )
        return
    rng = np.random.default_rng(_SWAP_SEED)
    if not any(_allowed(_draw(data.swap_source, (16, 16), rng), banned, None) for _ in range(_TRIES)):
        raise SetseqError(
            f"data.swap_source={data.swap_source} draws no background without a colour data.swap_backgrounds "
            f"leaves out ({', '.join(sorted(banned))})",
            "name more colours in data.swap_backgrounds, or use data.swap_source=named",
        )


def swap_backgrounds(
    data, frames: np.ndarray, mask: np.ndarray, scenes: list[np.ndarray] | None = None
) -> list[Background]:
    """The composite backgrounds of `data` (a `DataConfig`) for a video `frames` (F, H, W, 3) and its subject
    `mask`: the named plain colours, or `data.swap_count` drawn (seeded, so every run of a config gets the
    same), or the texture folder's images, or the base model's `scenes` (videos (F, H, W, 3) uint8, for the
    `generated` source); none shows a colour `data.swap_backgrounds` leaves out or comes
    near the subject's colour. Each is named by its colour (`counts_as`'s vote) unless `data.swap_named` is
    off (name ""). Refused in one line when nothing is left."""
    size = frames.shape[1:3]
    named = data.swap_named
    if data.swap_source == "named":
        names = swap_colours_for(frames, mask, list(data.swap_backgrounds))
        return [
            Background(np.broadcast_to(np.asarray(SWAP_COLOURS[c], np.uint8), (*size, 3)), c if named else "")
            for c in names
        ]
    banned = set(SWAP_COLOURS) - set(data.swap_backgrounds)
    subject = subject_colour(frames, mask)
    if data.swap_source == "textures":
        images = [
            im for im in _texture_images(Path(data.swap_textures), size) if _allowed(im, banned, subject)
        ]
    elif data.swap_source == "generated":
        if scenes is None:
            raise ValueError("the generated source needs the base model's scenes")
        images = [v for v in scenes if _allowed(v, banned, subject)]
    else:
        rng = np.random.default_rng(_SWAP_SEED)
        images = []
        for _ in range(_TRIES * data.swap_count):
            im = _draw(data.swap_source, size, rng)
            if _allowed(im, banned, subject):
                images.append(im)
                if len(images) == data.swap_count:
                    break
    if not images:
        raise SetseqError(
            f"data.swap_source={data.swap_source} gives no background far from the subject's colour and "
            f"without a colour data.swap_backgrounds leaves out ({', '.join(sorted(banned)) or 'none'})",
            "name more colours in data.swap_backgrounds, or use another data.swap_source",
        )
    return [Background(im, _name_of(im) if named else "") for im in images]
