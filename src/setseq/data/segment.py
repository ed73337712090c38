"""Subject masks from a word: text-prompted video segmentation with transformers' own models.

Two segmenters, chosen by what the `--segmenter` checkpoint is (its config.json's model_type):

- SAM 2 / SAM 2.1 video (`Sam2VideoModel`, ungated, the default `facebook/sam2.1-hiera-large`) with a
  Grounding DINO detector (`GroundingDinoForObjectDetection`, ungated, `IDEA-Research/grounding-dino-base`):
  the detector turns the word into a box on the first frame it finds the subject in (of up to
  `_DETECT_TRIES` evenly spaced frames), SAM 2 segments that box and tracks it forward and back;
- SAM 3 video (`Sam3VideoModel`, gated: the user points at weights they were granted): the word is its own
  prompt, detected and tracked by the one model. Every instance it finds is tracked; the subject is the one
  seen longest and most surely (sum of its scores over the frames).

Both keep one subject: the concept is one thing. Weights come from a local folder or a hub id, as the DiTs'
do; a folder that is not such a model, or an id neither cached nor downloadable, is refused in one line.

SAM 2's frames are prepared here (resized to its square input, ImageNet-normalised, as its processor does)
and its box is written into the session as the processor writes it: transformers' `Sam2VideoProcessor` needs
torchvision, which setseq does not depend on (PyPI's torchvision does not load beside torch's CPU wheel).
SAM 3's model itself needs torchvision (`roi_align`), so that path asks for it by name.
transformers is imported inside the functions that build or run a segmenter: `setseq train` imports this
module on every run, and only a run with `--mask auto` segments.

`segment_video` writes one mask image per source frame (at the video's size), which `setseq.data.masks.
load_mask` then samples with the video's own frame indices, size and crop: `setseq mask` and `--mask auto`
(`auto_mask_folder`, cached in the run's cache folder under a key of the video, the segmenter's
fingerprint, the prompt and the threshold) make the same file.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from setseq.data.cache import cache_key, file_sha256, weights_stamp
from setseq.data.masks import _source_frames
from setseq.data.video import load_clip, probe_video, write_video
from setseq.errors import SetseqError
from setseq.io import write_json
from setseq.runtime import resolve_device

DEFAULT_SEGMENTER = "facebook/sam2.1-hiera-large"
DEFAULT_DETECTOR = "IDEA-Research/grounding-dino-base"
BOX_THRESHOLD = 0.35  # Grounding DINO's box score threshold (its authors' default); SAM 3's own otherwise
TEXT_THRESHOLD = 0.25
MIN_COVER = 0.002  # a frame whose mask covers less than this share of it: the subject was lost
MAX_COVER = 0.95  # ... more than this: the "subject" is the whole frame
MAX_SIDE = 1024  # frames are downscaled to this longest side for the segmenter (both work at 1008-1024)
_DETECT_TRIES = 8
# transformers documents `Sam3VideoModel.from_pretrained("facebook/sam3")`, whose config type is not known here:
# both are let through, and a checkpoint Sam3VideoModel cannot load is refused in one line by `_load`.
_TRACKERS = {"sam2_video": "sam2", "sam2": "sam2", "sam3_video": "sam3", "sam3": "sam3"}
_DETECTORS = ("grounding-dino", "mm-grounding-dino")
_NOT_CONFIG = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures")
_DOWNLOAD = "download it first (hf download ID --local-dir DIR) and pass the folder"


@dataclass(frozen=True)
class SegmenterSpec:
    """Which segmenter: a SAM 2 or SAM 3 video checkpoint (`segmenter`), and for SAM 2 the Grounding DINO
    detector that turns the prompt into a box; `threshold`: the detection score a box (SAM 2 path) or an
    object (SAM 3) needs."""

    segmenter: str = DEFAULT_SEGMENTER
    detector: str = DEFAULT_DETECTOR
    threshold: float = BOX_THRESHOLD


def _model_config(spec: str, flag: str) -> dict[str, Any]:
    """The config.json of a local folder or hub id (cached, or downloaded as the DiTs are); one-line refusals."""
    from transformers import PretrainedConfig

    p = Path(spec).expanduser()
    if p.exists() and not (p / "config.json").is_file():
        raise SetseqError(
            f"{flag} {spec} is not a segmenter checkpoint (no config.json in it)",
            "point it at a transformers SAM 2 / SAM 3 video or Grounding DINO folder",
        )
    try:
        cfg, _ = PretrainedConfig.get_config_dict(str(p) if p.exists() else spec)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SetseqError(f"cannot load {flag} '{spec}': {first[:200]}", _DOWNLOAD) from None
    return cfg


def _kind(spec: SegmenterSpec) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """('sam2' | 'sam3', the segmenter's config, the detector's config or None), refused in one line when
    the checkpoints are not a video segmenter and a text detector."""
    seg = _model_config(spec.segmenter, "segmenter")
    kind = _TRACKERS.get(seg.get("model_type", ""))
    if kind is None:
        raise SetseqError(
            f"segmenter {spec.segmenter} is a '{seg.get('model_type')}' model, not a SAM 2 or SAM 3 video model",
            f"use data.segmenter={DEFAULT_SEGMENTER} (or a SAM 3 video checkpoint), or pass --mask FILE",
        )
    if kind == "sam3":
        return kind, seg, None
    det = _model_config(spec.detector, "detector")
    if det.get("model_type") not in _DETECTORS:
        raise SetseqError(
            f"detector {spec.detector} is a '{det.get('model_type')}' model, not Grounding DINO",
            f"use data.detector={DEFAULT_DETECTOR}",
        )
    return kind, seg, det


def _config_hash(cfg: dict[str, Any]) -> str:
    kept = {k: v for k, v in cfg.items() if k not in _NOT_CONFIG}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint(spec: SegmenterSpec) -> dict[str, Any]:
    """What makes the masks: the models' configs (not their paths), their weights' stamps (`weights_stamp`:
    a local folder's weight files, a hub id itself) and the threshold. Reads configs only."""
    kind, seg, det = _kind(spec)
    out: dict[str, Any] = {
        "kind": kind,
        "segmenter": _config_hash(seg),
        "segmenter_weights": weights_stamp(spec.segmenter),
        "threshold": spec.threshold,
    }
    if det is not None:
        out |= {"detector": _config_hash(det), "detector_weights": weights_stamp(spec.detector)}
    return out


def _load(loader: Callable[..., Any], spec: str, role: str) -> Any:
    try:
        return loader(spec)
    except (
        Exception
    ) as exc:  # missing files, offline, or weights of another architecture (shape mismatches...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SetseqError(
            f"cannot load the {role} '{spec}' ({type(exc).__name__}: {first[:200]})",
            f"check that it is a complete transformers checkpoint; {_DOWNLOAD}",
        ) from None


