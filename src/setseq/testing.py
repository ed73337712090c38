"""Tiny real models built from config, with random weights and no downloads: for tests, benchmarks and CI.

`build_tiny_wan(folder)` writes a complete diffusers-format Wan T2V checkpoint (tokenizer built in code,
tiny UMT5, tiny AutoencoderKLWan, tiny WanTransformer3DModel, UniPC scheduler) that loads through exactly the
same `WanPipeline.from_pretrained` path as a real Wan checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

TINY_WORDS = (
    "a an the in on of with and is are at to his her their motion person man woman dog cat car bonfire "
    "dancing walking running jumping spinning waving beach park city street forest room studio snow night "
    "red green blue yellow white black orange purple pink shirt hat glass holding wearing static camera "
    "slow fast pan zoom left right up down sks zwx qrv video photo style cinematic , ."
).split()


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


def build_word_tokenizer(words: list[str] | tuple[str, ...], max_length: int = 64):
    """A word-level `PreTrainedTokenizerFast` (pad <pad>, eos </s>, unk <unk>), built in code."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w.lower(), len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=max_length,
    )


def tiny_umt5(vocab_size: int):
    """A tiny random UMT5 text encoder (2 layers, width 32), the Wan families' text encoder in tests."""
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(
        UMT5Config(
            vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
        )
    ).eval()  # fmt: skip


def build_tiny_wan(
    folder: str | Path,
    seed: int = 0,
    *,
    layers: int = 2,
    heads: int = 2,
    head_dim: int = 12,
    two_experts: bool = False,
) -> Path:
    """Write a tiny random Wan 2.1-style T2V pipeline to `folder` (diffusers layout, safetensors).
    `two_experts`: Wan 2.2 A14B's layout instead, a high-noise `transformer` and a low-noise `transformer_2`
    switched at `boundary_ratio` 0.875 of the timesteps."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    folder = Path(folder)
    torch.manual_seed(seed)
    np.random.seed(seed)
    tokenizer = build_word_tokenizer(TINY_WORDS)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
        )
    ).eval()
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()

    def dit() -> WanTransformer3DModel:
        return WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=heads,
            attention_head_dim=head_dim,
            in_channels=16,
            out_channels=16,
            text_dim=32,
            freq_dim=32,
            ffn_dim=32,
            num_layers=layers,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        ).eval()

    transformer = dit()
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    experts = {"transformer_2": dit(), "boundary_ratio": 0.875} if two_experts else {}
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
        **experts,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_wan22_ti2v(folder: str | Path, seed: int = 0, *, layers: int = 2) -> Path:
    """Write a tiny random Wan 2.2 TI2V-5B-style T2V pipeline: the 48-channel residual VAE with a 2x2 pixel
    patch (spatial stride 16, temporal 4) and `expand_timesteps=True` (one timestep per latent patch).

    Config after diffusers' `tests/pipelines/wan/test_wan_22.py` (Wan225BPipelineFastTests)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer(TINY_WORDS)
    text_encoder = tiny_umt5(len(tokenizer))
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
        latents_mean=[0.0] * 48, latents_std=[1.0] * 48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        scale_factor_spatial=16, scale_factor_temporal=4, temperal_downsample=[False, True, True],
    ).eval()  # fmt: skip
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=48, out_channels=48,
        text_dim=32, freq_dim=32, ffn_dim=32, num_layers=layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ).eval()  # fmt: skip
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0
    )
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler,
        transformer_2=None, boundary_ratio=None, expand_timesteps=True,
    )  # fmt: skip
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def _tiny_t5(vocab_size: int, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        )
    ).eval()  # fmt: skip


