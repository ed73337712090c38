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


def build_tiny_wan(
    folder: str | Path, seed: int = 0, *, layers: int = 2, heads: int = 2, head_dim: int = 12
) -> Path:
    """Write a tiny random Wan 2.1-style T2V pipeline to `folder` (diffusers layout, safetensors)."""
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
    transformer = WanTransformer3DModel(
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
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
