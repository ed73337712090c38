from __future__ import annotations

import os

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_wan_dir(tmp_path_factory):
    """A tiny random Wan T2V checkpoint in diffusers layout, built from config (no download)."""
    from setseq.testing import build_tiny_wan

    return build_tiny_wan(tmp_path_factory.mktemp("tiny_wan") / "model")


def moving_square_video(frames: int = 13, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    """(F, H, W, 3) uint8: a red square moving right on a blue background."""
    h, w = size
    out = np.zeros((frames, h, w, 3), np.uint8)
    out[..., 2] = 160
    for i in range(frames):
        x = 4 + i * max(1, (w - 20) // max(1, frames))
        out[i, h // 2 - 6 : h // 2 + 6, x : x + 12] = (220, 30, 30)
    return out


@pytest.fixture()
def clip_mp4(tmp_path):
    from setseq.data.video import write_video

    path = tmp_path / "clip.mp4"
    write_video(path, moving_square_video(), fps=8.0)
    return path


@pytest.fixture(scope="session")
def tiny_toy_dir(tmp_path_factory):
    """A random-weight toy model folder (same layout and code path as the shipped one), 2 small layers."""
    from setseq.backbones.toy import build_toy_components, save_toy_model, toy_config

    cfg = toy_config(
        transformer={"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 16, "ffn_dim": 64},
        text_encoder={"d_model": 32, "d_kv": 8, "num_heads": 4, "d_ff": 64, "num_layers": 1},
        vae={"base_dim": 8},
    )
    return save_toy_model(tmp_path_factory.mktemp("tiny_toy") / "model", build_toy_components(cfg, seed=0))
