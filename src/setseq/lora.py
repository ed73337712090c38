"""The Set-and-Sequence LoRA layer: an identity basis + coefficients, and a motion residual on the coefficients.

For a frozen linear `y = W x + b` (W: (out, in)), with `s = alpha / r`:

    basis: down  (basis = D1 (r, in), coefficients = U1 (out, r), motion residual U2 (out, r))
        dW = s * (s_id * U1 * M + s_mot * U2 * M') @ D1
    basis: up    (basis = U1 (out, r), coefficients = D1 (r, in), motion residual D2 (r, in))
        dW = s * U1 @ (s_id * D1 * M + s_mot * D2 * M')

`s_id`, `s_mot` are the identity and motion scales (1.0 by default, set at inference). `M`, `M'` are
DropConnect masks on the *trainable* coefficient matrix of the current stage only (stage 1: the identity
coefficients, p = 0.8; stage 2: the motion residual, p = 0.5), with inverted scaling `M = Bernoulli(1-p)/(1-p)`,
a fresh mask every training step (drawn once per step by `draw_masks`, so a forward recomputed under
gradient checkpointing sees the same one), and no mask at inference. The motion residual starts at zero,
so stage 2 starts exactly at the stage-1 model.

Two ways to apply the layer, same values and gradients (`lora.path`), each one custom autograd op (a forward
with nothing to differentiate runs the same math without it):

    per-token  y = W x + U (D x)                       three matmuls over the tokens (peft's way), the low-rank
               one accumulated into W x in place; backward: h = g U once, dU = g^T (D x) from the forward's
               D x, dD = h^T x, dx = g W + h D accumulated in place; each only when needed, and x is kept
               only when dD needs it.
    fused      y = (W + U D) x                         one matmul over the tokens; U D formed once per step
               backward: dx = g (W + U D), dU = g^T (x D^T), dD = (g U)^T x, each only when needed;
               W + U D is re-formed in backward, never kept.

The fused path skips the low-rank products over the tokens in the forward (and in dx); it pays (out, in, r)
to form U D, twice when dx is needed, so it pays off when the tokens outnumber the features, which is every
video DiT layer in training. `auto` counts the multiply-adds of both for the layer's shape, the forward's
token count and the gradients this forward needs (`choose_path`), and takes the cheaper: a square layer of
width d at rank r trains stage 1 (dU, dD and dx) fused from 2 d (r + 1) / (2 r + 1) ~ d tokens up, stage 2
(dU, dx) from 2 d (r + 1) / (3 r + 1) ~ 2 d / 3, and infers fused from d (r + 1) / (2 r + 1) ~ d / 2 (the
crossings measured in BENCHMARKS.md, "The LoRA layer's fused path").
In bf16 the sum W + U D is rounded to bf16, as diffusers' `fuse_lora` does; the gradients of U and D are
computed in float32.

fp8 base weights (`model.fp8=true`): the frozen weight of every LoRA-targeted linear is stored in
float8_e4m3fn with one float scale per output row (amax / 448), half of bf16's bytes. The layer then always
takes the fused path with the weight rebuilt as `W8 * scale` in the compute dtype inside the op, and again in
backward: only the fp8 weight is kept, never its upcast copy (a plain cast before `F.linear` would leave a
bf16 copy per layer saved for backward, which is why diffusers' layerwise casting does not save memory in
training).

A merged export keeps the same rank: basis down gives `U = s (s_id U1 + s_mot U2)`, `D = D1`; basis up gives
`U = s U1`, `D = s_id D1 + s_mot D2` (alpha is folded into U so loaders need no alpha).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from setseq.config import LORA_PATHS
from setseq.dtensors import whole
from setseq.errors import SetseqError
from setseq.functional.regularizers import dropconnect_mask

Basis = Literal["down", "up"]
Path = Literal["auto", "fused", "per_token"]
FP8_MAX = 448.0  # largest finite float8_e4m3fn
Stage = Literal[1, 2, 0]  # 0 = inference (nothing trainable, no mask)


class HostLinear(nn.Linear):
    """A frozen linear whose weight stays in host memory (`setseq.offload.StreamedLinear`): `compute_device` is
    where its inputs, and the parameters of a LoRA injected on it, live."""

    compute_device: torch.device


class SetSeqLinear(nn.Module):
    """A frozen `nn.Linear` plus the identity LoRA and the motion residual. See the module docstring."""

    def __init__(
        self, base: nn.Linear, rank: int, alpha: float, basis: Basis, generator: torch.Generator | None = None
    ):
        super().__init__()
        if basis not in ("down", "up"):
            raise ValueError(f"basis must be 'down' or 'up', got {basis!r}")
        self.base = base
        self.rank = rank
        self.alpha = float(alpha)
        self.basis = basis
        out_f, in_f = base.out_features, base.in_features
        # A block-swapped linear (setseq.offload) keeps its weight on the host; its LoRA lives on the device.
        dev, dt = (
            base.compute_device if isinstance(base, HostLinear) else base.weight.device,
            base.weight.dtype,
        )
        # peft's default init: down-projection Kaiming-uniform, up-projection zero, so dW starts at 0.
        self.down = nn.Parameter(torch.empty(rank, in_f, device=dev, dtype=torch.float32))  # D1 (r, in)
        bound = 1.0 / math.sqrt(in_f)
        with torch.no_grad():
            self.down.uniform_(-bound, bound, generator=generator)
        self.up = nn.Parameter(torch.zeros(out_f, rank, device=dev, dtype=torch.float32))  # U1 (out, r)
        # The motion residual lives on the coefficients: U2 (out, r) for basis down, D2 (r, in) for basis up.
        res_shape = (out_f, rank) if basis == "down" else (rank, in_f)
        self.motion = nn.Parameter(torch.zeros(res_shape, device=dev, dtype=torch.float32))
        self.identity_scale = 1.0
        self.motion_scale = 1.0
        self.stage: Stage = 0
        self.dropconnect = 0.0  # drop probability on the trainable coefficients of the current stage
        # This step's DropConnect mask, drawn by `draw_masks` and kept until the next draw, so that a forward
        # recomputed under gradient checkpointing sees the same mask. None: a fresh mask every forward.
        self._keep: torch.Tensor | None = None
        self._keep_scaled: tuple[float, torch.Tensor] | None = None  # (scalar, _keep * scalar), see `_scaled`
        self.merged = False
        self._merged_delta: torch.Tensor | None = None
        self.path: Path = "auto"
        # Per-row scale (out, 1) when the base weight is stored in fp8 (`store_base_fp8`); None otherwise.
        self.weight_scale: torch.Tensor | None
        self.register_buffer("weight_scale", None, persistent=False)
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        _ = dt

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    # -- the pieces: which tensor is basis / coefficients in each reading ------------------------------------
    @property
    def coefficients(self) -> nn.Parameter:
        """The identity coefficients B1 (U1 for basis down, D1 for basis up)."""
        return self.up if self.basis == "down" else self.down

    @property
    def basis_tensor(self) -> nn.Parameter:
        """The identity basis A1 (D1 for basis down, U1 for basis up)."""
        return self.down if self.basis == "down" else self.up

    def _scaled(self, t: torch.Tensor, scale: float, trainable_here: bool) -> torch.Tensor:
        """scale * t, with this stage's DropConnect mask when `t` is its trainable coefficient matrix."""
        if self.training and trainable_here and self.dropconnect > 0.0:
            k = scale / (1.0 - self.dropconnect)  # inverted scaling folded into the scalar
            if self._keep is None:
                keep = dropconnect_mask(
                    t.shape, self.dropconnect, None, device=t.device, dtype=t.dtype, scaled=False
                )
                return t * keep * k
            # The step's mask times its scalar, formed once per step (no gradient): one product with t in each
            # forward and in backward. The same values as t * keep * k: keep is 0 or 1, so nothing rounds.
            if self._keep_scaled is None or self._keep_scaled[0] != k:
                self._keep_scaled = (k, self._keep * k)
            return t * self._keep_scaled[1]
        return t * scale

    def draw_mask(self, generator: torch.Generator | None) -> None:
        """Draw this step's DropConnect mask for the current stage's trainable coefficients."""
        self._keep_scaled = None
        if self.stage in (1, 2) and self.dropconnect > 0.0:
            t = self.coefficients if self.stage == 1 else self.motion
            self._keep = dropconnect_mask(
                t.shape, self.dropconnect, generator, device=t.device, dtype=t.dtype, scaled=False
            )
        else:
            self._keep = None

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(U, D) of the effective low-rank update dW = U @ D, with masks, scales and alpha applied.

        The scalars (alpha / r, identity and motion scales, 1 / (1 - p)) multiply the small (out, r) or (r, in)
        coefficient matrices, never the (tokens, out) activations. Stage 1 trains and applies the identity
        alone (the residual is zero there, unless --init-lora brought one for stage 2 to continue)."""
        s = self.scaling
        # alpha / r goes into U: into the coefficients for basis down, into the basis for basis up.
        c = s if self.basis == "down" else 1.0
        combined = self._scaled(self.coefficients, c * self.identity_scale, self.stage == 1)
        if self.stage != 1 and self.motion_scale != 0.0:
            combined = combined + self._scaled(self.motion, c * self.motion_scale, self.stage == 2)
        if self.basis == "down":
            return combined, self.down
        return s * self.up, combined

    def delta_weight(self) -> torch.Tensor:
        """dW (out, in) at the current scales, without masks (call in eval mode)."""
        u, d = self.factors()
        return u @ d

    @torch.no_grad()
    def store_base_fp8(self) -> None:
        """Store the frozen base weight in float8_e4m3fn with a per-row scale (see the module docstring)."""
        if self.weight_scale is not None:
            return
        w = self.base.weight.data
        scale = w.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX  # (out, 1)
        self.base.weight.data = (w.float() / scale).to(torch.float8_e4m3fn)
        self.weight_scale = scale.to(self.down.device, w.dtype)  # on the device even when W is on the host

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        off = self.merged or (self.identity_scale == 0.0 and self.motion_scale == 0.0)
        # fp8 or host-memory (block swap) base weight: always the fused op, which upcasts or copies it inside.
        # Under FSDP2 (model.fsdp) the block's weights are already gathered here: plain tensors, as without it.
        if self.weight_scale is not None or self.base.weight.device != x.device:
            u, d = (None, None) if off else self.factors()
            return FusedLinear.apply(x, self.base.weight, self.base.bias, u, d, self.weight_scale)
        if off:
            return self.base(x)
        u, d = self.factors()
        grads = torch.is_grad_enabled()
        need = dict(
            need_x=grads and x.requires_grad,
            need_u=grads and u.requires_grad,
            need_d=grads and d.requires_grad,
        )
        path = self.path
        if path == "auto":
            path = choose_path(x.numel() // x.shape[-1], d.shape[1], u.shape[0], d.shape[0], **need)
        w, b = self.base.weight, self.base.bias
        if not any(need.values()):
            # Nothing to differentiate (inference, the self-conditioning pass): the same math without an
            # autograd op around it, whose overhead is a large part of a small layer's forward.
            if path == "fused":
                return F.linear(x, _effective_weight(w, u, d, None, x.dtype, x.device), b)
            return _per_token(x, w, b, u, d)[0]
        if path == "fused":
            return FusedLinear.apply(x, w, b, u, d, None)
        return PerTokenLinear.apply(x, w, b, u, d)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold dW into the base weight (inference only); `unmerge` restores it exactly up to rounding."""
        if self.merged:
            return
        if self.weight_scale is not None:
            raise SetseqError("cannot merge a LoRA into fp8 base weights", "load the model without model.fp8")
        was_training = self.training
        self.eval()
        delta = self.delta_weight().to(self.base.weight.device, self.base.weight.dtype)
        self.train(was_training)
        self.base.weight.add_(delta)
        self._merged_delta = delta
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        assert self._merged_delta is not None
        self.base.weight.sub_(self._merged_delta)
        self._merged_delta = None
        self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, basis={self.basis}, stage={self.stage}"


