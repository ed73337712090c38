"""Image-to-video on a tiny random Wan 2.1 I2V pipeline built from config (`setseq.backbones.wan.build_tiny_wan_i2v`):
`setseq generate RUN --model I2V --image PNG`, with and without a run's LoRA, and every bad `--image` refused in
one line with nothing written.

A random DiT does not copy its image, so "the first frame follows the image" is checked on a hand-set DiT whose
velocity is `x_t - c` (c: the image condition the pipeline builds): sampling then lands near c, provided setseq
hands the image to the pipeline at the right size and place. The tiny random VAE decodes every latent to nearly
the same pixels, so the check is on the latents the pipeline decodes: their first frame must be nearer the latent
of the image than that of another image. Every other weight keeps the random model's structure, so the LoRA
still acts (through attn2).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from setseq.backbones.registry import guess_backbone, load_backbone
from setseq.cli import main
from setseq.errors import SetseqError
from setseq.infer.generate import GenerateOptions, Personalized

HEADS, HEAD_DIM = 2, 72  # inner width 144: room for the hand-set DiT (2 x 64 patch values + 2)
SIZE, FRAMES = 32, 9


def _copying_dit(transformer: torch.nn.Module, k: float = 1e4, rate: float = 4.0) -> None:
    """Set the tiny I2V DiT's weights so that it predicts the velocity rate * (x_t - c) for every latent value
    (sampled in 10 steps, the latents end at c; rate 1 leaves e^-1 of the noise, 16 diverges), c being
    the condition latent in input channels 20..35. Timestep embeddings and every block's gates are zero (the
    blocks add nothing but attn2, whose output projection is zero too); the patch embedding writes x_t - c, its
    negative and a constant pair (+k, -k) so the final LayerNorm only divides by a constant (k sqrt(2/D));
    `proj_out` multiplies that back (times `rate`)."""
    cfg = transformer.config
    d = cfg.num_attention_heads * cfg.attention_head_dim
    c = cfg.out_channels
    pt, ph, pw = cfg.patch_size
    n = c * pt * ph * pw  # values per patch token, in proj_out's order ((ph * pw_n + pw) * c + channel)
    assert 2 * n + 2 <= d
    with torch.no_grad():
        ce = transformer.condition_embedder
        for lin in (ce.time_embedder.linear_2, ce.time_proj):
            lin.weight.zero_()
            lin.bias.zero_()
        transformer.scale_shift_table.zero_()
        for block in transformer.blocks:
            block.scale_shift_table.zero_()
            block.attn2.to_out[0].weight.zero_()
            block.attn2.to_out[0].bias.zero_()
        w = transformer.patch_embedding.weight  # (D, 36, pt, ph, pw)
        w.zero_()
        bias = transformer.patch_embedding.bias
        bias.zero_()
        for y in range(ph):
            for x in range(pw):
                for ch in range(c):
                    u = (y * pw + x) * c + ch
                    w[u, ch, 0, y, x] = 1.0  # x_t
                    w[u, c + 4 + ch, 0, y, x] = -1.0  # - c (after the 4 mask channels)
                    w[n + u] = -w[u]
        bias[2 * n], bias[2 * n + 1] = k, -k
        transformer.proj_out.weight.zero_()
        transformer.proj_out.bias.zero_()
        transformer.proj_out.weight[:n, :n] = torch.eye(n) * rate * k * math.sqrt(2.0 / d)


@pytest.fixture(scope="module")
def i2v_dir(tmp_path_factory):
    from setseq.backbones.wan import build_tiny_wan_i2v

    return build_tiny_wan_i2v(tmp_path_factory.mktemp("tiny_i2v") / "model", heads=HEADS, head_dim=HEAD_DIM)


@pytest.fixture(scope="module")
def copying_dir(i2v_dir, tmp_path_factory):
    """The tiny I2V checkpoint with the hand-set DiT of `_copying_dit`."""
    import shutil

    from diffusers import WanTransformer3DModel

    out = tmp_path_factory.mktemp("copying") / "model"
    shutil.copytree(i2v_dir, out)
    tr = WanTransformer3DModel.from_pretrained(out / "transformer")
    _copying_dit(tr)
    tr.save_pretrained(out / "transformer", safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def t2v_run(tmp_path_factory):
    """A run trained (2 + 2 steps) on the tiny T2V Wan of the I2V model's size: the LoRA users bring to I2V."""
    from setseq.backbones.wan import build_tiny_wan
    from setseq.config_load import resolve_config
    from setseq.data.video import write_video
    from setseq.train.run import train
    from tests.helpers import TINY_TRAINING, moving_square_video

    root = tmp_path_factory.mktemp("i2v_run")
    model = build_tiny_wan(root / "t2v", heads=HEADS, head_dim=HEAD_DIM)
    video = root / "clip.mp4"
    write_video(video, moving_square_video(13, (40, 48)), fps=8)
    flags = {
        "model": {"backbone": "wan", "path": str(model)},
        "data": {"video": str(video), "frames": FRAMES, "size": [SIZE, SIZE]},
    }
    train(resolve_config(None, flags, TINY_TRAINING), root / "run", progress=False, log=lambda s: None)
    return root / "run"