def build_tiny_cogvideox(
    folder: str | Path, seed: int = 0, *, layers: int = 2, latent_channels: int = 4
) -> Path:
    """Write a tiny random CogVideoX T2V pipeline (5B-style: rotary positions, no learned positional
    embeddings) with CogVideoX-2B's real v-prediction DDIM scheduler config (zero-terminal-SNR, SNR shift 3).

    Sizes after diffusers' `tests/pipelines/cogvideo/test_cogvideox.py`: VAE stride 8 spatial / 4 temporal,
    4 latent channels, patch 2; head dim 16 so the 3D rotary split (t 4, h 6, w 6) is whole."""
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    folder = Path(folder)
    torch.manual_seed(seed)
    max_text = 16
    tokenizer = build_word_tokenizer(TINY_WORDS, max_length=max_text)
    text_encoder = _tiny_t5(len(tokenizer))
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=latent_channels, out_channels=latent_channels,
        time_embed_dim=8,
        text_embed_dim=32, num_layers=layers, sample_width=4, sample_height=4, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=max_text, use_rotary_positional_embeddings=True,
    ).eval()  # fmt: skip
    blocks = ("CogVideoXDownBlock3D",) * 4
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=blocks, up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8), latent_channels=latent_channels, layers_per_block=1, norm_num_groups=2,
        temporal_compression_ratio=4,
    ).eval()  # fmt: skip
    scheduler = CogVideoXDDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
        snr_shift_scale=3.0, timestep_spacing="trailing",
    )  # fmt: skip
    pipe = CogVideoXPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def _ltx_scheduler():
    """The scheduler of LTX-Video 0.9 and LTX-2: a resolution-dependent shift (mu from the token count)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
        max_image_seq_len=4096, shift_terminal=0.1,
    )  # fmt: skip


def build_tiny_ltx(folder: str | Path, seed: int = 0, *, layers: int = 2, latent_channels: int = 8) -> Path:
    """Write a tiny random LTX-Video T2V pipeline whose VAE has LTX's real strides (32 spatial, 8 temporal:
    a 4x4 pixel patch and three spatio-temporal downsamplings), 8 latent channels, patch 1.

    Transformer after diffusers' `tests/pipelines/ltx/test_ltx.py`."""
    from diffusers import AutoencoderKLLTXVideo, LTXPipeline, LTXVideoTransformer3DModel

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer(TINY_WORDS, max_length=32)
    text_encoder = _tiny_t5(len(tokenizer))
    transformer = LTXVideoTransformer3DModel(
        in_channels=latent_channels, out_channels=latent_channels, patch_size=1, patch_size_t=1, num_attention_heads=4,
        attention_head_dim=8, cross_attention_dim=32, num_layers=layers, caption_channels=32,
    ).eval()  # fmt: skip
    scaling = (True, True, True, False)
    vae = AutoencoderKLLTXVideo(
        latent_channels=latent_channels, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        spatio_temporal_scaling=scaling, decoder_spatio_temporal_scaling=scaling,
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1), patch_size=4,
        patch_size_t=1, encoder_causal=True, decoder_causal=False,
    ).eval()  # fmt: skip
    scheduler = _ltx_scheduler()
    pipe = LTXPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_hunyuan(
    folder: str | Path, seed: int = 0, *, layers: int = 1, latent_channels: int = 4
) -> Path:
    """Write a tiny random HunyuanVideo T2V pipeline: a tiny `LlamaModel` and `CLIPTextModel` with word-level
    tokenizers built in code, a tiny `AutoencoderKLHunyuanVideo` (stride 8 spatial, 4 temporal), a
    guidance-embedding `HunyuanVideoTransformer3DModel` with dual- and single-stream blocks.

    Sizes after diffusers' `tests/pipelines/hunyuan_video/test_hunyuan_video.py`. The word-level Llama
    tokenizer has none of Llama-3's chat tokens, so `setseq.backbones.hunyuan` uses the plain "{}" prompt
    template for it (crop 0), as diffusers' own test does."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer(TINY_WORDS, max_length=256)
    tokenizer_2 = build_word_tokenizer(TINY_WORDS, max_length=77)
    text_encoder = LlamaModel(
        LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=37, num_attention_heads=4,
            num_key_value_heads=4, num_hidden_layers=2, pad_token_id=0, eos_token_id=1, bos_token_id=1,
            max_position_embeddings=512, hidden_act="silu",
        )
    ).eval()  # fmt: skip
    text_encoder_2 = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer_2), hidden_size=8, intermediate_size=37, num_attention_heads=4,
            num_hidden_layers=2, max_position_embeddings=77, pad_token_id=0, eos_token_id=1, bos_token_id=1,
            projection_dim=8, hidden_act="gelu",
        )
    ).eval()  # fmt: skip
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=latent_channels, out_channels=latent_channels, num_attention_heads=2, attention_head_dim=10,
        num_layers=layers,
        num_single_layers=layers, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
    ).eval()  # fmt: skip
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4, up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, act_fn="silu", norm_num_groups=4,
        scaling_factor=0.476986, spatial_compression_ratio=8, temporal_compression_ratio=4,
        mid_block_add_attention=True,
    ).eval()  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    pipe = HunyuanVideoPipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae, scheduler=scheduler,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
    )  # fmt: skip
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_wan_i2v(
    folder: str | Path, seed: int = 0, *, layers: int = 2, heads: int = 2, head_dim: int = 12
) -> Path:
    """Write a tiny random Wan 2.1 I2V pipeline (`WanImageToVideoPipeline`) to `folder`: the tiny Wan T2V
    parts, plus a tiny `CLIPVisionModel` image encoder and a `CLIPImageProcessor` (32x32), both made in code,
    and a DiT that takes the image condition the way Wan 2.1 I2V does: 36 input channels (16 noisy latent +
    4 first-frame mask + 16 condition latent), `image_dim` = the encoder's width, and `added_kv_proj_dim` so
    each block's cross-attention has the image key/value projections (`attn2.add_k_proj` / `add_v_proj`).

    Sizes after diffusers' `tests/pipelines/wan/test_wan_image_to_video.py`."""
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanImageToVideoPipeline,
        WanTransformer3DModel,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
    )

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer(TINY_WORDS)
    text_encoder = tiny_umt5(len(tokenizer))
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()
    image_width = 8  # the CLIP encoder's hidden size: the DiT's image_dim
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=image_width, projection_dim=image_width, num_hidden_layers=2, num_attention_heads=2,
            image_size=32, intermediate_size=16, patch_size=4,
        )
    ).eval()  # fmt: skip
    image_processor = CLIPImageProcessor(crop_size=32, size=32)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=36,
        out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32, image_dim=image_width,
        added_kv_proj_dim=heads * head_dim,
    ).eval()  # fmt: skip
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    pipe = WanImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
        image_processor=image_processor, image_encoder=image_encoder, transformer=transformer,
    )  # fmt: skip
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_ltx2(folder: str | Path, seed: int = 0, *, layers: int = 2, latent_channels: int = 4) -> Path:
    """Write a tiny random LTX-2 T2V pipeline (`LTX2Pipeline`): a tiny `Gemma3ForConditionalGeneration` (its
    config built in code, with a word-level tokenizer), text connectors with learned registers (as LTX-2's), a
    video VAE with LTX-2's real strides (32 spatial, 8 temporal: a 4x4 pixel patch and three spatio-temporal
    downsamplings), and the audio parts (audio VAE, vocoder, the DiT's audio stream) that video-only training
    leaves frozen.

    DiT, connectors, audio VAE and vocoder after diffusers' `tests/pipelines/ltx2/testing_utils.py`; the
    scheduler is LTX-2's (resolution-dependent shift)."""
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        LTX2Pipeline,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer(TINY_WORDS, max_length=32)  # 32 text tokens: 4 x the 8 registers
    text = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=64, sliding_window=16, pad_token_id=0,
        eos_token_id=1, bos_token_id=1,
    )  # fmt: skip
    vision = SiglipVisionConfig(
        hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8
    )  # fmt: skip
    text_encoder = Gemma3ForConditionalGeneration(
        Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4)
    ).eval()
    width = text.hidden_size  # Gemma's width: the connectors' and the DiT's caption channels
    connectors = LTX2TextConnectors(
        caption_channels=width, text_proj_in_factor=text.num_hidden_layers + 1,
        video_connector_num_attention_heads=2, video_connector_attention_head_dim=8, video_connector_num_layers=1,
        video_connector_num_learnable_registers=8, audio_connector_num_attention_heads=2,
        audio_connector_attention_head_dim=8, audio_connector_num_layers=1, audio_connector_num_learnable_registers=8,
        connector_rope_base_seq_len=32, rope_double_precision=False, rope_type="split",
    )  # fmt: skip
    transformer = LTX2VideoTransformer3DModel(
        in_channels=latent_channels, out_channels=latent_channels, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
        audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=layers, caption_channels=width,
        rope_double_precision=False, rope_type="split",
    ).eval()  # fmt: skip
    vae = AutoencoderKLLTX2Video(
        latent_channels=latent_channels, block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8),
        down_block_types=("LTX2VideoDownBlock3D",) * 3, layers_per_block=(1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1), spatio_temporal_scaling=(True, True, True),
        decoder_spatio_temporal_scaling=(True, True, True), decoder_inject_noise=(False,) * 4,
        downsample_type=("spatiotemporal",) * 3, upsample_type=("spatiotemporal",) * 3,
        upsample_residual=(False,) * 3, upsample_factor=(1, 1, 1), patch_size=4, patch_size_t=1,
        encoder_causal=True, decoder_causal=False,
    ).eval()  # fmt: skip
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=None, in_channels=2,
        resolution=32, latent_channels=2, norm_type="pixel", causality_axis="height", dropout=0.0,
        mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=8,
    ).eval()  # fmt: skip
    vocoder = LTX2Vocoder(
        in_channels=audio_vae.config.output_channels * audio_vae.config.mel_bins, hidden_channels=32,
        out_channels=2, upsample_kernel_sizes=[4, 4], upsample_factors=[2, 2], resnet_kernel_sizes=[3],
        resnet_dilations=[[1, 3, 5]], leaky_relu_negative_slope=0.1, output_sampling_rate=16000,
    ).eval()  # fmt: skip
    pipe = LTX2Pipeline(
        scheduler=_ltx_scheduler(), vae=vae, audio_vae=audio_vae, text_encoder=text_encoder, tokenizer=tokenizer,
        connectors=connectors, transformer=transformer, vocoder=vocoder,
    )  # fmt: skip
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


