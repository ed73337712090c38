"""Break-A-Scene's cross-attention loss (`stageN.attention_loss`, issue #29): what it computes, where its
gradient goes, where it reads the concept token, and one-line refusals."""

from __future__ import annotations

import types

import pytest
import torch

from setseq import lora as L
from setseq.backbones.base import Backbone
from setseq.errors import SetseqError
from setseq.functional.regularizers import attention_mask_loss, concept_attention
from setseq.train import attention as A
from setseq.train.loop import Batch, denoising_loss, step_generator
from setseq.train.run import train
from tests.helpers import cyan_demo_config


def _toy_with_lora():
    from setseq.backbones.registry import load_backbone

    bb = load_backbone("toy", "toy", torch.device("cpu"), torch.float32)
    L.inject(bb.transformer, L.LoraSpec(4, 4.0, "down", tuple(bb.info.lora_targets)), seed=0)
    with torch.no_grad():
        for layer in L.get_layers(bb.transformer).values():
            layer.up.normal_(0, 0.05)  # a trained LoRA: it changes the attention
    return bb


def test_the_map_is_the_softmax_torch_attention_computes():
    # Each text position's column of the attention, read through torch's own attention with one-hot values.
    g = torch.Generator().manual_seed(0)
    b, n, length, heads, d = 2, 12, 5, 3, 4
    q, k = torch.randn(b, n, heads * d, generator=g), torch.randn(b, length, heads * d, generator=g)
    qh, kh = (t.unflatten(-1, (heads, d)).transpose(1, 2) for t in (q, k))  # (B, H, *, d)
    onehot = torch.eye(length).expand(b, heads, length, length)
    probs = torch.nn.functional.scaled_dot_product_attention(qh, kh, onehot).mean(1)  # (B, N, L)
    positions = [[1], [0, 3]]  # one token; a word split into two tokens
    got = concept_attention(q, k, heads, positions)
    want = torch.stack([probs[0, :, 1], probs[1, :, 0] + probs[1, :, 3]])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    every = concept_attention(q, k, heads, [list(range(length))] * b)
    torch.testing.assert_close(every, torch.ones(b, n))


def test_the_mask_loss_scales_each_frame_and_skips_frames_without_the_subject():
    subject = torch.zeros(1, 2, 2, 2)  # (B, f, h, w): the subject in frame 0 only
    subject[0, 0, 0, 0] = 1.0
    grid = (2, 2, 2)
    exact = subject.clone().reshape(1, -1) * 0.3  # the subject's own shape, at any scale
    exact[0, 4:] = torch.tensor([0.9, 0.1, 0.2, 0.3])  # frame 1: anything, as it has no subject
    assert float(attention_mask_loss(exact, subject, grid)) == 0.0
    flat = torch.full(
        (1, 8), 0.25
    )  # the same weight everywhere: scaled to 1, wrong on 3 of frame 0's 4 tokens
    assert float(attention_mask_loss(flat, subject, grid)) == pytest.approx(3 / 4)


def test_positions_come_from_the_tokenizer_and_follow_a_split_word():
    bb = _toy_with_lora()
    assert bb.token_positions("a sks diamond", "sks") == [1]
    assert bb.token_positions("a sks diamond on a blue background, sks", "sks") == [1, 8]
    assert bb.token_positions("a sksx diamond", "sks") == []  # a word that only starts with it

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", "a", "s", "##k", "##s", "diamond"])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    split = types.SimpleNamespace(
        tokenizer=PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]"),
        info=types.SimpleNamespace(name="split"),
    )
    # "sks" -> s ##k ##s: all three pieces, and nothing of the words around it
    assert Backbone.token_positions(split, "a sks diamond", "sks") == [1, 2, 3]  # type: ignore[arg-type]


def _batch(bb, weight: float):
    with torch.no_grad():
        lat = bb.encode_video(torch.rand(1, 9, 3, 32, 32) * 2 - 1)  # a clip: (1, C, 9, 8, 8)
    lat = lat.expand(2, *lat.shape[1:])
    texts = ["a sks diamond in zwx motion", "a sks diamond in zwx motion"]
    subject = torch.zeros(2, 1, *lat.shape[2:])
    subject[..., 2:6, 2:6] = 1.0
    batch = Batch(lat, bb.encode_prompt(texts), texts=list(texts))
    batch.attention_subject, batch.attention_weight = subject, weight
    return batch