def _png(path, colour, size=(48, 40), square=None) -> np.ndarray:
    """Write a (H, W) = size[::-1] PNG of one colour (with an optional white square); returns its pixels."""
    img = np.zeros((size[1], size[0], 3), np.uint8)
    img[:] = colour
    if square is not None:
        y, x = square
        img[y : y + 12, x : x + 12] = 255
    Image.fromarray(img).save(path)
    return img


def _image_latent(bb, image: np.ndarray) -> torch.Tensor:
    """The normalised latent of `image` as the first frame of the pipeline's condition video, (C, h, w)."""
    from setseq.data.video import resize_center_crop, to_tensor

    first = to_tensor(resize_center_crop(image, (SIZE, SIZE))[None])  # (1, 3, H, W)
    video = torch.cat([first, torch.zeros(FRAMES - 1, 3, SIZE, SIZE)])[None]  # image then zero frames
    return bb.encode_video(video)[0, :, 0]


def _generate_latents(
    pm: Personalized, prompt: str, opts: GenerateOptions
) -> tuple[torch.Tensor, torch.Tensor]:
    """(video, normalised latents (C, f, h, w) the pipeline decoded it from)."""
    vae, seen = pm.backbone.pipe.vae, []
    decode = vae.decode

    def spy(z, *args, **kwargs):
        seen.append(z.detach().float().cpu())
        return decode(z, *args, **kwargs)

    vae.decode = spy
    try:
        video = pm.generate(prompt, opts)
    finally:
        vae.decode = decode
    bb = pm.backbone
    return video, ((seen[-1] - bb.latents_mean) / bb.latents_std)[0]


def _follows(latents: torch.Tensor, own: torch.Tensor, other: torch.Tensor) -> bool:
    near, far = (latents[:, 0] - own).pow(2).mean(), (latents[:, 0] - other).pow(2).mean()
    return bool(near < 0.1 * far)


def test_i2v_folder_is_recognised(i2v_dir):
    index = json.loads((i2v_dir / "model_index.json").read_text())
    assert index["_class_name"] == "WanImageToVideoPipeline"
    assert index["image_encoder"][1] == "CLIPVisionModel"
    assert guess_backbone(str(i2v_dir)) == "wan"
    bb = load_backbone("wan", str(i2v_dir))
    assert type(bb.pipe).__name__ == "WanImageToVideoPipeline" and bb.info.image == "required"
    tr = bb.transformer
    assert tr.config.in_channels == 36 and tr.config.image_dim == 8
    assert "blocks.0.attn2.add_k_proj" in {n for n, _ in tr.named_modules()}


def test_first_frame_follows_the_image(copying_dir, tmp_path):
    pm = Personalized.load(None, str(copying_dir), log=lambda s: None)
    # black with a white square, and white: the random tiny encoder tells these apart best
    red, blue = (
        _png(tmp_path / "dark.png", (0, 0, 0), square=(4, 6)),
        _png(tmp_path / "light.png", (255,) * 3),
    )
    opts = dict(steps=10, seed=0, frames=FRAMES, height=SIZE, width=SIZE)
    out_red, z_red = _generate_latents(pm, "a red dog", GenerateOptions(**opts, image=red))
    out_blue, z_blue = _generate_latents(pm, "a red dog", GenerateOptions(**opts, image=blue))
    assert out_red.shape == (FRAMES, 3, SIZE, SIZE) and torch.isfinite(out_red).all()
    c_red, c_blue = _image_latent(pm.backbone, red), _image_latent(pm.backbone, blue)
    assert (c_red - c_blue).pow(2).mean() > 1e-3 * c_red.pow(2).mean()  # the two images are told apart
    assert _follows(z_red, c_red, c_blue) and _follows(z_blue, c_blue, c_red)
    assert not torch.equal(out_red, out_blue)


