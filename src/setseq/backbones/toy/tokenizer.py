"""The toy model's text side: a word-level vocabulary built in code, and its tokenizer.

The vocabulary is the synthetic caption vocabulary plus rare identifier tokens ("sks", "zwx", ...) that never
appear in pre-training captions, plus the generic words of the recipes' prompts.
"""

from __future__ import annotations

from setseq.data.synthetic import caption_words

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
# Rare identifier tokens for personalization ("a sks circle ... in zwx motion"): in the vocabulary, never in
# pre-training captions, so their embeddings carry no prior meaning.
IDENTIFIER_TOKENS = ("sks", "zwx", "qrv", "vkt", "pqm")
# Prompt words of the recipes (T_static / T_motion, prior prompts) that the caption grammar may not contain.
GENERIC_WORDS = (
    "a", "an", "the", "in", "on", "of", "with", "and", "at", "over", "is", "it", "its", "this", "that",
    "motion", "moving", "moves", "person", "man", "woman", "object", "thing", "shape", "sprite", "video",
    "scene", "background", "style", "camera", "static", "still", "slow", "fast", "slowly", "quickly",
    "left", "right", "up", "down", "around", "dance", "dancing", "walk", "walking", "jump", "jumping",
    "spin", "spinning", "bounce", "bouncing", "two", "one", "together", "beside", "next", "to",
)  # fmt: skip


def toy_vocabulary(words: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """Special tokens first (`<pad>`=0, `</s>`=1, `<unk>`=2, the UMT5 convention), then sorted lowercase words.

    `words` defaults to the synthetic caption vocabulary (`setseq.data.synthetic.caption_words()`)."""
    if words is None:
        words = caption_words()
    vocab = {w.lower() for w in words} | set(IDENTIFIER_TOKENS) | set(GENERIC_WORDS)
    vocab -= {PAD, EOS, UNK, ""}
    return [PAD, EOS, UNK, *sorted(vocab)]


def build_tokenizer(vocab: list[str]):
    """Word-level tokenizer: lowercase, split on whitespace and punctuation, unknown words -> `<unk>`, `</s>` appended."""
    # (heavy to import: loaded where used)
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(vocab)}, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = (
        pre_tokenizers.Whitespace()
    )  # \w+ | [^\w\s]+ : punctuation becomes its own (unknown) word
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", special_tokens=[(EOS, vocab.index(EOS))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK)
