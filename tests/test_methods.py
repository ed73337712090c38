"""The paper's regularizers beyond DropConnect (self-conditioning, prior preservation) and the baselines as
training modes: each changes the loss or the batch exactly as specified, and trains only what it should."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from setseq.backbones.base import Backbone, BackboneInfo
from setseq.config import METHODS
from setseq.config_load import resolve_config
from setseq.errors import SetseqError
from setseq.functional import flow_matching as fm
from setseq.prompts import PromptEmbeds
from setseq.train.loop import Batch, denoising_loss, with_prior
from setseq.train.methods import effective_config

TOY_OVERRIDES = [
    "lora.rank=4",
    "stage1.steps=2",
    "stage2.steps=2",
    "stage1.batch_size=2",
    "stage2.batch_size=2",
    "train.tensorboard=false",
    "stage1.lr=1e-2",
    "stage2.lr=1e-2",
    "stage1.grad_clip=1.0",
    "stage2.grad_clip=1.0",
    "concept.class_word=square",
]


class RecordingBackbone(Backbone):
    """A flow-matching backbone whose DiT is a fixed linear map; it records what `predict` received (the
    protocol's defaults for the rest: flow matching's `noisy` and `training_target`)."""

    def __init__(self, self_cond: bool = True) -> None:
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.info = BackboneInfo("rec", "rec", "0", 8, 8, 1, 4, 8, supports_self_conditioning=self_cond)
        self.calls: list[torch.Tensor | None] = []

    def sample_sigmas(self, batch: int, generator=None, between=None) -> torch.Tensor:
        return torch.rand(batch, generator=generator).clamp(0.05, 0.95)

    def predict(self, noisy, sigmas, prompt, self_cond=None):
        self.calls.append(None if self_cond is None else self_cond.clone())
        out = 0.5 * noisy
        return out if self_cond is None else out + 0.1 * self_cond


def _prompt(n: int) -> PromptEmbeds:
    return PromptEmbeds(torch.ones(n, 3, 4), torch.ones(n, 3, dtype=torch.bool))


def test_self_conditioning_feeds_the_models_own_estimate_to_about_p_of_samples():
    bb = RecordingBackbone()
    x0 = torch.randn(4000, 2, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    denoising_loss(bb, Batch(x0, _prompt(4000)), torch.Generator().manual_seed(1), 0.0, 0.9)
    assert len(bb.calls) == 2 and bb.calls[0] is None  # a gradient-free pass, then the trained one
    sc = bb.calls[1]
    used = sc.flatten(1).abs().sum(1) > 0
    assert 0.88 < used.float().mean().item() < 0.92
    # what was fed is the x0 estimate of the first pass, x_sigma - sigma * v
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(x0.shape, generator=gen)
    sigmas = bb.sample_sigmas(4000, generator=gen)
    noisy = fm.interpolate(x0, noise, sigmas)
    estimate = fm.x0_from_velocity(noisy, 0.5 * noisy, sigmas)
    assert torch.allclose(sc[used], estimate[used], atol=1e-6)


def test_without_self_conditioning_there_is_one_pass_and_no_input():
    bb = RecordingBackbone()
    x0 = torch.randn(8, 2, 1, 2, 2)
    denoising_loss(bb, Batch(x0, _prompt(8)), torch.Generator().manual_seed(1), 0.0, 0.0)
    assert bb.calls == [None]


def test_self_conditioning_default_follows_the_backbone_flag_and_refuses_where_missing():
    from setseq.train.setup import self_conditioning_p

    cfg = resolve_config(None, None, [])
    assert self_conditioning_p(cfg, RecordingBackbone(True)) == 0.9
    assert self_conditioning_p(cfg, RecordingBackbone(False)) == 0.0
    cfg = resolve_config(None, None, ["regularizers.self_conditioning=0.9"])
    with pytest.raises(SetseqError, match="no self-conditioning input") as err:
        self_conditioning_p(cfg, RecordingBackbone(False))
    assert "regularizers.self_conditioning=0" in str(err.value) and "\n" not in str(err.value)


def test_prior_samples_are_weighted_as_configured():
    x = torch.randn(6, 2, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    target = torch.zeros_like(x)
    main, prior = Batch(x[:2], _prompt(2)), x[2:]
    batch = with_prior(main, prior, _prompt(4), weight=0.5)
    assert batch.latents.shape[0] == 6 and batch.prompt.embeds.shape[0] == 6
    loss = fm.regression_loss(batch.latents, target, batch.weights)
    expect = fm.regression_loss(x[:2], target[:2]) + 0.5 * fm.regression_loss(x[2:], target[2:])
    assert torch.allclose(loss, expect, atol=1e-6)


def test_effective_config_of_each_method():
    cfg = resolve_config(None, None, ["stage1.steps=10", "stage2.steps=20", "regularizers.prior_videos=2"])
    assert set(METHODS) == {"setseq", "dreambooth", "lora1", "two_stage", "dreammix", "textual_inversion"}
    assert effective_config(cfg) is cfg
    db = effective_config(
        resolve_config(None, None, ["method=dreambooth", "stage1.steps=10", "stage2.steps=20"])
    )
    assert (db.stage1.steps, db.stage2.steps, db.stage1.dropconnect, db.regularizers.token_mask) == (
        30,
        0,
        0.0,
        0.0,
    )
    l1 = effective_config(resolve_config(None, None, ["method=lora1"]))
    assert (l1.lora.rank, l1.lora.scale_alpha) == (1, 1.0)
    ts = effective_config(resolve_config(None, None, ["method=two_stage", "regularizers.prior_videos=3"]))
    assert (ts.stage1.dropconnect, ts.stage2.dropconnect, ts.regularizers.token_mask) == (0.0, 0.0, 0.0)
    assert (ts.regularizers.self_conditioning, ts.regularizers.prior_videos) == (0.0, 0)
    with pytest.raises(SetseqError, match="method must be one of"):
        resolve_config(None, None, ["method=magic"])


@pytest.fixture(scope="module")
def toy_video(tmp_path_factory):
    from setseq.data import synthetic as S
    from setseq.data.video import write_video

    spec = S.CONCEPTS[sorted(S.CONCEPTS)[0]]
    path = tmp_path_factory.mktemp("toyvid") / "concept.mp4"
    write_video(path, S.render(spec, frames=9, size=32, seed=0), fps=8.0)
    return path


def _train(tiny_toy_dir, toy_video, out, extra):
    from setseq.train.run import train

    flags = {"model": {"backbone": "toy", "path": str(tiny_toy_dir)}, "data": {"video": str(toy_video)}}
    cfg = resolve_config(None, flags, TOY_OVERRIDES + list(extra))
    return train(cfg, out, progress=False, log=lambda s: None)


def _parts(run):
    t = load_file(str(run / "setseq.safetensors"))
    ident = [v for k, v in t.items() if ".motion." not in k]
    motion = [v for k, v in t.items() if ".motion." in k]
    return ident, motion


@pytest.mark.parametrize("method", ["dreambooth", "lora1", "dreammix"])
def test_one_stage_baselines_train_only_the_identity_lora(tiny_toy_dir, toy_video, tmp_path, method):
    run = _train(tiny_toy_dir, toy_video, tmp_path / method, [f"method={method}"])
    ident, motion = _parts(run)
    assert motion and all(torch.count_nonzero(m) == 0 for m in motion)  # no stage 2
    assert any(torch.count_nonzero(v) > 0 for v in ident)
    ranks = {min(v.shape) for v in ident}
    assert ranks == ({1} if method == "lora1" else {4})
    steps = [line for line in (run / "logs" / "loss.jsonl").read_text().splitlines()]
    assert len(steps) == 4  # stage 1 ran the steps of both stages


def test_setseq_and_two_stage_train_the_motion_residual(tiny_toy_dir, toy_video, tmp_path):
    for method in ("setseq", "two_stage"):
        _, motion = _parts(_train(tiny_toy_dir, toy_video, tmp_path / method, [f"method={method}"]))
        assert any(torch.count_nonzero(m) > 0 for m in motion), method


def test_prior_videos_are_generated_once_and_the_batch_comes_from_the_cache(
    tiny_toy_dir, toy_video, tmp_path
):
    from setseq.backbones.toy import load_toy
    from setseq.train.prior import prepare_prior

    cfg = resolve_config(
        None,
        {"model": {"backbone": "toy", "path": str(tiny_toy_dir)}},
        TOY_OVERRIDES + ["regularizers.prior_videos=2", "regularizers.prior_steps=2"],
    )
    bb = load_toy(str(tiny_toy_dir))
    first = prepare_prior(cfg, bb, 9, 32, 32, tmp_path, log=lambda s: None, progress=False)
    assert first.clip_latents.shape == (2, 8, 9, 8, 8) and first.set_latents.shape == (18, 8, 1, 8, 8)
    assert len(list(tmp_path.glob("prior-*.safetensors"))) == 1

    def no_generation(*a, **k):
        raise AssertionError("the prior was generated again instead of read from the cache")

    bb.generate = no_generation
    again = prepare_prior(cfg, bb, 9, 32, 32, tmp_path, log=lambda s: None, progress=False)
    assert torch.equal(again.set_latents, first.set_latents) and torch.equal(
        again.clip_latents, first.clip_latents
    )
    lat, prompt = again.frames(5, torch.Generator().manual_seed(0))
    assert lat.shape == (5, 8, 1, 8, 8) and prompt.embeds.shape[0] == 5
    assert all(
        any(torch.equal(x, y) for y in first.set_latents) for x in lat
    )  # every sample is a cached frame
    # a cache file made for other settings is refused, never reused
    other = resolve_config(
        None, None, TOY_OVERRIDES + ["regularizers.prior_videos=1", "regularizers.prior_steps=2"]
    )
    bb.generate = lambda *a, **k: torch.zeros(9, 3, 32, 32)
    prepare_prior(other, bb, 9, 32, 32, tmp_path, log=lambda s: None, progress=False)
    a, b = sorted(tmp_path.glob("prior-*.safetensors"), key=lambda f: f.stat().st_mtime)
    b.write_bytes(a.read_bytes())
    with pytest.raises(SetseqError, match="stale"):
        prepare_prior(other, bb, 9, 32, 32, tmp_path, progress=False)


def test_training_with_prior_preservation_runs_and_logs_it(tiny_toy_dir, toy_video, tmp_path):
    lines: list[str] = []
    from setseq.train.run import train

    flags = {"model": {"backbone": "toy", "path": str(tiny_toy_dir)}, "data": {"video": str(toy_video)}}
    cfg = resolve_config(
        None, flags, TOY_OVERRIDES + ["regularizers.prior_videos=2", "regularizers.prior_steps=2"]
    )
    train(cfg, tmp_path / "run", progress=False, log=lines.append)
    assert any("prior preservation 2 videos" in s for s in lines)
    assert any("self-conditioning 0.9" in s for s in lines)
    assert list((tmp_path / "run" / "cache").glob("prior-*.safetensors"))


# -- concept-token embeddings (textual inversion) ---------------------------------------------------------


def test_token_embedding_offsets_touch_only_their_tokens(tiny_toy_dir):
    from setseq.backbones.toy import load_toy
    from setseq.train.embeddings import TokenEmbeddings

    bb = load_toy(str(tiny_toy_dir))
    before = bb.encode_prompt(["a sks star in zwx motion", "a red star"]).embeds
    emb = TokenEmbeddings(bb, ["sks", "zwx"], lr=1e-3)
    with torch.no_grad():
        emb.delta[0] = 1.0
    after = bb.encode_prompt(["a sks star in zwx motion", "a red star"]).embeds
    assert not torch.allclose(after[0], before[0])  # the prompt with the token changes
    assert torch.allclose(after[1], before[1], atol=1e-6)  # a prompt without it does not
    emb.train_rows([1])
    loss = bb.encode_prompt(["a sks star in zwx motion"]).embeds.pow(2).sum()
    loss.backward()
    assert emb.delta.grad[0].abs().sum() == 0 and emb.delta.grad[1].abs().sum() > 0
    emb.remove()
    assert torch.allclose(
        bb.encode_prompt(["a sks star in zwx motion", "a red star"]).embeds, before, atol=1e-6
    )


def test_textual_inversion_trains_only_the_embeddings_and_saves_diffusers_files(
    tiny_toy_dir, toy_video, tmp_path
):
    from setseq.backbones.toy import load_toy
    from setseq.infer.generate import Personalized

    run = _train(tiny_toy_dir, toy_video, tmp_path / "ti", ["method=textual_inversion"])
    ident, motion = _parts(run)
    ups = [v for k, v in load_file(str(run / "setseq.safetensors")).items() if k.endswith("identity.up")]
    assert ups and all(torch.count_nonzero(u) == 0 for u in ups)  # the LoRA never trained (zero update)
    assert all(torch.count_nonzero(m) == 0 for m in motion)
    table = load_toy(str(tiny_toy_dir)).text_encoder.get_input_embeddings().weight
    tok = load_toy(str(tiny_toy_dir)).tokenizer
    for token in ("sks", "zwx"):
        f = load_file(str(run / f"embedding_{token}.safetensors"))
        assert list(f) == [token] and f[token].shape == (table.shape[1],)  # diffusers' single-token layout
        row = table[tok.convert_tokens_to_ids(token)]
        assert not torch.allclose(f[token], row)  # learned
    lines = []
    pm = Personalized.load(run, log=lines.append)
    assert any("token embeddings: sks, zwx" in s for s in lines)
    set_row = pm.backbone.text_encoder.get_input_embeddings().weight[tok.convert_tokens_to_ids("sks")]
    assert torch.allclose(set_row, load_file(str(run / "embedding_sks.safetensors"))["sks"])


def test_optional_embeddings_learn_the_token_in_stage_1_and_the_motion_token_in_stage_2(
    tiny_toy_dir, toy_video, tmp_path
):
    from setseq.train.embeddings import DELTA_KEY

    run = _train(
        tiny_toy_dir,
        toy_video,
        tmp_path / "emb",
        [
            "concept.train_embedding=true",
            "concept.embedding_lr=1e-2",
            "train.checkpoint_every=1",
            "train.keep_checkpoints=10",
        ],
    )
    d1 = load_file(str(run / "checkpoints" / "stage1-000002" / "lora.safetensors"))[DELTA_KEY]
    d2 = load_file(str(run / "checkpoints" / "stage2-000002" / "lora.safetensors"))[DELTA_KEY]
    assert d1[0].abs().sum() > 0 and d1[1].abs().sum() == 0  # stage 1: the appearance token only
    assert torch.equal(d2[0], d1[0]) and d2[1].abs().sum() > 0  # stage 2: the motion token only
    assert (run / "embedding_sks.safetensors").is_file() and (run / "embedding_zwx.safetensors").is_file()


def test_embedding_training_refuses_a_token_the_tokenizer_does_not_know(tiny_toy_dir, toy_video, tmp_path):
    with pytest.raises(SetseqError, match="'blorp' is unknown to this tokenizer"):
        _train(
            tiny_toy_dir, toy_video, tmp_path / "x", ["concept.train_embedding=true", "concept.token=blorp"]
        )
