"""The pieces every family's tiny test model shares (each family file holds its own `build_tiny_*`): a word-level
tokenizer built in code and tiny text encoders, random weights, no download. For tests, benchmarks and CI.
tokenizers and transformers are imported inside: they take seconds, and only tests and benchmarks build these."""

from __future__ import annotations

TINY_WORDS = (
    "a an the in on of with and is are at to his her their motion person man woman dog cat car bonfire "
    "dancing walking running jumping spinning waving beach park city street forest room studio snow night "
    "red green blue yellow white black orange purple pink shirt hat glass holding wearing static camera "
    "slow fast pan zoom left right up down sks zwx qrv video photo style cinematic , ."
).split()


def build_word_tokenizer(words: list[str] | tuple[str, ...], max_length: int = 64):
    """A word-level `PreTrainedTokenizerFast` (pad <pad>, eos </s>, unk <unk>), built in code."""
    # (heavy to import: loaded where used)
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
    # (heavy to import: loaded where used)
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(
        UMT5Config(
            vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
        )
    ).eval()  # fmt: skip


def tiny_t5(vocab_size: int, d_model: int = 32):
    # (heavy to import: loaded where used)
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        )
    ).eval()  # fmt: skip
