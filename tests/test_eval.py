"""`setseq eval`: the metrics (pure functions) against the toy world's analytic ones, the motion metric on
rendered videos, the model loaders on tiny random CLIP / DINOv2 / ONNX models built from config, and the
command end to end with its bad inputs."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from setseq.cli import main
from setseq.data.synthetic import Appearance, ConceptSpec, Motion, render
from setseq.data.video import write_video
from setseq.errors import SetseqError
from setseq.eval import metrics as M
from setseq.eval import toy_metrics as T
from setseq.eval.motion import describe_motion, lucas_kanade_flow, motion_similarity, prepare_frames

RED = Appearance("circle", "red", "solid", 0.36, "black", "plain")
STAR = Appearance("star", "yellow", "stripes", 0.36, "blue", "plain")
SQUARE = Appearance("square", "white", "checker", 0.36, "purple", "stripes")
MOTIONS = {
    "right": Motion("linear", "right"),
    "left": Motion("linear", "left"),
    "cw": Motion("circle_cw", None),
    "ccw": Motion("circle_ccw", None),
    "fig8": Motion("figure_eight", None),
    "static": Motion("static", None),
}


def _video(app: Appearance, motion: str, frames: int = 9, size=32, **kw) -> np.ndarray:
    return render(ConceptSpec(app, MOTIONS[motion]), frames=frames, size=size, **kw)


# ------------------------------------------------------------------------------------ tiny models


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A random CLIP (2 layers, width 32, 32x32 images) with a byte-level tokenizer, saved like a hub folder."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab |= {c + "</w>": len(chars) + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    image = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    torch.manual_seed(0)
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    text |= dict(num_attention_heads=2, max_position_embeddings=77, bos_token_id=len(vocab) - 2)
    text |= dict(eos_token_id=len(vocab) - 1, pad_token_id=len(vocab) - 1)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    vision |= dict(num_attention_heads=2)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    d = tmp_path_factory.mktemp("clip") / "tiny-clip"
    model.save_pretrained(d)
    CLIPProcessor(image_processor=image, tokenizer=tok).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_dino_dir(tmp_path_factory):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
    )
    d = tmp_path_factory.mktemp("dino") / "tiny-dino"
    Dinov2Model(cfg).save_pretrained(d)
    BitImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(d)
    return d


@pytest.fixture()
def no_model_cache(tmp_path, monkeypatch):
    """No default model folder and an empty hub cache, whatever this machine has."""
    monkeypatch.setenv("SETSEQ_CACHE", str(tmp_path / "setseq-cache"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


# ------------------------------------------------------------------------------------ pure metrics


def test_mse_is_the_mean_over_every_pixel_also_after_resampling():
    ref = _video(RED, "cw")
    same_shape = _video(STAR, "cw", noise=10)
    other_shape = _video(STAR, "right", frames=13, size=(40, 48))
    whole = float(((same_shape / 255.0 - ref / 255.0) ** 2).mean())  # one frame at a time == all at once
    assert M.mse(same_shape, ref) == pytest.approx(whole, rel=1e-12, abs=1e-15)
    assert M.mse(ref, ref) == 0.0
    # resample_video aligns in the same way (uint8 rounding aside)
    aligned = M.resample_video(other_shape, 9, (32, 32))
    assert aligned.shape == ref.shape and aligned.dtype == np.uint8
    assert M.mse(aligned, ref) == pytest.approx(M.mse(other_shape, ref), abs=2e-5)


def test_tc_on_pixel_embeddings_equals_pixel_tc():
    """TC is the toy world's pixel temporal consistency when the 'embedding' is the mean-centred frame."""
    for video in (_video(RED, "fig8"), _video(SQUARE, "static", noise=5), _video(STAR, "right")):
        flat = torch.from_numpy(video.reshape(len(video), -1).astype(np.float64))
        emb = flat - flat.mean(dim=1, keepdim=True)
        assert M.temporal_consistency(emb) == pytest.approx(T.pixel_temporal_consistency(video), abs=1e-9)
    assert M.temporal_consistency(torch.ones(1, 4)) == 1.0