def _effective_weight(weight, u, d, scale, dtype, device) -> torch.Tensor:
    """W (copied to `device` when it lives in host memory, upcast from fp8 by its row scale when `scale` is
    given) + U D, in `dtype`."""
    weight = weight.to(device, non_blocking=True)
    w = weight if scale is None else weight.to(dtype) * scale
    return w if u is None else w + (u @ d).to(w.dtype)


class FusedLinear(torch.autograd.Function):
    """y = x (W + U D)^T + b with W, b frozen; gradients for x, U, D as needed. See the module docstring.
    `u`, `d` may be None (no LoRA applied); `scale` is the row scale of an fp8 `weight`, else None."""

    @staticmethod
    def forward(ctx, x, weight, bias, u, d, scale):  # type: ignore[override]
        _, _, _, need_u, need_d = ctx.needs_input_grad[:5]
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        # Only what the needed gradients read: x for dD, D x (N, r) for dU (not x when D is frozen).
        h = x2.to(u.dtype) @ d.t() if need_u and u is not None else None
        ctx.save_for_backward(x2 if need_d else None, h, weight, u, d, scale)
        return F.linear(x, _effective_weight(weight, u, d, scale, x.dtype, x.device), bias)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x2, h, weight, u, d, scale = ctx.saved_tensors
        need_x, _, _, need_u, need_d = ctx.needs_input_grad[:5]
        gx = gu = gd = None
        if need_x:
            gx = g @ _effective_weight(weight, u, d, scale, g.dtype, g.device)
        if (need_u or need_d) and u is not None:
            g2 = g.reshape(-1, g.shape[-1]).to(u.dtype)  # (N, out)
            if need_u:
                gu = g2.t() @ h  # (out, r)
            if need_d:
                gd = (g2 @ u).t() @ x2.to(u.dtype)  # (r, in)
        return gx, None, None, gu, gd, None


