"""Time and peak memory of `--mask auto`'s segmentation (Grounding DINO's box + SAM 2.1 video tracking) over a
clip, e.g. 81 frames at 480x832 on a GPU.

Without weights on the machine (a lent GPU has no hub access), the models are built from config with random
weights at real size: SAM 2.1 hiera-large's shapes, and Grounding DINO at its default (tiny) config; the
detector only looks at up to 8 frames, the tracker runs on every frame, so the tracker's cost is the one
measured. Random weights find random boxes and masks: the threshold is 0 and the coverage check is skipped,
the compute is the same. With real checkpoints: --segmenter DIR --detector DIR.

    python benchmarks/segment_bench.py --device cuda --frames 81 --size 480x832
    python benchmarks/segment_bench.py --tiny --frames 9 --size 40x56     # a CPU smoke run (tiny models)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from setseq.data.segment import SegmenterSpec, load_segmenter
from setseq.tools.testing import SEGMENT_WORDS, build_tiny_grounding_dino, build_tiny_sam2_video


def _real_size_models(root: Path) -> tuple[Path, Path]:
    """SAM 2.1 hiera-large's shapes and a default Grounding DINO, random weights, saved as checkpoints."""
    # (transformers is imported here, as in setseq.data.segment: only the real-size run builds these)
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        Sam2VideoConfig,
        Sam2VideoModel,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    hiera = dict(
        model_type="sam2_hiera_det_model", hidden_size=144, num_attention_heads=2,
        blocks_per_stage=[2, 6, 36, 4], embed_dim_per_stage=[144, 288, 576, 1152],
        num_attention_heads_per_stage=[2, 4, 8, 16], window_size_per_stage=[8, 4, 16, 8],
        global_attention_blocks=[23, 33, 43],
    )  # fmt: skip
    vision = dict(
        model_type="sam2_vision_model", backbone_config=hiera, backbone_channel_list=[1152, 576, 288, 144]
    )
    sam = root / "sam2.1-large-shapes"
    Sam2VideoModel(Sam2VideoConfig(vision_config=vision)).save_pretrained(sam)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *SEGMENT_WORDS]
    det = root / "grounding-dino-shapes"
    cfg = GroundingDinoConfig(text_config={"model_type": "bert", "vocab_size": len(words)})
    GroundingDinoForObjectDetection(cfg).save_pretrained(det)
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    GroundingDinoProcessor(GroundingDinoImageProcessorPil(), tok).save_pretrained(det)
    return sam, det


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--size", default="480x832")
    p.add_argument("--segmenter")
    p.add_argument("--detector")
    p.add_argument("--tiny", action="store_true", help="the tests' tiny models (a smoke run)")
    a = p.parse_args()

    h, w = (int(v) for v in a.size.split("x"))
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (a.frames, h, w, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        if a.segmenter:
            sam, det = Path(a.segmenter), Path(a.detector)
        elif a.tiny:
            sam, det = build_tiny_sam2_video(root / "sam"), build_tiny_grounding_dino(root / "det")
        else:
            sam, det = _real_size_models(root)
        device = torch.device(a.device)
        t0 = time.perf_counter()
        seg = load_segmenter(SegmenterSpec(str(sam), str(det), 0.0), device)
        t_load = time.perf_counter() - t0
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        mask = seg.segment(frames, "person")
        if device.type == "cuda":
            torch.cuda.synchronize()
        t_seg = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        seg.close()
        freed = torch.cuda.memory_allocated() / 2**30 if device.type == "cuda" else None
    print(
        json.dumps(
            {
                "frames": a.frames,
                "size": [h, w],
                "device": str(device),
                "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
                "load_s": round(t_load, 2),
                "segment_s": round(t_seg, 2),
                "s_per_frame": round(t_seg / a.frames, 3),
                "peak_gib": None if peak is None else round(peak, 2),
                "allocated_after_close_gib": None if freed is None else round(freed, 3),
                "mask_shape": list(mask.shape),
                "weights": "given" if a.segmenter else ("tiny" if a.tiny else "random, real size"),
            }
        )
    )


if __name__ == "__main__":
    main()