def test_identity_and_text_similarity():
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert M.identity_similarity(g, g) == pytest.approx(np.sqrt(0.5))  # both frames vs the mean direction
    assert M.identity_similarity(g[:1] * 3, g[:1]) == pytest.approx(1.0)  # scale does not matter
    assert M.text_similarity(g, torch.tensor([1.0, 1.0])) == pytest.approx(1.0)
    assert M.text_similarity(g[:1], torch.tensor([[0.0, 2.0]])) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="embedding sizes differ"):
        M.identity_similarity(g, torch.ones(2, 3))


# ------------------------------------------------------------------------------------ motion


def test_lucas_kanade_recovers_a_shift():
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.random((1, 1, 24, 24))).float()
    img = torch.nn.functional.interpolate(
        img, size=(96, 96), mode="bicubic", align_corners=False
    )  # smooth texture
    shifted = torch.roll(img, shifts=(-2, 5), dims=(2, 3))  # content moves 5 px right, 2 px up
    flow = lucas_kanade_flow(img, shifted)[0, :, 16:-16, 16:-16]  # (2, h, w), away from the wrap-around
    assert flow[0].median().item() == pytest.approx(5.0, abs=0.3)
    assert flow[1].median().item() == pytest.approx(-2.0, abs=0.3)


def test_motion_same_motion_scores_closer_than_different_motion_and_agrees_with_toy():
    names = ["right", "left", "cw", "ccw", "fig8", "static"]
    videos = {n: _video(RED, n) for n in names}
    ref = {n: describe_motion(v) for n, v in videos.items()}  # each video tracked once
    other_look = {n: describe_motion(_video(STAR, n)) for n in ["right", "cw", "fig8", "static"]}
    for n, desc in other_look.items():
        same = motion_similarity(desc, ref[n])["distance"]
        diff = [motion_similarity(ref[m], ref[n])["distance"] for m in names if m != n]
        assert same < min(diff), (n, same, diff)
        assert same < 0.35
    # ranking of "how different is this motion" agrees with the toy world's analytic trajectory metric
    agree = pairs = 0
    for n in ["right", "cw", "fig8"]:
        ours = [motion_similarity(ref[m], ref[n])["similarity"] for m in names if m != n]
        toys = [T.sprite_motion_fidelity(videos[m], videos[n])["similarity"] for m in names if m != n]
        for i, j in itertools.combinations(range(len(ours)), 2):
            if abs(toys[i] - toys[j]) > 0.05:
                pairs += 1
                agree += (ours[i] - ours[j]) * (toys[i] - toys[j]) > 0
    assert agree / pairs >= 0.85, (agree, pairs)


def test_motion_ignores_length_size_noise_and_translation():
    ref = describe_motion(_video(RED, "cw"))
    longer = _video(SQUARE, "cw", frames=17, size=(48, 64), noise=6)
    shifted = render(ConceptSpec(STAR, MOTIONS["cw"], start=(0.35, 0.4)), frames=9, size=32)
    r_long, r_shift = motion_similarity(longer, ref), motion_similarity(shifted, ref)
    r_diff = motion_similarity(_video(RED, "ccw"), ref)
    assert r_long["distance"] < r_diff["distance"] and r_shift["distance"] < r_diff["distance"]
    assert 0 < r_diff["similarity"] < r_long["similarity"] <= 1
    static = motion_similarity(_video(RED, "static"), _video(STAR, "static"))
    assert static["static"] and static["distance"] == 0.0 and static["similarity"] == 1.0
    flat = np.zeros((5, 16, 16, 3), np.uint8)  # nothing to track at all
    assert motion_similarity(flat, flat)["similarity"] == 1.0
    assert prepare_frames(flat).shape == (5, 1, 96, 96)
    # the metrics.py entry point is the same function
    assert M.motion_fidelity(longer, _video(RED, "cw"))["distance"] == pytest.approx(r_long["distance"])


# ------------------------------------------------------------------------------------ models