def test_generate_with_a_runs_lora(copying_dir, t2v_run, tmp_path):
    """A LoRA trained on the T2V model of the same size, applied to the I2V model as `generate` applies it:
    the video changes, the first frame still moves with the image, scales 0 give the base model back, and the
    result equals diffusers' own I2V pipeline with the exported LoRA loaded."""
    from diffusers import WanImageToVideoPipeline

    red = _png(tmp_path / "dark.png", (0, 0, 0), square=(4, 6))
    warnings = []
    pm = Personalized.load(t2v_run, str(copying_dir), log=warnings.append)
    assert any("another configuration" in w for w in warnings)  # T2V fingerprint vs I2V: said, not refused
    opts = dict(steps=10, seed=0, frames=FRAMES, height=SIZE, width=SIZE, image=red)
    with_lora, z = _generate_latents(pm, "a sks person", GenerateOptions(**opts))
    off = pm.generate("a sks person", GenerateOptions(**opts, identity_scale=0.0, motion_scale=0.0))
    base = Personalized.load(None, str(copying_dir), log=lambda s: None).generate(
        "a sks person", GenerateOptions(**opts)
    )
    scale = base.abs().max()
    torch.testing.assert_close(off, base, rtol=0, atol=1e-5 * float(scale))
    assert (with_lora - base).abs().max() > 1e-3 * scale  # the LoRA acts
    # the LoRA shifts every latent by more than these two images differ, so the first frame is checked to move
    # with the image: z(dark) - z(light) points along c(dark) - c(light)
    light = np.full_like(red, 255)
    _, z_light = _generate_latents(pm, "a sks person", GenerateOptions(**{**opts, "image": light}))
    moved = (z[:, 0] - z_light[:, 0]).flatten()
    want = (_image_latent(pm.backbone, red) - _image_latent(pm.backbone, light)).flatten()
    # (measured 0.80; the LoRA's own shift depends a little on the image. Unrelated directions in these 256
    # dimensions have |cos| ~ 0.06; an image that did not reach the model gives 0)
    assert float(torch.nn.functional.cosine_similarity(moved, want, dim=0)) > 0.5
    # diffusers' pipeline + the run's exported LoRA, the image resized by us: the same video
    pipe = WanImageToVideoPipeline.from_pretrained(str(copying_dir), use_safetensors=True)
    pipe.load_lora_weights(str(t2v_run / "lora_diffusers.safetensors"))
    pipe.set_progress_bar_config(disable=True)
    from setseq.data.video import resize_center_crop

    ref = pipe(
        image=Image.fromarray(resize_center_crop(red, (SIZE, SIZE))), prompt="a sks person", height=SIZE,
        width=SIZE, num_frames=FRAMES, num_inference_steps=10, guidance_scale=5.0, output_type="pt",
        generator=torch.Generator().manual_seed(0), max_sequence_length=512,
    ).frames[0] * 2 - 1  # fmt: skip
    torch.testing.assert_close(with_lora, ref.clamp(-1, 1), rtol=0, atol=1e-4 * float(scale))


def test_cli_generate_from_png(i2v_dir, t2v_run, tmp_path, capsys):
    png = tmp_path / "start.png"
    _png(png, (220, 40, 30), size=(64, 40), square=(10, 20))
    out = tmp_path / "out.mp4"
    argv = [
        "generate",
        str(t2v_run),
        "--model",
        str(i2v_dir),
        "--image",
        str(png),
        "--prompt",
        "a sks person",
    ]
    code = main(argv + ["--out", str(out), "--steps", "2", "--identity-scale", "0"])
    assert code == 0 and out.is_file() and out.with_suffix(".png").is_file()
    assert "resized to cover 32x32 and centre-cropped" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit status 2, nothing written


