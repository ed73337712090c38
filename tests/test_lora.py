"""The Set-and-Sequence LoRA layer: math, masks, stages, merge."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from setseq import lora as L
from setseq.errors import SetseqError


class Block(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.to_q = nn.Linear(d, d)
        self.ffn = nn.Linear(d, 2 * d)
        self.other = nn.Linear(d, d)

    def forward(self, x):
        return self.ffn(self.to_q(x)).sum(-1, keepdim=True) + self.other(x)


def make(basis="down", rank=4, seed=0):
    torch.manual_seed(0)
    m = nn.Sequential(Block(), Block())
    layers = L.inject(m, L.LoraSpec(rank, 2.0 * rank, basis, (r"to_q$", r"ffn$")), seed=seed)
    return m, layers


@pytest.mark.parametrize("basis", ["down", "up"])
def test_injection_targets_and_freezes(basis):
    m, layers = make(basis)
    assert sorted(layers) == ["0.ffn", "0.to_q", "1.ffn", "1.to_q"]
    assert isinstance(m[0].other, nn.Linear) and not isinstance(m[0].other, L.SetSeqLinear)
    assert all(not p.requires_grad for n, p in m.named_parameters() if "base" in n or "other" in n)


@pytest.mark.parametrize("basis", ["down", "up"])
def test_math_matches_docstring_and_merge(basis):
    m, layers = make(basis)
    torch.manual_seed(1)
    for layer in layers.values():  # non-trivial values everywhere
        for p in (layer.down, layer.up, layer.motion):
            p.data.normal_()
    lay = layers["0.to_q"]
    x = torch.randn(5, 16)
    s = lay.alpha / lay.rank
    L.set_scales(m, identity=0.7, motion=1.3)
    if basis == "down":
        dw = s * (0.7 * lay.up + 1.3 * lay.motion) @ lay.down
    else:
        dw = s * lay.up @ (0.7 * lay.down + 1.3 * lay.motion)
    expected = x @ (lay.base.weight + dw).T + lay.base.bias
    m.eval()
    torch.testing.assert_close(lay(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lay.delta_weight(), dw)
    y = m(x)
    w0 = lay.base.weight.clone()
    L.merge(m)
    torch.testing.assert_close(m(x), y, rtol=1e-5, atol=1e-5)  # merged == unmerged forward
    L.unmerge(m)
    torch.testing.assert_close(lay.base.weight, w0, rtol=0, atol=1e-5)  # up to fp32 rounding
    torch.testing.assert_close(m(x), y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("basis", ["down", "up"])
def test_zero_residual_leaves_stage1_output(basis):
    m, layers = make(basis)
    for layer in layers.values():
        layer.up.data.normal_()
    x = torch.randn(3, 16)
    m.eval()
    L.set_scales(m, motion=0.0)
    y_id = m(x)
    L.set_scales(m, motion=1.0)
    assert all(float(layer.motion.detach().abs().max()) == 0.0 for layer in layers.values())
    torch.testing.assert_close(m(x), y_id, rtol=0, atol=0)


def test_stage_trainable_sets():
    m, layers = make("down")
    p1 = L.set_stage(m, 1, 0.8)
    assert {id(p) for p in p1} == {id(p) for layer in layers.values() for p in (layer.down, layer.up)}
    p2 = L.set_stage(m, 2, 0.5)
    assert {id(p) for p in p2} == {id(layer.motion) for layer in layers.values()}
    assert L.set_stage(m, 0) == []
    assert not any(p.requires_grad for p in m.parameters())


@pytest.mark.parametrize(
    "basis,stage,p", [("down", 1, 0.8), ("down", 2, 0.5), ("up", 1, 0.8), ("up", 2, 0.5)]
)
def test_dropconnect_statistics(basis, stage, p):
    m, layers = make(basis, rank=64)
    lay = layers["0.ffn"]
    for t in (lay.down, lay.up, lay.motion):
        t.data.fill_(1.0)
    L.set_stage(m, stage, p)
    m.train()
    gen = torch.Generator().manual_seed(0)
    L.draw_masks(m, gen)
    u1, d1 = lay.factors()
    u_same, d_same = lay.factors()  # a recomputed forward (gradient checkpointing) sees the same mask
    L.draw_masks(m, gen)
    u2, d2 = lay.factors()
    s = lay.scaling
    # Which factor holds the masked, trainable coefficients in each reading and stage.
    masked = {
        ("down", 1): lambda u, d: u / s,
        ("down", 2): lambda u, d: u / s - 1.0,
        ("up", 1): lambda u, d: d,
        ("up", 2): lambda u, d: d - 1.0,
    }[(basis, stage)]
    # scales 1, all tensors 1: stage 1 applies coeff * M (identity alone); stage 2 coeff + motion * M
    mask1 = masked(u1, d1)
    kept = (mask1 != 0).float().mean().item()
    assert abs(kept - (1 - p)) < 0.03, kept  # drop rate p
    nonzero = mask1[mask1 != 0]
    torch.testing.assert_close(nonzero, torch.full_like(nonzero, 1 / (1 - p)))  # inverted scaling
    assert torch.equal(masked(u_same, d_same), mask1)
    assert not torch.equal(masked(u2, d2), mask1)  # a fresh mask every step
    # The basis is never masked.
    other = d1 if basis == "down" else u1 / s
    assert torch.equal(other, torch.ones_like(other))
    # No mask at inference.
    m.eval()
    u3, d3 = lay.factors()
    assert torch.equal(masked(u3, d3), torch.ones_like(masked(u3, d3)))


@pytest.mark.parametrize("basis", ["down", "up"])
def test_masked_coefficients_are_exactly_coefficient_times_mask_times_scalar(basis):
    """The mask times its scalar is formed once per step; the coefficients it gives are bit for bit
    coefficient * mask * (alpha / r) / (1 - p), in every forward of the step, and follow a new scale."""
    m, layers = make(basis, rank=8)
    lay = layers["0.ffn"]
    with torch.no_grad():
        for t in (lay.down, lay.up, lay.motion):
            t.normal_(generator=torch.Generator().manual_seed(3))
    L.set_stage(m, 1, 0.8)
    m.train()
    L.draw_masks(m, torch.Generator().manual_seed(0))
    s, keep = lay.scaling, lay._keep
    assert keep is not None
    for identity_scale in (1.0, 1.0, 0.7):
        lay.identity_scale = identity_scale
        u, d = lay.factors()
        got = u if basis == "down" else d
        k = (s if basis == "down" else 1.0) * identity_scale / (1 - 0.8)
        assert torch.equal(got, lay.coefficients * keep * k)


def test_state_roundtrip_and_shape_errors():
    m, layers = make("up")
    for layer in layers.values():
        for t in (layer.down, layer.up, layer.motion):
            t.data.normal_()
    state = L.identity_state(m) | L.motion_state(m)
    m2, _ = make("up", seed=5)
    L.load_state(m2, state)
    x = torch.randn(2, 16)
    m.eval(), m2.eval()
    torch.testing.assert_close(m(x), m2(x))
    m3, _ = make("up", rank=8)
    with pytest.raises(SetseqError, match="shape"):
        L.load_state(m3, state)


def test_inject_errors():
    m = nn.Sequential(Block())
    with pytest.raises(SetseqError, match="no linear layer matches"):
        L.inject(m, L.LoraSpec(4, 4, "down", (r"nothing$",)))
    L.inject(m, L.LoraSpec(4, 4, "down", (r"to_q$",)))
    with pytest.raises(SetseqError, match="already carries"):
        L.inject(m, L.LoraSpec(4, 4, "down", (r"to_q$",)))


@pytest.mark.parametrize("basis", ["down", "up"])
@pytest.mark.parametrize("stage", [1, 2])
def test_fused_path_matches_per_token_values_and_gradients(basis, stage):
    """The one-matmul path (W + U D) x gives the per-token path's output and gradients (x, U, D, residual),
    with this step's DropConnect mask; `auto` switches on the token count."""
    results = {}
    for path in ("per_token", "fused"):
        m, layers = make(basis)
        torch.manual_seed(1)
        for layer in layers.values():
            for p in (layer.down, layer.up, layer.motion):
                p.data.normal_(std=0.3)
        params = L.set_stage(m, stage, dropconnect=0.5)
        L.set_path(m, path)
        m.train()
        L.draw_masks(m, torch.Generator().manual_seed(3))
        x = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(4), requires_grad=True)
        out = m(x)
        (out**2).sum().backward()
        results[path] = (out.detach(), x.grad.clone(), [p.grad.clone() for p in params])
    (o1, gx1, gp1), (o2, gx2, gp2) = results["per_token"], results["fused"]
    assert len(gp1) == len(gp2) == (8 if stage == 1 else 4)
    for a, b in [(o1, o2), (gx1, gx2), *zip(gp1, gp2)]:
        scale = float(a.abs().max())
        assert scale > 0
        assert float((b - a).abs().max()) <= 1e-5 * scale  # float32 rounding of a different summation order