# HunyuanVideo15Pipeline crops this many tokens of its chat template (`prompt_template_encode_start_idx`).
HUNYUAN15_TEMPLATE_TOKENS = 108


def build_tiny_hunyuan15(
    folder: str | Path, seed: int = 0, *, layers: int = 2, latent_channels: int = 4
) -> Path:
    """Write a tiny random HunyuanVideo 1.5 T2V pipeline (`HunyuanVideo15Pipeline`): a tiny
    `Qwen2_5_VLTextModel` with a word-level tokenizer built in code, a tiny ByT5 (`T5EncoderModel`, its
    `ByT5Tokenizer` needs no files), a tiny `AutoencoderKLHunyuanVideo15` with the real strides (16 spatial,
    4 temporal), a text-to-video `HunyuanVideo15Transformer3DModel` (2 x latent + 1 input channels), CFG 6.

    Sizes after diffusers' `tests/pipelines/hunyuan_video1_5/test_hunyuan_1_5.py`. The word-level
    tokenizer's chat template puts the system message in exactly `HUNYUAN15_TEMPLATE_TOKENS` tokens, the
    prefix the pipeline crops (Qwen2.5's real template is that long too), then the prompt and an end token.
    The last VAE level is 64 wide so that its channel grouping (width / 2 x latent channels) is whole for
    the real 32 latent channels too (`setseq bench --shape hunyuan-1.5` builds its VAE here)."""
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        ClassifierFreeGuidance,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15Pipeline,
        HunyuanVideo15Transformer3DModel,
    )
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer(TINY_WORDS, max_length=2048)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        f"{{{{ 'the ' * {HUNYUAN15_TEMPLATE_TOKENS} }}}}"
        "{% else %}{{ m['content'] }} </s>{% endif %}{% endfor %}"
    )
    text_encoder = Qwen2_5_VLTextModel(
        Qwen2_5_VLTextConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=16, num_hidden_layers=3, bos_token_id=1,
            num_attention_heads=2, num_key_value_heads=2, pad_token_id=0, eos_token_id=1, rope_theta=1e6,
            rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
        )
    ).eval()  # fmt: skip
    tokenizer_2 = ByT5Tokenizer()
    text_encoder_2 = _tiny_t5(len(tokenizer_2), d_model=8)
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=2 * latent_channels + 1, out_channels=latent_channels, num_attention_heads=2,
        attention_head_dim=8, num_layers=layers, num_refiner_layers=1, mlp_ratio=2.0, patch_size=1,
        patch_size_t=1, text_embed_dim=16, text_embed_2_dim=8, image_embed_dim=12, rope_axes_dim=(2, 2, 4),
        target_size=32, task_type="t2v",
    ).eval()  # fmt: skip
    vae = AutoencoderKLHunyuanVideo15(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 8, 8, 64),
        layers_per_block=1, spatial_compression_ratio=16, temporal_compression_ratio=4,
        downsample_match_channel=False, upsample_match_channel=False,
    ).eval()  # fmt: skip
    pipe = HunyuanVideo15Pipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2, guider=ClassifierFreeGuidance(guidance_scale=6.0),
    )  # fmt: skip
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


# Words the tiny Grounding DINO's tokenizer knows: the toy world's shapes and a few subjects.
SEGMENT_WORDS = (
    "a the person dog cat ball cube star diamond ring heart circle square triangle red cyan pink blue green ."
).split()


def build_tiny_grounding_dino(folder: str | Path, seed: int = 0, size: int = 64) -> Path:
    """A random-weight Grounding DINO (`GroundingDinoForObjectDetection`: tiny Swin, tiny BERT) with its
    processor (the PIL image processor, a word-level BERT tokenizer), saved to `folder` as a hub checkpoint
    is: `from_pretrained(folder)` loads it the same way. Its boxes and scores are random but fixed by
    `seed`; a test picks `threshold` 0 (every box passes) or 1 (none does)."""
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        SwinConfig,
    )
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