def choose_path(
    tokens: int, in_f: int, out_f: int, rank: int, *, need_x: bool, need_u: bool, need_d: bool
) -> Literal["fused", "per_token"]:
    """The path with fewer multiply-adds for one forward (and its backward) of a LoRA layer (in_f -> out_f, rank
    `rank`) over `tokens` tokens, given which gradients it needs: of the input (`need_x`, as inside a DiT
    whose earlier layers carry LoRAs), of U (out, r) and of D (r, in). Elementwise adds count one each. A
    tie goes to per-token, the one that keeps no (out, in) temporary. Pure arithmetic on the shapes, so the
    same run takes the same path on every machine and process (resumed runs reproduce bit for bit)."""
    n, r = tokens, rank
    # per-token: D x and U (D x) over the tokens, added into W x; backward h = g U (for dD and dx), dU, dD, dx.
    per_token = n * r * (in_f + out_f) + n * out_f
    per_token += n * r * out_f * ((need_d or need_x) + need_u) + n * r * in_f * (need_d + need_x)
    # fused: W + U D formed in the forward and again in the backward (for dx); dU and dD from x and g.
    form = out_f * in_f * (r + 1)
    fused = form * (1 + need_x) + n * r * (in_f + out_f) * (need_u + need_d)
    return "fused" if fused < per_token else "per_token"


