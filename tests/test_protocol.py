"""Every backbone implements the `Backbone` protocol's methods with the protocol's signature.

Subclassing `Backbone` checks hook names only (a misspelt one is refused); this compares each method's
parameters (name, kind, default) with the base's, so a family whose `predict` lost `self_cond`, renamed a
keyword, or made an optional argument required fails here."""

from __future__ import annotations

import inspect

import pytest

from setseq.backbones.base import Backbone
from setseq.backbones.registry import families
from setseq.backbones.toy import ToyBackbone

METHODS = [n for n, v in vars(Backbone).items() if inspect.isfunction(v) and not n.startswith("_")]
# Every registered family's backbone class (a family added to the registry is checked too).
CLASSES = [ToyBackbone, *(f.backbone for f in families() if f.backbone is not None)]


def test_the_protocol_has_the_methods_the_recipes_call():
    assert {
        "encode_prompt",
        "encode_video",
        "decode_latents",
        "sample_sigmas",
        "predict",
        "generate",
    } <= set(METHODS)
    # ... and every hook training, generation, memory planning and export call, declared with its default
    assert {"noisy", "training_target", "sigma_share", "image_condition", "text_embeddings"} <= set(METHODS)


def _mismatches(cls: type) -> list[str]:
    found = []
    for name in METHODS:
        impl = getattr(cls, name, None)
        if not callable(impl):
            found.append(f"{name} missing")
            continue
        want = inspect.signature(getattr(Backbone, name)).parameters
        got = inspect.signature(impl).parameters
        for p in want.values():
            q = got.get(p.name)
            if q is None:
                found.append(f"{name}: no parameter {p.name!r}")
            elif q.kind != p.kind or q.default != p.default:
                found.append(f"{name}: {p.name!r} is {q} where the protocol has {p}")
        for q in got.values():  # extra parameters must be optional (image=, for image-to-video)
            if (
                q.name not in want
                and q.default is inspect.Parameter.empty
                and q.kind not in (q.VAR_KEYWORD, q.VAR_POSITIONAL)
            ):
                found.append(f"{name}: extra required parameter {q.name!r}")
    return found


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_backbone_methods_match_the_protocol(cls):
    assert _mismatches(cls) == []


def test_the_check_sees_a_drifted_signature():
    class Drifted(ToyBackbone):
        def predict(self, noisy, sigmas, prompt):  # self_cond dropped
            return noisy

        def generate(
            self,
            prompt,
            negative_prompt="",
            *,
            frames,
            height=None,
            width=None,
            steps=None,
            guidance_scale=None,
            seed=0,
            progress=False,
        ):  # frames made required
            raise NotImplementedError

    found = _mismatches(Drifted)
    assert any("predict: no parameter 'self_cond'" in f for f in found)
    assert any(f.startswith("generate: 'frames'") for f in found)
