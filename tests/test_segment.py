"""Subject masks from a word (`setseq mask`, `--mask auto`): tiny random-config Grounding DINO and SAM 2 video
models, saved and loaded as real checkpoints are; the mask cache key; the refusals; degraded masks."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from setseq.cli import main
from setseq.data import segment as S
from setseq.data.degrade import KINDS, degrade, soft_iou
from setseq.errors import SetseqError


@pytest.fixture(scope="module")
def tiny_seg(tmp_path_factory):
    """(segmenter folder, detector folder) of tiny random SAM 2 video and Grounding DINO models."""
    from setseq.tools.testing import build_tiny_grounding_dino, build_tiny_sam2_video

    root = tmp_path_factory.mktemp("tiny_seg")
    return build_tiny_sam2_video(root / "sam2"), build_tiny_grounding_dino(root / "gdino")


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    from setseq.data.video import write_video
    from tests.helpers import moving_square_video

    path = tmp_path_factory.mktemp("segvideo") / "clip.mp4"
    write_video(path, moving_square_video(13, (40, 56)), fps=8)
    return path


def spec(tiny_seg, threshold=0.0):
    # Threshold 0: every random box passes, so the path runs to the end; 1: none can (scores are < 1).
    return S.SegmenterSpec(str(tiny_seg[0]), str(tiny_seg[1]), threshold)


def test_mask_folder_and_video_load_as_masks(tiny_seg, video, tmp_path):
    from setseq.data.masks import load_mask
    from setseq.data.video import load_clip

    lines = []
    folder = S.write_mask(video, "square", tmp_path / "mask", spec(tiny_seg), "cpu", log=lines.append)
    files = sorted(folder.iterdir())
    assert len(files) == 13 and "13 frames" in lines[0]
    from PIL import Image

    img = np.asarray(Image.open(files[5]))
    assert img.shape == (40, 56) and set(np.unique(img)) <= {0, 255}
    # Through the same sampling as --mask FILE: the clip's frames, size and crop.
    clip = load_clip(video, frames=9, size=(32, 32))
    m = load_mask(folder, video, clip)
    assert m.shape == (9, 32, 32)
    cover = m.reshape(9, -1).mean(1)
    assert (cover > S.MIN_COVER).all() and (cover < S.MAX_COVER).all()
    as_video = S.write_mask(video, "square", tmp_path / "mask.mp4", spec(tiny_seg), "cpu", log=lines.append)
    mv = load_mask(as_video, video, clip)
    assert soft_iou(mv > 0.5, m > 0.5) > 0.9  # the same masks, through a lossy codec


def test_nothing_found_is_refused_before_writing(tiny_seg, video, tmp_path):
    with pytest.raises(SetseqError, match="finds nothing in the video.*--mask FILE"):
        S.write_mask(video, "square", tmp_path / "m", spec(tiny_seg, 1.0), "cpu", log=lambda s: None)
    assert not (tmp_path / "m").exists() and not list(tmp_path.iterdir())


def test_not_a_segmenter_or_unknown_id(tiny_seg, tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SetseqError, match="not a segmenter checkpoint"):
        S.fingerprint(S.SegmenterSpec(str(tmp_path / "empty"), str(tiny_seg[1])))
    with pytest.raises(SetseqError, match="'grounding-dino' model, not a SAM 2 or SAM 3"):
        S.fingerprint(S.SegmenterSpec(str(tiny_seg[1]), str(tiny_seg[1])))
    with pytest.raises(SetseqError, match="not Grounding DINO"):
        S.fingerprint(S.SegmenterSpec(str(tiny_seg[0]), str(tiny_seg[0])))
    (tmp_path / "no_weights").mkdir()  # a config and no weights: refused when loading, in one line
    shutil.copy(tiny_seg[0] / "config.json", tmp_path / "no_weights")
    with pytest.raises(SetseqError, match="cannot load the segmenter .*no_weights"):
        S.load_segmenter(S.SegmenterSpec(str(tmp_path / "no_weights"), str(tiny_seg[1])), "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SetseqError, match="cannot load segmenter 'nobody-setseq/no-such-sam'.*hf download"):
        S.fingerprint(S.SegmenterSpec("nobody-setseq/no-such-sam", str(tiny_seg[1])))


def test_coverage_refusals_name_the_frame():
    m = np.full((4, 10, 10), 0.3, np.float32)
    S.check_coverage(m, "dog")
    m[2] = 0
    with pytest.raises(SetseqError, match="covers 0.00% of frame 7.*another word.*--mask FILE"):
        S.check_coverage(m, "dog", [1, 3, 7, 9])
    m[2] = 1
    with pytest.raises(SetseqError, match="covers 100.0% of frame 7: almost the whole frame"):
        S.check_coverage(m, "dog", [1, 3, 7, 9])


def test_mask_key_changes_with_segmenter_prompt_video_only(tiny_seg, video, tmp_path):
    from setseq.tools.testing import build_tiny_sam2_video

    base = S.mask_key(video, "square", spec(tiny_seg), 0.0, None)
    assert S.mask_key(video, "square", spec(tiny_seg), 0.0, None) == base
    moved = tmp_path / "moved"  # the same checkpoint elsewhere: its config and weights, not its path
    shutil.copytree(tiny_seg[0], moved, copy_function=shutil.copy2)
    assert S.mask_key(video, "square", S.SegmenterSpec(str(moved), str(tiny_seg[1]), 0.0), 0.0, None) == base
    assert S.mask_key(video, "dog", spec(tiny_seg), 0.0, None) != base
    other = build_tiny_sam2_video(tmp_path / "other", size=32)  # another config
    assert S.mask_key(video, "square", S.SegmenterSpec(str(other), str(tiny_seg[1]), 0.0), 0.0, None) != base
    assert S.mask_key(video, "square", spec(tiny_seg, 0.5), 0.0, None) != base
    other_video = tmp_path / "v.mp4"
    other_video.write_bytes(video.read_bytes() + b"\0")
    assert S.mask_key(other_video, "square", spec(tiny_seg), 0.0, None) != base


def test_auto_mask_is_cached_and_stale_refused(tiny_seg, video, tmp_path):
    lines = []
    a = S.auto_mask_folder(video, "square", spec(tiny_seg), tmp_path, "cpu", log=lines.append)
    assert any("segmenting" in x for x in lines)
    lines.clear()
    assert S.auto_mask_folder(video, "square", spec(tiny_seg), tmp_path, "cpu", log=lines.append) == a
    assert lines == [f"mask: reusing {a} ('square')"]
    stamp = a.with_suffix(".json")
    stamp.write_text('{"key": "something else"}')
    with pytest.raises(SetseqError, match="stale cache"):
        S.auto_mask_folder(video, "square", spec(tiny_seg), tmp_path, "cpu", log=lines.append)


@pytest.mark.parametrize("kind", KINDS)
def test_degraded_masks_reach_the_iou_they_claim(kind):
    from setseq.data.synthetic import CONCEPTS, render_mask

    exact = render_mask(CONCEPTS["cyan_diamond_bounce"], frames=33, size=32)
    for target in (0.9, 0.8, 0.7):
        m, iou = degrade(exact, kind, target)
        assert iou == pytest.approx(soft_iou(m, exact), abs=1e-9)  # the claim is the measurement
        assert abs(iou - target) < (0.05 if kind == "drop" else 0.01), (kind, target, iou)
        assert m.shape == exact.shape and m.min() >= 0 and m.max() <= 1


def test_mask_recipe(tmp_path, capsys):
    from setseq.config_load import resolve_config
    from setseq.tools.demo import DEMO_CONFIG

    with_mask = resolve_config(None, {"data": {"mask": "auto"}}, mask_defaults=True)
    assert (with_mask.stage1.background_swap, with_mask.stage2.background_swap) == (1.0, 0.25)
    # a segmenter's mask is feathered against its halo, unless the edge is shaped by the user; a given mask is not
    assert with_mask.data.mask_feather == 1.0 and "feathered by 1 px" in capsys.readouterr().err
    eroded = resolve_config(None, {"data": {"mask": "auto"}}, ["data.mask_erode=2"], mask_defaults=True)
    assert (eroded.data.mask_erode, eroded.data.mask_feather) == (2, 0.0)
    sharp = resolve_config(None, {"data": {"mask": "auto"}}, ["data.mask_feather=0"], mask_defaults=True)
    assert sharp.data.mask_feather == 0.0
    assert resolve_config(None, {"data": {"mask": "m"}}, mask_defaults=True).data.mask_feather == 0.0
    assert "feathered" not in capsys.readouterr().err
    own = resolve_config(None, {"data": {"mask": "m"}}, ["stage1.background_weight=0.1"], mask_defaults=True)
    assert (own.stage1.background_swap, own.stage2.background_swap, own.stage1.background_weight) == (
        0,
        0,
        0.1,
    )
    # the attention loss adds to the swaps; the other mask options replace them
    tied = resolve_config(None, {"data": {"mask": "m"}}, ["stage1.attention_loss=0.01"], mask_defaults=True)
    assert (tied.stage1.background_swap, tied.stage2.background_swap, tied.stage1.attention_loss) == (
        1,
        0.25,
        0.01,
    )
    assert resolve_config(None, {}, mask_defaults=True).stage1.background_swap == 0.0
    toy = resolve_config(DEMO_CONFIG, {"data": {"video": "v.mp4"}}, mask_defaults=True)
    assert (toy.stage1.background_swap, toy.stage2.background_swap) == (0.0, 0.0)
    assert "need a subject mask and none was given: they are off" in capsys.readouterr().err
    forced = resolve_config(DEMO_CONFIG, {}, ["stage1.background_swap=0.5"], mask_defaults=True)
    assert (forced.stage1.background_swap, forced.stage2.background_swap) == (0.5, 0.0)


def test_mask_auto_with_a_baseline_is_refused(video, tmp_path, capsys):
    rc = main(
        ["train", "--video", str(video), "--out", str(tmp_path / "r"), "--mask", "auto", "--method", "lora1"]
    )
    assert rc == 2 and "method lora1 cannot use a subject mask" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_mask_auto_trains_tiny_wan(tiny_seg, tiny_wan_dir, video, tmp_path, capsys):
    from tests.test_train_wan import OVERRIDES

    out = tmp_path / "run"
    args = [
        "train",
        "--model",
        str(tiny_wan_dir),
        "--backbone",
        "wan",
        "--video",
        str(video),
        "--frames",
        "9",
    ]
    args += ["--out", str(out), "--mask", "auto", "--mask-prompt", "square", "--no-progress"]
    args += [f"data.segmenter={tiny_seg[0]}", f"data.detector={tiny_seg[1]}", "data.mask_threshold=0"]
    args += [o for o in OVERRIDES if not o.startswith("train.sample")] + ["train.sample_every=0"]
    assert main(args) == 0, capsys.readouterr().err
    logged = capsys.readouterr().out
    assert "mask: segmenting 'square'" in logged and "backgrounds swapped to" in logged
    (folder,) = (out / "cache").glob("mask-*[!n]")
    assert len(list(folder.glob("*.png"))) == 13
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["mask"] == "auto" and saved["data"]["mask_prompt"] == "square"
    assert (saved["stage1"]["background_swap"], saved["stage2"]["background_swap"]) == (1.0, 0.25)


def test_report_shows_the_subject_mask(video, tmp_path):
    """`setseq report` of a run with a mask: an overlay clip and a one-row contact sheet of it."""
    import yaml
    from PIL import Image

    from setseq.tools.report import build_report
    from tests.helpers import moving_square_video

    frames = moving_square_video(13, (40, 56))
    masks = tmp_path / "mask"
    masks.mkdir()
    for i, f in enumerate(frames):  # the red square, exactly
        Image.fromarray(((f[..., 0] > 128) * 255).astype(np.uint8)).save(masks / f"{i:03d}.png")
    run = tmp_path / "run"
    run.mkdir()
    cfg = {"data": {"video": str(video), "frames": 9, "size": [32, 48], "mask": str(masks)}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    page = build_report(run, tmp_path / "r.html", progress=False).read_text()
    assert page.count("subject mask") >= 2 and "No subject mask shown" not in page
    cfg["data"]["mask"] = str(tmp_path / "gone")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    page = build_report(run, tmp_path / "r2.html", progress=False).read_text()
    assert "No subject mask shown: mask" in page and "does not exist" in page


def test_mask_overlay_keeps_the_subject_and_dims_the_rest():
    from setseq.tools.report import mask_overlay

    frames = np.full((2, 4, 4, 3), 200, np.uint8)
    m = np.zeros((2, 4, 4), np.float32)
    m[:, :2] = 1
    over = mask_overlay(frames, m)
    assert (over[:, :2] == 200).all() and (over[:, 2:, :, 1] == 70).all() and (over[:, 2:, :, 0] == 230).all()


def test_mask_degrade_option():
    from setseq.config_load import resolve_config
    from setseq.data.degrade import parse_degrade

    assert parse_degrade("blur:0.7") == ("blur", 0.7)
    for bad in ("blur", "melt:0.8", "dilate:1.5", "dilate:x"):
        with pytest.raises(ValueError, match="KIND:IOU"):
            parse_degrade(bad)
    with pytest.raises(SetseqError, match="mask_degrade must be KIND:IOU"):
        resolve_config(None, {}, ["data.mask_degrade=melt:0.8"])
    assert resolve_config(None, {}, ["data.mask_degrade=erode:0.9"]).data.mask_degrade == "erode:0.9"


def test_mask_degrade_reaches_training_and_the_cache_key(tmp_path):
    """`data.mask_degrade` degrades the mask the run encodes (its IoU logged) and keys another cache file."""
    import dataclasses

    import torch

    from setseq.backbones.registry import load_backbone
    from setseq.config_load import resolve_config
    from setseq.tools.demo import CONCEPT_DIR, DEMO_CONFIG, concept_mask
    from setseq.train.encode import encode_concept

    video = CONCEPT_DIR / "cyan_diamond_bounce.mp4"
    quick = ["concept.class_word=diamond", "stage2.background_swap=0", "data.swap_backgrounds=[black]"]
    cfg = resolve_config(DEMO_CONFIG, {"data": {"video": str(video)}}, quick)
    mask = str(concept_mask("cyan_diamond_bounce", tmp_path / "m"))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, mask=mask))
    bb = load_backbone("toy", "toy", torch.device("cpu"), torch.float32)
    exact, key = encode_concept(cfg, bb, tmp_path / "cache", lambda s: None)
    lines = []
    worse = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, mask_degrade="dilate:0.7"))
    dilated, key2 = encode_concept(worse, bb, tmp_path / "cache", lines.append)
    import re

    (iou,) = [float(m[1]) for x in lines if (m := re.search(r"degraded \(dilate:0.7\), IoU ([\d.]+)", x))]
    assert key2 != key and abs(iou - 0.7) < 0.03, (lines, iou)
    # A dilated mask: every latent cell weighs the subject at least as much, and some more.
    assert (dilated.subject_set >= exact.subject_set - 1e-6).all()
    assert float(dilated.subject_set.sum()) > 1.2 * float(exact.subject_set.sum())
    # The halo handled on top: eroded by a pixel, a third cache file, and the subject's weight shrinks back.
    lines = []
    handled = dataclasses.replace(cfg, data=dataclasses.replace(worse.data, mask_erode=1))
    eroded, key3 = encode_concept(handled, bb, tmp_path / "cache", lines.append)
    assert key3 not in (key, key2) and any("eroded 1 px" in x for x in lines), lines
    assert float(eroded.subject_set.sum()) < float(dilated.subject_set.sum())


def test_edge_erodes_and_feathers():
    """`edge` shrinks a mask by whole pixels (not from the frame's border) and softens its edge in [0, 1]."""
    from setseq.data.degrade import edge

    m = np.zeros((2, 9, 9), np.float32)
    m[:, 2:7, 2:7] = 1  # a 5x5 square
    assert edge(m) is not m and np.array_equal(edge(m), m)
    one = edge(m, erode=1)
    assert one.sum() == 2 * 9 and (one[:, 3:6, 3:6] == 1).all()  # 3x3 left
    assert edge(m, erode=3).sum() == 0
    side = np.zeros((1, 6, 6), np.float32)
    side[:, :, :3] = 1  # touching the left border: eroded from the right only
    assert (
        np.array_equal(edge(side, erode=1)[0, :, :2], np.ones((6, 2)))
        and edge(side, erode=1)[0, :, 2].sum() == 0
    )
    soft = edge(m, feather=1.0)
    assert 0.0 <= soft.min() and soft.max() <= 1.0 and soft[0, 4, 4] > 0.95
    assert 0.0 < soft[0, 1, 4] < 0.5 < soft[0, 2, 4] < 1.0  # the edge blended over a pixel or two
    assert abs(float(soft.sum()) - float(m.sum())) < 0.02 * float(m.sum())  # the blur keeps the area


def test_edge_options_are_checked():
    """Negative pixels are refused by the config, and shaping a mask that was not given is refused in one line."""
    from setseq.config_load import resolve_config
    from setseq.train.methods import check_mask

    with pytest.raises(SetseqError, match="mask_erode and data.mask_feather are pixels"):
        resolve_config(None, {}, ["data.mask_erode=-1"])
    cfg = resolve_config(None, {}, ["data.mask_feather=1.5"])
    with pytest.raises(SetseqError, match="shape a subject mask, and none was given") as e:
        check_mask(cfg)
    assert "--mask auto" in str(e.value)


def _torchvision_loads() -> bool:
    try:
        import torchvision.ops  # noqa: F401
    except Exception:  # absent, or PyPI's build beside torch's CPU wheel ("operator torchvision::nms ...")
        return False
    return True


@pytest.mark.skipif(not _torchvision_loads(), reason="transformers' SAM 3 needs torchvision")
def test_sam3_video_segments_from_the_word_itself(tmp_path):
    from setseq.tools.testing import build_tiny_sam3_video

    folder = build_tiny_sam3_video(tmp_path / "sam3")
    spec = S.SegmenterSpec(str(folder), "unused: SAM 3 has no detector", 0.0)
    assert S.fingerprint(spec)["kind"] == "sam3" and "detector" not in S.fingerprint(spec)
    seg = S.load_segmenter(spec, "cpu")
    frames = np.random.default_rng(0).integers(0, 255, (3, 40, 56, 3), dtype=np.uint8)
    mask = seg.segment(frames, "square")
    seg.close()
    assert mask.shape == (3, 40, 56) and set(np.unique(mask)) <= {0.0, 1.0} and mask.any()


def test_sam3_without_torchvision_is_refused_in_one_line(tmp_path, monkeypatch):
    import builtins

    (tmp_path / "config.json").write_text('{"model_type": "sam3_video"}')
    real = builtins.__import__

    def no_torchvision(name, *a, **k):
        if name.startswith("torchvision"):
            raise ImportError("no torchvision")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_torchvision)
    with pytest.raises(SetseqError, match="SAM 3 video needs torchvision.*pip install torchvision"):
        S.load_segmenter(S.SegmenterSpec(str(tmp_path), "x"), "cpu")