def _per_token(x, weight, bias, u, d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """y = x W^T + b + (x D^T) U^T, the low-rank product in U's dtype (float32) accumulated into the frozen
    output in place (a bf16 base: rounded once into it); also x and D x as (N, in) and (N, r)."""
    x2 = x.reshape(-1, x.shape[-1])
    h = x2.to(d.dtype) @ d.t()  # (N, r)
    y = F.linear(x2, weight, bias)
    if y.dtype == u.dtype:
        y.addmm_(h, u.t())
    else:
        y.add_((h @ u.t()).to(y.dtype))
    return y.reshape(*x.shape[:-1], y.shape[-1]), x2, h


class PerTokenLinear(torch.autograd.Function):
    """y = x W^T + b + (x D^T) U^T with W, b frozen; gradients for x, U, D as needed. The low-rank product
    is computed in U's dtype (float32) and accumulated into the frozen output in place, and h = g U serves
    both dD and dx, so there is no separate (tokens, out) or (tokens, in) add. See the module docstring."""

    @staticmethod
    def forward(ctx, x, weight, bias, u, d):  # type: ignore[override]
        need_x, _, _, need_u, need_d = ctx.needs_input_grad[:5]
        y, x2, h = _per_token(x, weight, bias, u, d)
        # Only what the needed gradients read: x for dD, D x for dU, W for dx.
        ctx.save_for_backward(x2 if need_d else None, h if need_u else None, weight if need_x else None, u, d)
        ctx.x_shape = x.shape
        return y

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x2, h, weight, u, d = ctx.saved_tensors
        need_x, _, _, need_u, need_d = ctx.needs_input_grad[:5]
        g2 = g.reshape(-1, g.shape[-1])
        gl = g2.to(u.dtype)
        gx = gu = gd = None
        if need_u:
            gu = gl.t() @ h  # (out, r)
        if need_d or need_x:
            gh = gl @ u  # (N, r)
            if need_d:
                gd = gh.t() @ x2.to(d.dtype)  # (r, in)
            if need_x:
                gx2 = g2 @ weight
                if gx2.dtype == d.dtype:
                    gx2.addmm_(gh, d)
                else:
                    gx2.add_((gh @ d).to(gx2.dtype))
                gx = gx2.reshape(ctx.x_shape)
        return gx, None, None, gu, gd


def _check_path(path: str) -> None:
    if path not in LORA_PATHS:
        raise SetseqError(
            f"lora.path must be one of {', '.join(LORA_PATHS)}, got {path!r}", "set lora.path=auto"
        )


def set_path(model: nn.Module, path: Path) -> None:
    """How every layer is applied: "fused", "per_token", or "auto" (the cheaper per forward, `choose_path`)."""
    _check_path(path)
    for layer in get_layers(model).values():
        layer.path = path


# --------------------------------------------------------------------------------------------------------------
# Injection and stage control


@dataclass
class LoraSpec:
    rank: int
    alpha: float
    basis: Basis
    targets: tuple[str, ...]
    path: Path = "auto"
    fp8: bool = False  # store the targeted linears' frozen weights in fp8 (SetSeqLinear.store_base_fp8)


def find_targets(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """Names of the `nn.Linear` modules of `model` whose name matches any regex in `patterns` (re.search)."""
    regs = [re.compile(p) for p in patterns]
    return [
        n for n, m in model.named_modules() if isinstance(m, nn.Linear) and any(r.search(n) for r in regs)
    ]


def inject(model: nn.Module, spec: LoraSpec, seed: int = 0) -> dict[str, SetSeqLinear]:
    """Replace each targeted linear of `model` by a `SetSeqLinear` wrapping it; returns {name: layer}.

    Every base parameter of `model` is frozen. Init is seeded, so the same seed gives the same LoRA."""
    if get_layers(model):
        raise SetseqError(
            "this model already carries setseq LoRA layers", "load a fresh model before injecting again"
        )
    names = find_targets(model, spec.targets)
    if not names:
        some = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][:3]
        raise SetseqError(
            f"no linear layer matches the LoRA target patterns {list(spec.targets)} (the model's linear layers "
            f"are named like {', '.join(some) or 'nothing'})",
            "fix lora.targets, or leave it out for the backbone's own targets",
        )
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    layers: dict[str, SetSeqLinear] = {}
    _check_path(spec.path)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child)
        layer = SetSeqLinear(base, spec.rank, spec.alpha, spec.basis, generator=gen)
        layer.path = spec.path
        if spec.fp8:
            layer.store_base_fp8()
        setattr(parent, child, layer)
        layers[name] = layer
    return layers