def test_tiny_clip_embeddings_and_tc_ranking(tiny_clip_dir):
    from setseq.eval.models import load_clip

    clip = load_clip(str(tiny_clip_dir))
    rng = np.random.default_rng(0)
    still = _video(RED, "static")
    moving = _video(RED, "fig8")
    flicker = rng.integers(0, 256, size=(9, 32, 32, 3), dtype=np.uint8)
    emb = {k: clip.images(v) for k, v in dict(still=still, moving=moving, flicker=flicker).items()}
    assert emb["still"].shape == (9, 16)
    assert torch.allclose(emb["still"].norm(dim=-1), torch.ones(9), atol=1e-5)
    tc = {k: M.temporal_consistency(e) for k, e in emb.items()}
    toy = {
        k: T.pixel_temporal_consistency(v)
        for k, v in dict(still=still, moving=moving, flicker=flicker).items()
    }
    assert sorted(tc, key=tc.get) == sorted(toy, key=toy.get)  # same ranking: flicker < moving < still
    assert tc["still"] == pytest.approx(1.0, abs=1e-5)
    text = clip.texts(["a red circle", "x" * 500])  # a long prompt is truncated, not an error
    assert text.shape == (2, 16)
    assert -1 <= M.text_similarity(emb["moving"], text[0]) <= 1


def test_tiny_dino_embeddings(tiny_dino_dir):
    from setseq.eval.models import load_dino

    dino = load_dino(str(tiny_dino_dir))
    a, b = dino.images(_video(RED, "cw")), dino.images(_video(SQUARE, "cw"))
    assert a.shape == (9, 32)
    assert M.identity_similarity(a, a) > M.identity_similarity(b, a)