@pytest.mark.parametrize(
    "shape, need, switch",
    [
        # (in, out, rank), (need_x, need_u, need_d): the first token count that goes fused
        ((512, 512, 32), (True, True, True), 520),  # stage 1 of benchmarks/bench_step.py: 512 per-token
        ((512, 2048, 32), (True, True, True), 825),  # its FFN up-projection
        ((128, 128, 16), (True, True, True), 132),  # the toy model, rank 16: stage 1 runs 128 tokens
        ((128, 128, 16), (True, True, False), 89),  # its stage 2 (the motion residual only), 1152 tokens
        ((128, 128, 16), (False, False, False), 66),  # inference
        ((5120, 5120, 128), (True, True, True), 5140),  # Wan 14B's attention, rank 128
    ],
)
def test_choose_path_switches_where_the_multiply_adds_cross(shape, need, switch):
    """`auto` takes the path with fewer multiply-adds: per-token below the crossing token count, fused from it.
    The crossings follow from the counts: a square layer of width d at rank r trains stage 1 fused from
    2 d (r + 1) / (2 r + 1) tokens, stage 2 from 2 d (r + 1) / (3 r + 1), infers fused from d (r + 1) / (2 r + 1)."""
    in_f, out_f, r = shape
    flags = dict(zip(("need_x", "need_u", "need_d"), need))
    assert L.choose_path(switch - 1, in_f, out_f, r, **flags) == "per_token"
    assert L.choose_path(switch, in_f, out_f, r, **flags) == "fused"
    assert L.choose_path(100 * switch, in_f, out_f, r, **flags) == "fused"