def _refused(tmp_path, capsys, argv, *expect) -> str:
    out = tmp_path / "o" / "out.mp4"
    out.parent.mkdir(exist_ok=True)
    code = main(["generate", *argv, "--prompt", "a dog", "--out", str(out), "--steps", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Fix:" in err, err
    for e in expect:
        assert e in err, err
    assert list(out.parent.iterdir()) == []  # nothing written, not even a temporary file
    return err


def test_bad_image_is_refused(i2v_dir, tmp_path, capsys):
    m = ["--model", str(i2v_dir)]
    _refused(tmp_path, capsys, [*m, "--image", str(tmp_path / "missing.png")], "does not exist")
    (tmp_path / "notes.png").write_text("not an image at all\n")
    _refused(tmp_path, capsys, [*m, "--image", str(tmp_path / "notes.png")], "is not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    _refused(tmp_path, capsys, [*m, "--image", str(tmp_path / "empty.png")], "empty")
    good = tmp_path / "good.png"
    _png(good, (200, 0, 0))
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:60])  # a PNG truncated inside its data
    _refused(tmp_path, capsys, [*m, "--image", str(cut)], "cannot read image")
    _refused(tmp_path, capsys, [*m, "--image", str(tmp_path)], "is a folder")
    if hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() != 0:
        locked = tmp_path / "locked.png"
        _png(locked, (0, 200, 0))
        locked.chmod(0)
        _refused(tmp_path, capsys, [*m, "--image", str(locked)], "permission denied")
    # a size the model cannot make (not a multiple of 16 = VAE stride 8 x patch 2)
    _refused(
        tmp_path, capsys, [*m, "--image", str(good), "--size", "40x40"], "multiples of 16", "--size 32x32"
    )
    # an I2V model needs the image
    _refused(tmp_path, capsys, m, "image-to-video model", "--image")


def test_image_with_a_text_to_video_model_is_refused(tiny_wan_dir, tmp_path, capsys):
    good = tmp_path / "good.png"
    _png(good, (200, 0, 0))
    for model in (str(tiny_wan_dir), "toy"):
        _refused(
            tmp_path, capsys, ["--model", model, "--image", str(good)], "text-to-video model", "drop --image"
        )


def test_image_condition_is_the_pipelines(i2v_dir):
    """The first-frame condition training builds equals what `WanImageToVideoPipeline` builds for the same
    first frame (mask + latent of the image then zero frames; CLIP tokens); the dropped one has mask 0 and the
    latent of zero (mid-gray) frames."""
    bb = load_backbone("wan", str(i2v_dir))
    pipe = bb.pipe
    u8 = torch.randint(
        0, 256, (FRAMES, SIZE, SIZE, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    video = (u8.float() / 127.5 - 1.0).permute(0, 3, 1, 2)[None]  # (1, F, 3, H, W), as the cache holds it
    ours = bb.image_condition(video)
    img = Image.fromarray(u8[0].numpy(), "RGB")
    pre = pipe.video_processor.preprocess(img, height=SIZE, width=SIZE).float()
    _, theirs = pipe.prepare_latents(pre, 1, 16, SIZE, SIZE, FRAMES, torch.float32, torch.device("cpu"))
    assert ours.latent.shape == theirs.shape
    assert (ours.latent - theirs).abs().max() <= 1e-5 * theirs.abs().max()
    tokens = pipe.encode_image(img, torch.device("cpu"))
    assert ours.tokens is not None and (ours.tokens - tokens).abs().max() <= 1e-5 * tokens.abs().max()
    assert ours.latent[:, :4, 0].eq(1).all() and ours.latent[:, :4, 1:].eq(0).all()

    noisy = torch.randn(3, 16, 1, SIZE // 8, SIZE // 8)
    dropped = bb.dropped_condition(noisy)
    gray = bb.encode_video(torch.zeros(1, 1, 3, SIZE, SIZE))
    assert dropped.latent.shape == (3, 20, 1, SIZE // 8, SIZE // 8) and dropped.latent[:, :4].eq(0).all()
    assert (dropped.latent[:, 4:] - gray).abs().max() <= 1e-5 * gray.abs().max()
    assert dropped.tokens is not None and dropped.tokens.shape[0] == 3


def test_training_on_an_i2v_model(i2v_dir, clip_mp4, tmp_path, monkeypatch):
    """Both stages train on an I2V model: stage 1's single frames with the condition dropped, stage 2's clip
    conditioned on its own first frame (mask 1 on the first latent frame, its CLIP tokens); the run then
    generates from an image."""
    from setseq.backbones.wan import WanBackbone
    from setseq.config_load import resolve_config
    from setseq.infer.generate import GenerateOptions
    from setseq.train.run import train
    from tests.helpers import TINY_TRAINING

    seen: list[tuple[int, object]] = []
    forward = WanBackbone.forward

    def spy(self, noisy, sigmas, prompt, image=None):
        if not noisy.is_meta:  # (the memory estimate runs it on the meta device first)
            seen.append((noisy.shape[2], image))
        return forward(self, noisy, sigmas, prompt, image=image)

    monkeypatch.setattr(WanBackbone, "forward", spy)
    flags = {
        "model": {"backbone": "wan", "path": str(i2v_dir)},
        "data": {"video": str(clip_mp4), "frames": FRAMES, "size": [SIZE, SIZE]},
    }
    run = tmp_path / "run"
    train(resolve_config(None, flags, TINY_TRAINING), run, progress=False, log=lambda s: None)
    frames = [image for f, image in seen if f == 1]
    clips = [image for f, image in seen if f > 1]
    assert frames and clips and all(i is None for i in frames)
    for image in clips:
        assert image is not None and image.tokens is not None
        assert image.latent[:, :4, 0].eq(1).all() and image.latent[:, :4, 1:].eq(0).all()
    monkeypatch.undo()

    pm = Personalized.load(run, None, log=lambda s: None)
    assert pm.backbone.info.image == "required"
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[..., 1] = 180
    video = pm.generate(
        "a sks person", GenerateOptions(steps=2, frames=FRAMES, height=SIZE, width=SIZE, image=img)
    )
    assert video.shape == (FRAMES, 3, SIZE, SIZE) and torch.isfinite(video).all()


def test_what_i2v_training_does_not_build_is_refused_before_writing(i2v_dir, clip_mp4, tmp_path):
    from setseq.config_load import resolve_config
    from setseq.train.run import train
    from setseq.train.setup import check_image_to_video

    flags = {
        "model": {"backbone": "wan", "path": str(i2v_dir)},
        "data": {"video": str(clip_mp4), "frames": FRAMES, "size": [SIZE, SIZE]},
    }
    with pytest.raises(SetseqError, match="prior preservation .* image-to-video"):
        train(resolve_config(None, flags, ["regularizers.prior_videos=2"]), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "config.yaml").exists()
    bb = load_backbone("wan", str(i2v_dir))
    with pytest.raises(SetseqError, match="stage2.background_swap .* image-to-video"):
        check_image_to_video(resolve_config(None, flags, ["stage2.background_swap=0.5"]), bb)
    check_image_to_video(resolve_config(None, flags, ["stage1.background_swap=0.5"]), bb)  # stage 1's is fine


def test_wan22_ti2v_takes_an_image_too(tmp_path):
    """Wan 2.2 TI2V-5B is one model for both tasks: with an image, WanImageToVideoPipeline runs on its components
    (the first latent frame pinned to the image's latent); without, plain text-to-video."""
    from setseq.backbones.wan import build_tiny_wan22_ti2v

    pm = Personalized.load(None, str(build_tiny_wan22_ti2v(tmp_path / "m")), log=lambda s: None)
    assert pm.backbone.info.image == "optional"
    img = np.zeros((40, 48, 3), np.uint8)
    img[..., 0] = 200
    opts = dict(steps=2, frames=FRAMES, height=SIZE, width=SIZE)
    a = pm.generate("a dog", GenerateOptions(**opts, image=img))
    b = pm.generate("a dog", GenerateOptions(**opts, image=255 - img))
    text = pm.generate("a dog", GenerateOptions(**opts))
    assert a.shape == text.shape == (FRAMES, 3, SIZE, SIZE)
    assert (a - b).abs().max() > 0.05 and (a - text).abs().max() > 0.05  # the image reaches the video