@dataclass
class Segmenter:
    """Loaded models of a `SegmenterSpec` on `device`; `segment` masks a clip, `close` frees them."""

    spec: SegmenterSpec
    kind: str
    device: Any
    models: dict[str, Any] = field(default_factory=dict)

    def segment(self, frames: np.ndarray, prompt: str) -> np.ndarray:
        """(F, H, W, 3) uint8 -> the subject's mask (F, H, W) float32 in [0, 1]; refused in one line when
        the prompt is found in no frame."""
        with torch.no_grad():
            if self.kind == "sam3":
                return _segment_sam3(self, frames, prompt)
            return _segment_sam2(self, frames, prompt)

    def close(self) -> None:
        """Free the models (and the GPU memory they held) before the DiT loads."""
        self.models.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def load_segmenter(spec: SegmenterSpec, device: Any) -> Segmenter:
    """The models of `spec` on `device`, eval mode, float32."""
    kind, _, _ = _kind(spec)
    seg = Segmenter(spec, kind, torch.device(device))
    if kind == "sam3":
        try:
            import torchvision  # noqa: F401  (Sam3VideoModel's roi_align)
            from transformers import Sam3VideoModel, Sam3VideoProcessor
        except (ImportError, RuntimeError) as exc:
            raise SetseqError(
                f"SAM 3 video needs torchvision, which does not load here ({type(exc).__name__})",
                "pip install torchvision (the build that matches your torch), or use the SAM 2 default",
            ) from None
        seg.models["model"] = _load(Sam3VideoModel.from_pretrained, spec.segmenter, "segmenter")
        seg.models["processor"] = _load(Sam3VideoProcessor.from_pretrained, spec.segmenter, "segmenter")
    else:
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor, Sam2VideoModel

        seg.models["model"] = _load(Sam2VideoModel.from_pretrained, spec.segmenter, "segmenter")
        seg.models["detector"] = _load(
            AutoModelForZeroShotObjectDetection.from_pretrained, spec.detector, "detector"
        )
        seg.models["det_processor"] = _load(AutoProcessor.from_pretrained, spec.detector, "detector")
    for name in ("model", "detector"):
        if name in seg.models:
            seg.models[name] = seg.models[name].to(seg.device, torch.float32).eval()
    return seg