def test_auto_path_follows_the_tokens_and_the_gradients_needed(monkeypatch):
    """A layer on `auto` asks `choose_path` with its forward's token count and what needs a gradient, and
    runs the op it names (with no gradient needed, the same math without an autograd op)."""
    m, layers = make("down")
    asked: list[tuple] = []
    choose = L.choose_path
    monkeypatch.setattr(L, "choose_path", lambda n, *a, **k: asked.append((n, k)) or choose(n, *a, **k))
    calls: list[str] = []
    for cls, name in ((L.FusedLinear, "fused"), (L.PerTokenLinear, "per_token")):
        monkeypatch.setattr(cls, "apply", lambda *a, name=name: calls.append(name) or a[0].new_zeros(()))
    lay = layers["0.to_q"]  # Linear(16, 16), rank 4: stage 1 goes fused from 2 * 16 * 5 / 9 = 17.8 tokens
    L.set_stage(m, 1)
    lay(torch.randn(17, 16, requires_grad=True))
    lay(torch.randn(2, 9, 16, requires_grad=True))
    assert calls == ["per_token", "fused"]
    assert asked == [(n, dict(need_x=True, need_u=True, need_d=True)) for n in (17, 18)]
    with torch.no_grad():  # inference goes fused from 16 * 5 / 9 = 8.9 tokens, outside any autograd op
        lay(torch.randn(8, 16))
        lay(torch.randn(9, 16))
    assert calls == ["per_token", "fused"]
    assert asked[2:] == [(n, dict(need_x=False, need_u=False, need_d=False)) for n in (8, 9)]
    L.set_stage(m, 2)  # the residual only: no dD
    lay(torch.randn(4, 16, requires_grad=True))
    assert asked[-1] == (4, dict(need_x=True, need_u=True, need_d=False))
    L.set_path(m, "per_token")
    lay(torch.randn(4, 100, 16, requires_grad=True))
    assert calls[-1] == "per_token" and len(asked) == 5
    with pytest.raises(SetseqError, match="lora.path"):
        L.set_path(m, "fast")  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["per_token", "fused"])
def test_no_grad_forward_matches_the_autograd_ops(path):
    """With nothing to differentiate the layer computes outside its autograd op: the same output."""
    m, layers = make("down")
    lay = layers["0.ffn"]
    with torch.no_grad():
        lay.up.normal_(std=0.3, generator=torch.Generator().manual_seed(1))
    L.set_stage(m, 1, dropconnect=0.5)
    L.set_path(m, path)
    m.train()
    L.draw_masks(m, torch.Generator().manual_seed(2))
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain = lay(x)
    op = lay(x.clone().requires_grad_(True)).detach()
    assert torch.allclose(plain, op, rtol=0, atol=1e-6 * float(op.abs().max())) and float(op.abs().max()) > 0


