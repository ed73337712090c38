"""The first frame of image-to-video generation (`setseq generate --image PATH`): read, checked, and brought to
the video's size the way the training video is (`resize_center_crop`: cover the size, keep the aspect ratio,
crop the centre).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from setseq.data.video import resize_center_crop
from setseq.errors import SetseqError

__all__ = ["fit_image", "read_image"]

MAX_PIXELS = 8192 * 8192  # larger images are refused (PIL's decompression-bomb guard trips well above this)


def read_image(path: str | Path) -> np.ndarray:
    """The image at `path` as (H, W, 3) uint8 RGB (alpha dropped, greyscale and palette images converted).
    Refused in one line: missing, a folder, empty, unreadable, not an image (or truncated), or implausibly large."""
    p = Path(path)
    if not p.exists():
        raise SetseqError(f"image {p} does not exist", "check the --image path")
    if p.is_dir():
        raise SetseqError(f"image {p} is a folder, not an image file", "pass the path of a PNG or JPEG file")
    if not p.is_file():
        raise SetseqError(f"image {p} is not a regular file", "pass the path of a PNG or JPEG file")
    if p.stat().st_size == 0:
        raise SetseqError(
            f"image {p} is empty (0 bytes)", "copy the image again; it was not written completely"
        )
    try:
        with Image.open(p) as im:
            if im.width * im.height > MAX_PIXELS:
                raise SetseqError(
                    f"image {p} is {im.width}x{im.height} (WxH), larger than 8192x8192 pixels",
                    "pass a smaller image (it is resized to the video's size anyway)",
                )
            rgb = np.asarray(im.convert("RGB"))
    except PermissionError:
        raise SetseqError(
            f"cannot read image {p}: permission denied", "make the file readable (chmod +r)"
        ) from None
    except UnidentifiedImageError:
        raise SetseqError(
            f"{p} is not an image (no image format recognised it)", "pass a PNG or JPEG file as --image"
        ) from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # truncated or damaged data
        why = " ".join((str(exc) or type(exc).__name__).split())[:200]
        raise SetseqError(
            f"cannot read image {p}: {why}", "check that the image opens; re-save it as PNG"
        ) from None
    return np.ascontiguousarray(rgb)


def fit_image(image: np.ndarray, size: tuple[int, int], multiple: int, model: str) -> tuple[np.ndarray, str]:
    """`image` (H, W, 3) uint8 resized to cover `size` (H, W) and centre-cropped to it, as the training video is;
    with a note saying what was done. A size the model cannot take (not a multiple of `multiple`, the VAE
    stride times the patch) is refused: the video and its first frame have one size."""
    h, w = (int(v) for v in size)
    if h % multiple or w % multiple:
        fit = (max(multiple, h // multiple * multiple), max(multiple, w // multiple * multiple))
        raise SetseqError(
            f"the video size {h}x{w} (HxW) does not fit {model}: height and width must be multiples of {multiple}",
            f"pass --size {fit[0]}x{fit[1]} (the image is resized and centre-cropped to it)",
        )
    ih, iw = image.shape[:2]
    out = resize_center_crop(image, (h, w))
    if (ih, iw) == (h, w):
        return out, f"first frame: {ih}x{iw} (HxW), used as is"
    return (
        out,
        f"first frame: {ih}x{iw} (HxW) resized to cover {h}x{w} and centre-cropped (aspect ratio kept)",
    )
