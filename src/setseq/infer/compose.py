"""`setseq compose`: generate with several dynamic concepts at once.

Two ways:
- a jointly trained run (`multi.concepts` in the training config: one shared identity basis, one motion
  residual, stitched videos): it is one LoRA, and composing is generating with a prompt that names several of
  its concept tokens;
- a training-free weighted sum of separately trained runs: each run's update `dW_i = U_i D_i` (identity and
  motion at their scales) is added to the frozen weights as `W + sum_i w_i dW_i`. Fast (no training), at a
  cost in quality, which `scripts/compose_cost.py` measures: each concept's fidelity under the sum against its
  own run alone and against a joint run.
"""

from __future__ import annotations

from pathlib import Path

import torch

from setseq.errors import SetseqError
from setseq.export import SetseqLora, check_compatible, load_setseq, merged_factors
from setseq.infer.generate import Personalized, check_run_model


@torch.no_grad()
def add_weighted_sum(
    transformer: torch.nn.Module,
    loras: list[SetseqLora],
    weights: list[float],
    identity_scale: float = 1.0,
    motion_scale: float = 1.0,
) -> int:
    """Add `sum_i w_i dW_i` into the transformer's linear weights in place; returns the modules changed."""
    if len(weights) != len(loras):
        raise SetseqError(f"{len(weights)} weights for {len(loras)} LoRAs", "give one weight per run")
    linears = {n: m for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    touched: set[str] = set()
    for lora, w in zip(loras, weights):
        missing = [m for m in lora.modules if m not in linears]
        if missing:
            raise SetseqError(
                f"a LoRA has {len(missing)} modules this model does not have (e.g. {missing[0]!r})",
                "compose runs trained on the same base model",
            )
        for module in lora.modules:
            down, up = merged_factors(lora, module, identity_scale, motion_scale)
            weight = linears[module].weight
            weight.add_((w * (up @ down)).to(weight.dtype))
            touched.add(module)
    return len(touched)


def load_composition(
    runs: list[str | Path],
    weights: list[float] | None = None,
    model: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    log=print,
) -> tuple[Personalized, list[str]]:
    """A model ready to generate several concepts, and the concept tokens it knows.

    One run: that run's LoRA (a jointly trained one knows several tokens). Several runs: their weighted sum
    (weights default to 1 each) merged into the base model of the first run."""
    if not runs:
        raise SetseqError("no run to compose", "pass one jointly trained run or several runs")
    if len(runs) == 1:
        if weights not in (None, [1.0]):
            raise SetseqError("weights apply to several runs", "drop --weights, or pass several runs")
        pm = Personalized.load(runs[0], model=model, device=device, dtype=dtype, log=log)
        return pm, pm.lora.tokens  # type: ignore[union-attr]
    loras = [load_setseq(r) for r in runs]
    weights = weights or [1.0] * len(loras)
    tokens: list[str] = []
    for r, lora in zip(runs, loras):
        for t in lora.tokens:
            if t in tokens:
                raise SetseqError(
                    f"two runs share the concept token '{t}' ({r} and an earlier one)",
                    "compose concepts trained with different tokens (concept.token / concept.motion_token)",
                )
            tokens.append(t)
    if not model:
        check_run_model(str(loras[0].meta.get("model_id") or "toy"), runs[0])
    if dtype == "auto" and "dtype" in loras[0].meta:  # the first run's, as for its model
        dtype = str(loras[0].meta["dtype"])
    base = Personalized.load(
        None,
        model=model or str(loras[0].meta.get("model_id") or "toy"),
        backbone=None if model else str(loras[0].meta["backbone"]),
        device=device,
        dtype=dtype,
        log=log,
    )
    for r, lora in zip(runs, loras):
        for w in check_compatible(lora, base.backbone.info, r):
            log(f"warning: {w}")
    n = add_weighted_sum(base.backbone.transformer, loras, weights)
    base.run_fps = loras[0].meta.get("fps")  # the videos play at the first run's rate, as for its model
    log(f"compose: weighted sum of {len(loras)} runs (weights {weights}) merged into {n} modules")
    return base, tokens