def _nothing_found(prompt: str, n: int) -> SetseqError:
    return SetseqError(
        f"the prompt '{prompt}' finds nothing in the video ({n} frames searched)",
        "try another word for the subject (--prompt / --mask-prompt), or pass a mask with --mask FILE",
    )


def detect_box(seg: Segmenter, frame: np.ndarray, prompt: str) -> tuple[list[float], float] | None:
    """Grounding DINO's best box (x0, y0, x1, y1 in pixels) for `prompt` in one frame, and its score; None
    when no box reaches the threshold."""
    proc, det = seg.models["det_processor"], seg.models["detector"]
    text = prompt.strip().lower().rstrip(".") + "."  # its processor's convention: lower case, ending "."
    inputs = proc(images=Image.fromarray(frame), text=text, return_tensors="pt").to(seg.device)
    out = det(**inputs)
    res = proc.post_process_grounded_object_detection(
        out,
        inputs["input_ids"],
        threshold=seg.spec.threshold,
        text_threshold=TEXT_THRESHOLD,
        target_sizes=[frame.shape[:2]],
    )[0]
    if len(res["scores"]) == 0:
        return None
    best = int(res["scores"].argmax())
    return [float(v) for v in res["boxes"][best]], float(res["scores"][best])


def _sam2_session(model: Any, frames: np.ndarray, device: Any):
    """A `Sam2VideoInferenceSession` of `frames`, prepared as `Sam2VideoVideoProcessor` prepares them
    (bilinear resize to the square input, 1/255, ImageNet mean and std), the frames kept in host memory."""
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

    s = int(model.config.image_size)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_DEFAULT_STD)[:, None, None]
    x = torch.empty(len(frames), 3, s, s)
    for i, f in enumerate(frames):  # one at a time: a long clip at full size does not fit as floats at once
        t = torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1)[None].float() / 255.0
        x[i] = (F.interpolate(t, (s, s), mode="bilinear", antialias=True)[0] - mean) / std
    h, w = frames.shape[1:3]
    return Sam2VideoInferenceSession(
        video=x,
        video_height=h,
        video_width=w,
        inference_device=device,
        inference_state_device=device,
        video_storage_device="cpu",
        dtype=torch.float32,
    )


def _segment_sam2(seg: Segmenter, frames: np.ndarray, prompt: str) -> np.ndarray:
    """Grounding DINO's box on the first frame (of `_DETECT_TRIES` evenly spaced) that shows the subject,
    SAM 2's mask of it, tracked forward to the end and back to the start."""
    n = len(frames)
    tries = sorted(set(np.linspace(0, n - 1, min(n, _DETECT_TRIES)).round().astype(int).tolist()))
    found = None
    for i in tries:
        if (hit := detect_box(seg, frames[i], prompt)) is not None:
            found = (i, hit[0])
            break
    if found is None:
        raise _nothing_found(prompt, len(tries))
    anchor, box = found
    model = seg.models["model"]
    session = _sam2_session(model, frames, seg.device)
    h, w = frames.shape[1:3]
    s = int(model.config.image_size)
    scaled = torch.tensor(box) * torch.tensor([s / w, s / h, s / w, s / h])
    obj = session.obj_id_to_idx(1)
    # What `Sam2VideoProcessor.add_inputs_to_inference_session` does with a box: its two corners as points
    # labelled 2 and 3, in the model's input coordinates.
    session.add_point_inputs(
        obj,
        anchor,
        {
            "point_coords": scaled.reshape(1, 1, 2, 2),
            "point_labels": torch.tensor([[[2, 3]]], dtype=torch.int32),
        },
    )
    session.obj_with_new_inputs = [1]
    masks = np.zeros((n, h, w), np.float32)
    for reverse in (False, True):
        if reverse and anchor == 0:
            break
        for out in model.propagate_in_video_iterator(session, start_frame_idx=anchor, reverse=reverse):
            logits = F.interpolate(out.pred_masks[:1].float(), (h, w), mode="bilinear", align_corners=False)
            masks[out.frame_idx] = (logits[0, 0] > 0).float().cpu().numpy()
    return masks