def _tiny_arcface(path):
    """An ONNX model with ArcFace's interface (N x 3 x 112 x 112 -> embedding), built with onnx.helper."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(3 * 112 * 112, 8)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input.1"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["683"]),
        ],
        "arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 8])],
        [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    return path


def test_arcface_onnx(tmp_path, eval_videos):
    from setseq.eval.models import load_arcface

    path = _tiny_arcface(tmp_path / "w600k_r50.onnx")
    face = load_arcface(path)
    emb = face.images(_video(RED, "cw", frames=20, size=(48, 64)))  # more frames than one batch
    assert emb.shape == (20, 8)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(20), atol=1e-5)
    # through the command: ID by ArcFace, said so in the notes; no CLIP needed for ID alone
    v, out = eval_videos, tmp_path / "s"
    argv = ["eval", "--reference", str(v["reference"]), str(v["same_motion"]), "--arcface", str(path)]
    assert main([*argv, "--metrics", "id", "--out", str(out), "--no-progress"]) == 0
    data = json.loads((out / "metrics.json").read_text())
    assert data["id_method"] == "arcface" and "centre square" in data["notes"][0]
    assert -1 <= data["videos"]["same_motion"]["id"] <= 1
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(SetseqError, match="not an ONNX model"):
        load_arcface(tmp_path / "bad.onnx")


def test_missing_models_name_the_download(no_model_cache, tmp_path):
    from setseq.eval.models import load_arcface, load_clip, load_dino

    with pytest.raises(SetseqError) as e:
        load_clip()
    msg = str(e.value)
    assert "hf download openai/clip-vit-base-patch32 --local-dir" in msg and "setseq-cache/clip" in msg
    assert "--clip PATH" in msg and "\n" not in msg
    with pytest.raises(SetseqError, match="hf download facebook/dinov2-base"):
        load_dino("facebook/dinov2-base")
    with pytest.raises(SetseqError, match="not a CLIP model folder"):
        load_clip(str(tmp_path))
    with pytest.raises(SetseqError, match="w600k_r50.onnx"):
        load_arcface(tmp_path / "nope.onnx")


def test_models_found_in_default_folder_and_hub_cache(no_model_cache, tiny_clip_dir, tmp_path):
    import shutil

    from setseq.eval.models import default_dir, load_clip

    # a hub cache laid out as `hf download` leaves it: refs/main -> snapshots/<commit>/
    repo = tmp_path / "hf-cache" / "models--openai--clip-vit-base-patch32"
    shutil.copytree(tiny_clip_dir, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    assert load_clip().images(_video(RED, "cw")).shape == (9, 16)  # the default id, from the cache
    assert load_clip("openai/clip-vit-base-patch32").name == "openai/clip-vit-base-patch32"
    shutil.rmtree(repo)
    shutil.copytree(tiny_clip_dir, default_dir("clip"))  # ~/.cache/setseq/clip comes first
    assert load_clip().name == str(default_dir("clip"))


# ------------------------------------------------------------------------------------ the command


@pytest.fixture()
def eval_videos(tmp_path):
    paths = {}
    for name, video in {
        "reference": _video(RED, "cw"),
        "same_motion": _video(STAR, "cw"),
        "other_motion": _video(RED, "right"),
        "longer": _video(RED, "cw", frames=13, size=(48, 48)),
    }.items():
        paths[name] = tmp_path / f"{name}.mp4"
        write_video(paths[name], video, fps=8.0)
    return paths


def test_eval_cli_end_to_end(eval_videos, tiny_clip_dir, tiny_dino_dir, tmp_path, capsys):
    v = eval_videos
    out = tmp_path / "scores"
    argv = ["eval", "--reference", str(v["reference"]), str(v["same_motion"]), str(v["other_motion"])]
    argv += ["--clip", str(tiny_clip_dir), "--dino", str(tiny_dino_dir), "--prompt", "a red circle"]
    argv += ["--out", str(out), str(v["longer"]), "--no-progress"]  # videos after options too
    assert main(argv) == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "metrics.json").read_text())
    assert data["order"] == ["same_motion", "other_motion", "longer"] and set(data["videos"]) == set(
        data["order"]
    )
    assert data["id_method"] == "dino" and any("DINOv2" in n for n in data["notes"])
    assert "note: longer: 13 frames 48x48" in printed and "C-T" in printed and "motion" in printed
    rows = data["videos"]
    for row in rows.values():
        assert {"mse", "id", "clip_t", "tc", "motion", "motion_distance"} <= set(row)
        assert row["prompt"] == "a red circle"
    assert rows["same_motion"]["motion"] > rows["other_motion"]["motion"]
    assert rows["longer"]["motion"] > rows["other_motion"]["motion"]
    assert -1.0 <= data["reference_tc"] <= 1.0 and "(reference)" in printed
    assert rows["same_motion"]["mse"] == pytest.approx(M.mse(_video(STAR, "cw"), _video(RED, "cw")), abs=0.01)


def test_eval_cli_falls_back_to_clip_for_id_and_selects_metrics(
    eval_videos, tiny_clip_dir, tmp_path, no_model_cache
):
    v = eval_videos
    out = tmp_path / "s"
    argv = ["eval", "--reference", str(v["reference"]), str(v["same_motion"]), "--clip", str(tiny_clip_dir)]
    assert main([*argv, "--metrics", "id,tc", "--out", str(out), "--no-progress"]) == 0
    data = json.loads((out / "metrics.json").read_text())
    assert data["id_method"] == "clip" and any("CLIP image similarity" in n for n in data["notes"])
    assert set(data["videos"]["same_motion"]) >= {"id", "tc"} and "mse" not in data["videos"]["same_motion"]
    # mse + motion need no model at all
    assert main(["eval", "--reference", str(v["reference"]), str(v["same_motion"]), "--metrics", "mse,motion",
                 "--out", str(out), "--no-progress"]) == 0  # fmt: skip


def test_eval_cli_bad_input(eval_videos, tmp_path, capsys, no_model_cache):
    v = eval_videos
    gen = str(v["same_motion"])
    assert main(["eval", "--reference", str(tmp_path / "missing.mp4"), gen, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "reference video" in err and "does not exist" in err and "--reference" in err
    assert (
        main(["eval", "--reference", str(v["reference"]), gen, "--out", str(tmp_path), "--no-progress"]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert "hf download openai/clip-vit-base-patch32" in err and "--metrics mse,motion" in err
    assert len(err.splitlines()) == 1
    argv = [
        "eval",
        "--reference",
        str(v["reference"]),
        gen,
        gen,
        "--prompt",
        "a",
        "--prompt",
        "b",
        "--prompt",
        "c",
    ]
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert "3 --prompt for 2 videos" in capsys.readouterr().err
    assert (
        main(["eval", "--reference", str(v["reference"]), gen, "--metrics", "fid", "--out", str(tmp_path)])
        == 2
    )
    assert "unknown metric 'fid'" in capsys.readouterr().err
    assert (
        main(["eval", "--reference", str(v["reference"]), str(tmp_path / "nope.mp4"), "--out", str(tmp_path)])
        == 2
    )
    assert "generated video" in capsys.readouterr().err