def test_the_loss_adds_the_forwards_map_and_its_gradient_reaches_the_cross_attention():
    bb = _toy_with_lora()
    model = bb.transformer
    params = L.set_stage(model, 1, 0.0)
    loss_fn = A.AttentionLoss(bb, bb.cross_attention(), "sks")
    seen = []
    real = loss_fn.loss
    loss_fn.loss = lambda kept, *a: seen.append({i: len(v) for i, v in kept.items()}) or real(kept, *a)
    gen = lambda: step_generator(0, 2, 0)  # noqa: E731
    # self-conditioning on: its gradient-free forward must not be read
    plain = denoising_loss(bb, _batch(bb, 0.0), gen(), 0.0, 1.0)
    tied = denoising_loss(bb, _batch(bb, 0.5), gen(), 0.0, 1.0, attention=loss_fn)
    assert seen == [{0: 2, 1: 2, 2: 2, 3: 2}]  # one query and one key of each layer
    assert tied.item() > plain.item()
    assert all(not layer.norm_q._forward_hooks for layer in loss_fn.site.layers)  # the hooks are gone

    # the attention term alone: a gradient on cross-attention's query and key LoRA layers
    for p in params:
        p.grad = None
    (tied - plain.detach()).backward()  # (the denoising part's gradient is the same in both)
    names = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(".attn2.to_q." in n for n in names) and any(".attn2.to_k." in n for n in names)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    """The hooks read the forward that diffusers' (non-reentrant) checkpointing runs; the backward recomputes
    each block with the hooks gone, so loss and gradients equal those without checkpointing."""

    blocks_checkpointed = []

    def run(checkpointing: bool):
        torch.manual_seed(0)
        bb = _toy_with_lora()
        if checkpointing:
            bb.enable_gradient_checkpointing()
            real = bb.transformer._gradient_checkpointing_func
            bb.transformer._gradient_checkpointing_func = lambda *a: blocks_checkpointed.append(1) or real(*a)
        bb.transformer.train()
        L.set_stage(bb.transformer, 1, 0.0)
        loss_fn = A.AttentionLoss(bb, bb.cross_attention(), "sks")
        loss = denoising_loss(bb, _batch(bb, 0.5), step_generator(0, 2, 0), 0.0, 1.0, attention=loss_fn)
        loss.backward()
        grads = {n: p.grad for n, p in bb.transformer.named_parameters() if p.grad is not None}
        return loss.detach(), grads

    plain, g_plain = run(False)
    ckpt, g_ckpt = run(True)
    assert len(blocks_checkpointed) == 4  # each of the toy DiT's blocks, once
    assert torch.allclose(ckpt, plain, rtol=1e-5)
    assert g_plain.keys() == g_ckpt.keys() and any(".attn2.to_q." in n for n in g_plain)
    for n, g in g_plain.items():
        assert (g_ckpt[n] - g).norm() <= 1e-4 * g.norm() + 1e-12, n


def test_a_run_trains_with_it_in_both_stages(tmp_path, monkeypatch):
    shapes = []
    real = A.attention_mask_loss
    monkeypatch.setattr(A, "attention_mask_loss", lambda m, s, g: shapes.append(g) or real(m, s, g))
    cfg = cyan_demo_config(
        tmp_path,
        "stage1.steps=1",
        "stage2.steps=1",
        "stage1.attention_loss=0.01",
        "stage2.attention_loss=0.01",
    )
    run = train(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    assert (run / "setseq.safetensors").is_file()
    assert shapes and shapes[0][0] == 1 and shapes[-1][0] == 9  # a frame (stage 1), the clip (stage 2)


def test_refusals_are_one_line(tmp_path):
    def refused(msg, *overrides, mask=True):
        cfg = cyan_demo_config(
            tmp_path, "stage1.background_swap=0", "stage2.background_swap=0", *overrides, mask=mask
        )
        with pytest.raises(SetseqError, match=msg) as e:
            train(cfg, tmp_path / "bad", progress=False, log=lambda s: None)
        assert "\n" not in str(e.value).strip()
        assert not (tmp_path / "bad").exists()

    refused("stage1.attention_loss=0.01 needs a subject mask", "stage1.attention_loss=0.01", mask=False)
    refused("cannot use a subject mask", "stage1.attention_loss=0.01", "method=dreambooth")

    bb = _toy_with_lora()
    joint = types.SimpleNamespace(cross_attention=lambda: None, info=types.SimpleNamespace(name="cogvideox"))
    cfg = cyan_demo_config(tmp_path, "stage1.attention_loss=0.01")
    with pytest.raises(SetseqError, match="the cogvideox DiT attends to both at once"):
        A.AttentionLoss.for_run(cfg, joint)  # type: ignore[arg-type]
    loss_fn = A.AttentionLoss(bb, bb.cross_attention(), "sks")
    with pytest.raises(SetseqError, match="does not find it there"):
        loss_fn.positions("a diamond in zwx motion")