def _segment_sam3(seg: Segmenter, frames: np.ndarray, prompt: str) -> np.ndarray:
    """SAM 3 video with the word as its prompt; the object with the largest summed score is the subject."""
    proc, model = seg.models["processor"], seg.models["model"]
    session = proc.init_video_session(
        video=list(frames),
        inference_device=seg.device,
        processing_device="cpu",
        video_storage_device="cpu",
        dtype=torch.float32,
    )
    proc.add_text_prompt(session, prompt.strip())
    n, h, w = frames.shape[:3]
    per_obj: dict[int, np.ndarray] = {}
    score: dict[int, float] = {}
    for out in model.propagate_in_video_iterator(inference_session=session, max_frame_num_to_track=n):
        post = proc.postprocess_outputs(session, out)
        for oid, sc, m in zip(post["object_ids"].tolist(), post["scores"].tolist(), post["masks"]):
            if sc < seg.spec.threshold:
                continue
            per_obj.setdefault(oid, np.zeros((n, h, w), np.float32))[out.frame_idx] = m.float().cpu().numpy()
            score[oid] = score.get(oid, 0.0) + sc
    if not score:
        raise _nothing_found(prompt, n)
    return per_obj[max(score, key=score.__getitem__)]


def check_coverage(mask: np.ndarray, prompt: str, indices: list[int] | None = None) -> None:
    """Refuse, naming the frame, a mask that covers almost none or almost all of a frame."""
    cover = mask.reshape(len(mask), -1).mean(axis=1)
    names = indices if indices is not None else list(range(len(mask)))
    fix = "try another word for the subject (--prompt / --mask-prompt), or pass a mask with --mask FILE"
    for i, c in enumerate(cover):
        if c < MIN_COVER:
            raise SetseqError(
                f"the mask of '{prompt}' covers {100 * c:.2f}% of frame {names[i]}: the subject was not found "
                "there",
                fix,
            )
        if c > MAX_COVER:
            raise SetseqError(
                f"the mask of '{prompt}' covers {100 * c:.1f}% of frame {names[i]}: almost the whole frame",
                fix,
            )


def _downscale(frames: np.ndarray) -> np.ndarray:
    """Frames with their longest side at most `MAX_SIDE` (the aspect kept), for the segmenter."""
    h, w = frames.shape[1:3]
    k = MAX_SIDE / max(h, w)
    if k >= 1:
        return frames
    size = (max(1, round(w * k)), max(1, round(h * k)))
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR)) for f in frames])


def segment_video(
    video: str | Path,
    prompt: str,
    seg: Segmenter,
    *,
    start: float = 0.0,
    end: float | None = None,
) -> tuple[np.ndarray, list[int], int]:
    """Segment every source frame of `video` in [start, end): (masks (K, h, w) float32 at the segmenter's
    size, their source frame indices, the video's frame count). Coverage is checked."""
    clip = load_clip(video, start=start, end=end)
    masks = seg.segment(_downscale(clip.frames), prompt)
    check_coverage(masks, prompt, clip.indices)
    return masks, list(clip.indices), int(_source_frames(Path(video)) or len(clip.indices))


