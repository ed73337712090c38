from __future__ import annotations

from pathlib import Path

import pytest

from setseq.config import RunConfig
from setseq.config_load import parse_overrides, resolve_config
from setseq.errors import SetseqError

ROOT = Path(__file__).parent.parent
CONFIGS = sorted([*(ROOT / "configs").glob("*.yaml"), *(ROOT / "src/setseq/assets").glob("*.yaml")])


def test_defaults_follow_the_paper():
    c = RunConfig()
    assert (c.stage1.steps, c.stage2.steps) == (600, 900)
    assert (c.stage1.dropconnect, c.stage2.dropconnect) == (0.8, 0.5)
    assert c.stage1.lr == 1e-4 and c.stage1.betas == [0.9, 0.99] and c.stage1.weight_decay == 0.01
    assert c.stage1.grad_clip == 0.05 and c.stage1.batch_size == 8 and c.lora.rank == 128
    assert c.regularizers.token_mask == 0.1
    assert c.concept.t_static == "a sks person"
    assert c.concept.t_motion == "a sks person in zwx motion"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    cfg = resolve_config(path)
    assert cfg.lora.rank >= 1
    assert resolve_config(None, None, None).to_dict().keys() == cfg.to_dict().keys()


def test_precedence_and_overrides(tmp_path):
    y = tmp_path / "run.yaml"
    y.write_text("stage1:\n  steps: 10\nlora:\n  rank: 8\nconcept:\n  action: dancing\n")
    cfg = resolve_config(
        y, {"lora": {"rank": 16}}, ["stage2.steps=7", "lora.basis=up", "concept.camera=static camera"]
    )
    assert cfg.stage1.steps == 10 and cfg.stage1.dropconnect == 0.8
    assert cfg.stage2.steps == 7 and cfg.stage2.dropconnect == 0.5  # stage 2 keeps its own defaults
    assert cfg.lora.rank == 16 and cfg.lora.basis == "up"
    assert cfg.concept.t_motion == "a sks person in zwx motion, dancing, static camera"
    again = tmp_path / "again.yaml"
    again.write_text(cfg.to_yaml())
    assert resolve_config(again) == cfg  # the saved config round-trips


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["stage1.stepz=3"], "unknown config key 'stage1.stepz'"),
        (["stage1.steps"], "dotted key=value"),
        (["lora.basis=sideways"], "basis"),
        (["stage1.steps=many"], "must be int"),
        (["stage2.dropconnect=1.5"], "dropconnect"),
        (["stage1.micro_batch=3"], "micro_batch"),
        (["concept.static_prompt=a person"], "concept token"),
        (["nosection.x=1"], "unknown config key 'nosection'"),
    ],
)
def test_bad_overrides(overrides, match):
    with pytest.raises(SetseqError, match=match):
        resolve_config(None, None, overrides)


def test_malformed_yaml(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("stage1: [steps: 3\n")
    with pytest.raises(SetseqError, match="not valid YAML at line"):
        resolve_config(y)
    y.write_text("- a\n- b\n")
    with pytest.raises(SetseqError, match="mapping"):
        resolve_config(y)


def test_parse_overrides_types():
    assert parse_overrides(["a.b=3", "a.c=0.5", "d=[1, 2]", "e=true"]) == {
        "a": {"b": 3, "c": 0.5},
        "d": [1, 2],
        "e": True,
    }


@pytest.mark.parametrize(
    "override, kind",
    [
        ("data.frames=nine", "int"),  # an optional int: its type read from the annotation, `int | None`
        ("data.mask_prompt=3", "str"),
        ("lora.targets=attn", "list"),
        ("train.tensorboard=1", "bool"),
        ("stage1.micro_batch=true", "int"),  # a bool is not an int
    ],
)
def test_a_value_of_the_wrong_type_is_refused_by_its_annotation(override, kind):
    with pytest.raises(SetseqError, match=rf"config key '{override.split('=')[0]}' must be {kind}, got"):
        resolve_config(None, None, [override])


def test_numbers_are_read_as_the_annotation_says():
    cfg = resolve_config(None, None, ["stage1.lr='1e-3'", "lora.alpha=2", "data.fps=12", "data.end=null"])
    assert cfg.stage1.lr == 1e-3 and cfg.lora.alpha == 2 and cfg.data.fps == 12 and cfg.data.end is None
