"""Tiny real models built from config, with random weights and no downloads: for tests, benchmarks and CI.

`build_tiny_wan(folder)` writes a complete diffusers-format Wan T2V checkpoint (tokenizer built in code,
tiny UMT5, tiny AutoencoderKLWan, tiny WanTransformer3DModel, UniPC scheduler) that loads through exactly the
same `WanPipeline.from_pretrained` path as a real Wan checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch


def scale_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max|actual - expected| / max|expected| (0 when both are all zero; inf when only `expected` is)."""
    if expected.numel() == 0:
        return 0.0
    a, b = actual.detach().double(), expected.detach().double()
    diff, scale = float((a - b).abs().max()), float(b.abs().max())
    if diff == 0.0:
        return 0.0
    return diff / scale if scale > 0 else float("inf")


def assert_close_to_scale(
    actual: torch.Tensor | dict[str, torch.Tensor],
    expected: torch.Tensor | dict[str, torch.Tensor],
    rtol: float = 5e-2,
    atol: float = 1e-12,
    name: str = "",
) -> None:
    """Assert max|actual - expected| <= rtol * max|expected| + atol, per tensor (per key for dicts).

    Elementwise tolerances fail across processes and CPUs: the reduction order differs between 1 process x 2
    threads and 2 processes x 1 thread, and AdamW turns a rounding-level change in a near-zero gradient into a
    change of about lr in that element's update. So an element's error is bounded by the tensor's scale, not
    its own size. Measured for 2 processes vs 1 on tiny Wan after 5 AdamW steps: up to 0.2% of a LoRA tensor's
    scale on one machine, 0.9% on another. The default rtol (5%) leaves room for other CPUs and reduction
    orders while an error in what is trained (a dropped or repeated micro-batch, another process's noise, a
    parameter not stepped) moves many elements by about lr, a sizeable part of the scale after a few steps."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), (
            sorted(set(actual) ^ set(expected)) if isinstance(actual, dict) else type(actual)
        )
        for k in expected:
            assert_close_to_scale(actual[k], expected[k], rtol, atol, f"{name}{k}")
        return
    assert isinstance(actual, torch.Tensor) and actual.shape == expected.shape, (
        name,
        actual.shape,
        expected.shape,
    )
    if expected.numel() == 0:
        return
    a, b = actual.detach().double(), expected.detach().double()
    diff, scale = float((a - b).abs().max()), float(b.abs().max())
    assert diff <= rtol * scale + atol, (
        f"{name or 'tensor'}: max|a-b| {diff:.3g} > {rtol:g} x max|b| {scale:.3g} + {atol:g} "
        f"(relative {scale_error(actual, expected):.3g})"
    )


# Words the tiny Grounding DINO's tokenizer knows: the toy world's shapes and a few subjects.
SEGMENT_WORDS = (
    "a the person dog cat ball cube star diamond ring heart circle square triangle red cyan pink blue green ."
).split()


def build_tiny_grounding_dino(folder: str | Path, seed: int = 0, size: int = 64) -> Path:
    """A random-weight Grounding DINO (`GroundingDinoForObjectDetection`: tiny Swin, tiny BERT) with its
    processor (the PIL image processor, a word-level BERT tokenizer), saved to `folder` as a hub checkpoint
    is: `from_pretrained(folder)` loads it the same way. Its boxes and scores are random but fixed by
    `seed`; a test picks `threshold` 0 (every box passes) or 1 (none does)."""
    # (heavy to import: loaded where used)
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        SwinConfig,
    )

    # (heavy to import: loaded where used)
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    folder = Path(folder)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *SEGMENT_WORDS]
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    swin = SwinConfig(
        window_size=4,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        image_size=size,
        out_indices=[2, 3, 4],
    )
    text = dict(
        model_type="bert",
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=32,
        vocab_size=len(words),
    )
    cfg = GroundingDinoConfig(
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=4, encoder_n_points=2, decoder_n_points=2,
        backbone_config=swin, max_text_len=16, text_config=text,
    )  # fmt: skip
    torch.manual_seed(seed)
    GroundingDinoForObjectDetection(cfg).eval().save_pretrained(folder)
    image = GroundingDinoImageProcessorPil(size={"shortest_edge": 2 * size, "longest_edge": 4 * size})
    GroundingDinoProcessor(image, tok).save_pretrained(folder)
    return folder


def build_tiny_sam2_video(folder: str | Path, seed: int = 0, size: int = 64) -> Path:
    """A random-weight SAM 2 video model (`Sam2VideoModel`: tiny Hiera, one memory-attention layer) at
    `size` x `size` input, saved to `folder` as a hub checkpoint is. Its object-score head is set to say
    "present" (bias +10) so that tracking yields masks on every frame, random in shape but fixed by `seed`."""
    # (heavy to import: loaded where used)
    from transformers import Sam2VideoConfig, Sam2VideoModel

    s = size
    hiera = dict(
        model_type="sam2_hiera_det_model", hidden_size=16, num_attention_heads=1, image_size=[s, s],
        blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[16, 32, 64, 128],
        num_attention_heads_per_stage=[1, 1, 1, 1], window_size_per_stage=[4, 4, 4, 4],
        global_attention_blocks=[3], window_positional_embedding_background_size=[2, 2],
    )  # fmt: skip
    vision = dict(
        model_type="sam2_vision_model", backbone_config=hiera, backbone_channel_list=[128, 64, 32, 16],
        backbone_feature_sizes=[[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]], fpn_hidden_size=128,
    )  # fmt: skip
    # Hidden size 128 over a memory of 64 channels (the real 256 / 64 ratio halved): transformers' SAM 2
    # splits object pointers into hidden / 64 tokens and reads 64-channel memories, so 64 is fixed.
    cfg = Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config=dict(hidden_size=128, image_size=s, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=128, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
        image_size=s, memory_attention_hidden_size=128, memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64, memory_attention_rope_feat_sizes=[s // 16, s // 16],
        memory_encoder_hidden_size=128, memory_encoder_output_channels=64, mask_downsampler_embed_dim=128,
        memory_fuser_embed_dim=128, memory_fuser_intermediate_dim=64,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = Sam2VideoModel(cfg).eval()
    with torch.no_grad():
        model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(10.0)
    model.save_pretrained(Path(folder))
    return Path(folder)


def build_tiny_sam3_video(folder: str | Path, seed: int = 0, size: int = 112) -> Path:
    """A random-weight SAM 3 video model (`Sam3VideoModel`: tiny ViT detector with a tiny CLIP text encoder,
    tiny tracker) and its processor (a character-level CLIP tokenizer), saved to `folder` as a hub checkpoint
    is. Its detection thresholds are 0 and its hot start off, so random detections are tracked. Needs
    torchvision (transformers' SAM 3 does)."""
    # (heavy to import: loaded where used)
    from transformers import CLIPTokenizer, Sam3VideoConfig, Sam3VideoModel, Sam3VideoProcessor
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor
    from transformers.models.sam3 import configuration_sam3 as c
    from transformers.models.sam3.image_processing_sam3 import Sam3ImageProcessor

    s, patch = size, 14
    n = s // patch
    vit = c.Sam3ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=s,
        patch_size=patch, window_size=n // 2, global_attn_indexes=[0, 1],
    )  # fmt: skip
    vision = c.Sam3VisionConfig(backbone_config=vit, fpn_hidden_size=128, scale_factors=[4.0, 2.0, 1.0, 0.5])
    small = dict(hidden_size=128, num_layers=1, num_attention_heads=4, intermediate_size=64)
    detector = c.Sam3Config(
        vision_config=vision,
        text_config={
            "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "projection_dim": 32,
            "num_hidden_layers": 1, "num_attention_heads": 4, "max_position_embeddings": 32,
        },
        geometry_encoder_config=c.Sam3GeometryEncoderConfig(**small),
        detr_encoder_config=c.Sam3DETREncoderConfig(**small),
        detr_decoder_config=c.Sam3DETRDecoderConfig(**small, num_queries=5),
        mask_decoder_config=c.Sam3MaskDecoderConfig(hidden_size=128, num_upsampling_stages=2),
    )  # fmt: skip
    tracker = dict(
        model_type="sam3_tracker_video", image_size=s,
        prompt_encoder_config=dict(hidden_size=128, image_size=s, patch_size=patch, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=128, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
        memory_attention_hidden_size=128, memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64, memory_encoder_hidden_size=128,
        memory_encoder_output_channels=64, mask_downsampler_embed_dim=128, memory_fuser_embed_dim=128,
        memory_fuser_intermediate_dim=64,
        vision_config={**vision.to_dict(), "backbone_feature_sizes": [[4 * n, 4 * n], [2 * n, 2 * n], [n, n]]},
    )  # fmt: skip
    cfg = Sam3VideoConfig(
        detector_config=detector, tracker_config=tracker, score_threshold_detection=0.0, new_det_thresh=0.0,
        hotstart_delay=0, low_res_mask_size=4 * n,
    )  # fmt: skip
    torch.manual_seed(seed)
    Sam3VideoModel(cfg).eval().save_pretrained(Path(folder))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[f"{ch}</w>"] = len(vocab)
    square = {"height": s, "width": s}
    Sam3VideoProcessor(
        Sam3ImageProcessor(size=square),
        Sam2VideoVideoProcessor(size=square),
        CLIPTokenizer(vocab=vocab, merges=[]),
    ).save_pretrained(Path(folder))
    return Path(folder)
