from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_wan_dir(tmp_path_factory):
    """A tiny random Wan T2V checkpoint in diffusers layout, built from config (no download)."""
    from setseq.backbones.wan import build_tiny_wan

    return build_tiny_wan(tmp_path_factory.mktemp("tiny_wan") / "model")


@pytest.fixture()
def clip_mp4(tmp_path):
    from setseq.data.video import write_video
    from tests.helpers import moving_square_video

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