@pytest.mark.parametrize("stage", [1, 2, 0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_token_op_matches_plain_autograd(stage, dtype):
    """The per-token custom op gives plain autograd's y = W x + b + U (D x) and its gradients (x, U, D or the
    residual), in float32 and with a bf16 base (the low-rank product in float32, rounded once)."""
    torch.manual_seed(0)
    layer = L.SetSeqLinear(
        nn.Linear(24, 40).to(dtype), 4, 8.0, "down", generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        for p in (layer.up, layer.motion):
            p.normal_(std=0.2)
    params = L.set_stage(nn.Sequential(layer), stage, dropconnect=0.5 if stage else 0.0)  # type: ignore[arg-type]
    layer.train(stage != 0)
    L.draw_masks(nn.Sequential(layer), torch.Generator().manual_seed(2))
    layer.path = "per_token"
    x0 = torch.randn(3, 11, 24, generator=torch.Generator().manual_seed(3)).to(dtype)
    runs = []
    for custom in (True, False):
        x = x0.clone().requires_grad_(True)
        if custom:
            out = layer(x)
        else:
            u, d = layer.factors()
            y = layer.base(x)
            out = y + ((x.float() @ d.t()) @ u.t()).to(y.dtype)
        out.float().square().mean().backward()
        runs.append((out.detach().float(), x.grad.float(), [p.grad.clone() for p in params]))
        for p in params:
            p.grad = None
    (o1, gx1, gp1), (o2, gx2, gp2) = runs
    assert len(gp1) == {1: 2, 2: 1, 0: 0}[stage]
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for a, b in [(o2, o1), (gx2, gx1), *zip(gp2, gp1)]:
        assert float((b - a).abs().max()) <= tol * float(a.abs().max()) and float(a.abs().max()) > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_base_weights_match_and_keep_no_upcast_copy(dtype):
    """fp8 storage (per-row scale) gives the full-precision layer's output and LoRA gradients within fp8's
    rounding, stores 1 byte per weight, and autograd saves the fp8 weight, never an upcast (out, in) copy."""
    torch.manual_seed(0)
    base = nn.Linear(64, 96).to(dtype)
    runs = {}
    for fp8 in (False, True):
        lin = nn.Linear(64, 96).to(dtype)
        lin.load_state_dict(base.state_dict())
        layer = L.SetSeqLinear(lin, 8, 8.0, "down", generator=torch.Generator().manual_seed(1))
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            layer.up.normal_(std=0.05, generator=g)
        if fp8:
            layer.store_base_fp8()
            assert lin.weight.dtype == torch.float8_e4m3fn and lin.weight.element_size() == 1
        params = L.set_stage(nn.Sequential(layer), 2, dropconnect=0.0)
        with torch.no_grad():
            layer.motion.normal_(std=0.05, generator=g)
        saved = []
        x = torch.randn(5, 40, 64, generator=torch.Generator().manual_seed(2)).to(dtype).requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(lambda t, keep=saved: keep.append(t) or t, lambda t: t):
            out = layer(x)
        out.float().square().mean().backward()
        runs[fp8] = (out.detach().float(), x.grad.float(), [p.grad.float() for p in params], saved)
    (o0, gx0, gp0, _), (o1, gx1, gp1, saved) = runs[False], runs[True]
    for a, b in [(o0, o1), (gx0, gx1), *zip(gp0, gp1)]:
        rel = float((b - a).norm() / a.norm())
        assert 0 < rel < 0.05, rel  # e4m3 keeps 3 mantissa bits: a few percent, not zero
    weights = [t for t in saved if t.shape == (96, 64)]
    assert weights and all(t.dtype == torch.float8_e4m3fn for t in weights)


def test_fp8_spec_applies_on_injection_and_refuses_merge():
    outs = []
    for fp8 in (False, True):
        torch.manual_seed(0)
        m = nn.Sequential(Block(), Block())
        layers = L.inject(m, L.LoraSpec(4, 4.0, "down", (r"to_q$",), fp8=fp8))
        outs.append(m(torch.randn(2, 16, generator=torch.Generator().manual_seed(5))).detach())
    assert all(lay.base.weight.dtype == torch.float8_e4m3fn for lay in layers.values())
    assert m[0].other.weight.dtype == torch.float32  # not a target: untouched
    assert 0 < float((outs[1] - outs[0]).norm() / outs[0].norm()) < 0.05
    with pytest.raises(SetseqError, match="fp8"):
        L.merge(m)