def get_layers(model: nn.Module) -> dict[str, SetSeqLinear]:
    """{target module name: layer} for every injected layer (names as before injection)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SetSeqLinear)}


def set_stage(model: nn.Module, stage: Stage, dropconnect: float = 0.0) -> list[nn.Parameter]:
    """Make exactly the parameters of `stage` trainable and set its DropConnect; returns them.

    stage 1: identity basis and coefficients; stage 2: the motion residual only; 0: nothing (inference)."""
    if not 0.0 <= dropconnect < 1.0:
        raise SetseqError(
            f"dropconnect must be in [0, 1), got {dropconnect}", "set stage1.dropconnect / stage2.dropconnect"
        )
    params: list[nn.Parameter] = []
    for layer in get_layers(model).values():
        layer.stage = stage
        layer.dropconnect = dropconnect if stage in (1, 2) else 0.0
        layer._keep = layer._keep_scaled = None
        layer.down.requires_grad_(stage == 1)
        layer.up.requires_grad_(stage == 1)
        layer.motion.requires_grad_(stage == 2)
        params += [p for p in (layer.down, layer.up, layer.motion) if p.requires_grad]
    return params


def draw_masks(model: nn.Module, generator: torch.Generator | None) -> None:
    """Draw every layer's DropConnect mask for this (micro-)step from `generator` (a fresh mask each step)."""
    for layer in get_layers(model).values():
        layer.draw_mask(generator)