def write_mask_folder(
    folder: str | Path, masks: np.ndarray, indices: list[int], n_frames: int, size: tuple[int, int]
) -> Path:
    """One PNG per source frame (000000.png ...), white = the subject, at `size` (H, W); frames outside
    `indices` black. Written into a temporary folder, then renamed: never half-written."""
    out = Path(folder)
    if out.exists():
        raise SetseqError(f"{out} already exists", "choose another --out, or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        h, w = size
        by_index = dict(zip(indices, masks))
        black = Image.new("L", (w, h), 0)
        for i in range(n_frames):
            m = by_index.get(i)
            img = black if m is None else Image.fromarray((m * 255).round().astype(np.uint8), "L")
            if img.size != (w, h):
                img = img.resize((w, h), Image.BILINEAR)
            img.point(lambda v: 255 if v >= 128 else 0).save(tmp / f"{i:06d}.png")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_mask(
    video: str | Path,
    prompt: str,
    out: str | Path,
    spec: SegmenterSpec,
    device: Any,
    *,
    start: float = 0.0,
    end: float | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """`setseq mask`: the subject mask of `video` as a folder of per-frame PNGs (or a video when `out` ends
    in a video suffix), with the video's frame count and size: what `--mask` takes."""
    info = probe_video(video)  # a bad video is refused before a model is loaded
    target = Path(out)
    is_video = target.suffix.lower() in (".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v")
    if target.exists():
        raise SetseqError(f"{target} already exists", "choose another --out, or remove it")
    seg = load_segmenter(spec, device)
    try:
        masks, indices, n = segment_video(video, prompt, seg, start=start, end=end)
    finally:
        seg.close()
    size = (info.height, info.width)
    if not is_video:
        folder = write_mask_folder(target, masks, indices, n, size)
    else:
        with tempfile.TemporaryDirectory() as d:
            folder = write_mask_folder(Path(d) / "m", masks, indices, n, size)

            frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.iterdir())]
            write_video(target, np.stack(frames), fps=info.fps or 8.0)
        folder = target
    cover = masks.reshape(len(masks), -1).mean(axis=1)
    log(
        f"wrote {folder}: {n} frames, the subject covers {100 * cover.min():.1f}-{100 * cover.max():.1f}% "
        f"of frames {indices[0]}-{indices[-1]} ({seg.kind}, prompt '{prompt}')"
    )
    return folder


def mask_key(
    video: str | Path, prompt: str, spec: SegmenterSpec, start: float, end: float | None
) -> tuple[str, str]:
    """The cache key of an automatic mask: the video's content, the time range, the segmenter's
    fingerprint and the prompt (canonical JSON, short hash)."""
    return cache_key(
        {
            "kind": "subject_mask",
            "video_sha256": file_sha256(Path(video)),
            "start": start,
            "end": end,
            "prompt": prompt.strip(),
            "segmenter": fingerprint(spec),
        }
    )


def auto_mask_folder(
    video: str | Path,
    prompt: str,
    spec: SegmenterSpec,
    cache_dir: Path,
    device: Any,
    *,
    start: float = 0.0,
    end: float | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """`--mask auto`: the mask folder of `video`, made once per key in `cache_dir` (`mask-KEY/`, its key in
    `key.json` beside the images; a folder holding another key is refused as stale)."""
    canon, short = mask_key(video, prompt, spec, start, end)
    folder = cache_dir / f"mask-{short}"
    stamp = cache_dir / f"mask-{short}.json"
    if folder.is_dir() and stamp.is_file():
        if json.loads(stamp.read_text()).get("key") != canon:
            raise SetseqError(
                f"the mask cache {folder} was made for another video, prompt or segmenter (stale cache)",
                f"delete {folder} and {stamp} and run again",
            )
        log(f"mask: reusing {folder} ('{prompt}')")
        return folder
    if folder.exists():  # images without their key: a killed run's leftover
        shutil.rmtree(folder)

    info = probe_video(video)
    log(f"mask: segmenting '{prompt}' in {Path(video).name} ({spec.segmenter})")
    seg = load_segmenter(spec, device)
    try:
        masks, indices, n = segment_video(video, prompt, seg, start=start, end=end)
    finally:
        seg.close()  # before the DiT loads
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_mask_folder(folder, masks, indices, n, (info.height, info.width))
    write_json(
        stamp, {"key": canon, "prompt": prompt, "segmenter": spec.segmenter, "detector": spec.detector}
    )
    log(f"mask: wrote {folder}")
    return folder


def with_auto_mask(cfg: Any, cache_dir: Path, log: Callable[[str], None] = print) -> Any:
    """`cfg` (a RunConfig) with `data.mask: auto` replaced by its mask folder (`auto_mask_folder`, segmented
    once and cached, the segmenter freed); any other config unchanged."""
    if cfg.data.mask != "auto":
        return cfg
    video = cfg.data.video
    if not video or not Path(video).is_file():
        raise SetseqError(f"--mask auto needs the video, and {video} is not a file", "check the --video path")
    spec = SegmenterSpec(cfg.data.segmenter, cfg.data.detector, cfg.data.mask_threshold)
    folder = auto_mask_folder(
        video,
        cfg.data.mask_prompt or cfg.concept.class_word,
        spec,
        cache_dir,
        resolve_device(cfg.model.device),
        start=cfg.data.start,
        end=cfg.data.end,
        log=log,
    )
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, mask=str(folder)))