def set_scales(model: nn.Module, identity: float = 1.0, motion: float = 1.0) -> None:
    """Set the identity and motion scales of every layer (inference-time knobs)."""
    for layer in get_layers(model).values():
        layer.identity_scale = float(identity)
        layer.motion_scale = float(motion)


@contextlib.contextmanager
def switched_off(model: nn.Module) -> Iterator[None]:
    """Every layer of `model` at scale 0 within the block (each skips its LoRA: the base model's own
    forward, bit for bit); the scales are restored after."""
    layers = list(get_layers(model).values())
    scales = [(layer.identity_scale, layer.motion_scale) for layer in layers]
    set_scales(model, 0.0, 0.0)
    try:
        yield
    finally:
        for layer, (i, m) in zip(layers, scales):
            layer.identity_scale, layer.motion_scale = i, m


def merge(model: nn.Module) -> None:
    for layer in get_layers(model).values():
        layer.merge()


def unmerge(model: nn.Module) -> None:
    for layer in get_layers(model).values():
        layer.unmerge()


# --------------------------------------------------------------------------------------------------------------
# State: the identity and motion parts as flat tensor dicts, named by module


def identity_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The identity part (basis and coefficients) of every layer; sharded (DTensor) parameters are gathered,
    so every process must call this."""
    out = {}
    for name, layer in get_layers(model).items():
        out[f"{name}.identity.down"] = whole(layer.down.detach()).cpu().contiguous()
        out[f"{name}.identity.up"] = whole(layer.up.detach()).cpu().contiguous()
    return out


def motion_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The motion residual of every layer (gathered like `identity_state`)."""
    return {
        f"{n}.motion.{'up' if lay.basis == 'down' else 'down'}": whole(lay.motion.detach()).cpu().contiguous()
        for n, lay in get_layers(model).items()
    }


def load_state(
    model: nn.Module, tensors: dict[str, torch.Tensor], *, parts: tuple[str, ...] = ("identity", "motion")
) -> None:
    """Load identity and/or motion tensors saved by `identity_state` / `motion_state`; shapes are checked."""
    layers = get_layers(model)
    for name, layer in layers.items():
        wanted: dict[str, nn.Parameter] = {}
        if "identity" in parts:
            wanted[f"{name}.identity.down"] = layer.down
            wanted[f"{name}.identity.up"] = layer.up
        if "motion" in parts:
            wanted[f"{name}.motion.{'up' if layer.basis == 'down' else 'down'}"] = layer.motion
        for key, param in wanted.items():
            if key not in tensors:
                raise SetseqError(
                    f"the LoRA file has no tensor '{key}'",
                    "it was trained with other lora.targets or basis; use the run's own config",
                )
            t = tensors[key]
            if tuple(t.shape) != tuple(param.shape):
                raise SetseqError(
                    f"LoRA tensor '{key}' has shape {tuple(t.shape)} but this model needs {tuple(param.shape)}",
                    "the file was made for another backbone size or rank; use a LoRA trained on this model",
                )
            with torch.no_grad():
                param.copy_(t.to(param.dtype))
