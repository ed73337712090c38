"""Block swap (`model.block_swap`, setseq.offload): swapped linear weights stay in host memory and reach the
device only inside their op.

This machine has no GPU, so the device here is `meta`: every tensor the step computes with is on meta, the
swapped weights are real CPU tensors, and an op that met a swapped weight without copying it would fail with a
device mismatch. A full CPU training run with block swap is in test_train_wan.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from setseq import lora as L
from setseq import offload
from setseq.backbones.registry import load_backbone
from setseq.errors import SetseqError
from setseq.memory import flash_attention_on_meta, meta_inputs
from setseq.tools.testing import assert_close_to_scale

META = torch.device("meta")


def _swapped_tiny_wan(model_dir, n: int, device: torch.device = META):
    bb = load_backbone("wan", str(model_dir))
    with torch.no_grad():
        prompt = bb.encode_prompt(["a red circle moving left"])
        shape = tuple(bb.encode_video(torch.zeros(1, 9, 3, 32, 32)).shape[1:])
    plan = offload.stream_blocks(bb.transformer, n, device)
    offload.place(bb, device, plan)
    return bb, plan, prompt, shape


def _step(bb, prompt, shape) -> None:
    noisy, sigmas, meta_prompt = meta_inputs(bb, 2, shape, prompt)
    with flash_attention_on_meta():
        bb.predict(noisy, sigmas, meta_prompt).float().square().mean().backward()


def test_swapped_weights_stay_on_the_host_and_stream_in_forward_and_backward(tiny_wan_dir):
    bb, plan, prompt, shape = _swapped_tiny_wan(tiny_wan_dir, 1)
    model = bb.transformer
    layers = L.inject(model, L.LoraSpec(4, 4.0, "down", tuple(bb.info.lora_targets)))
    L.set_stage(model, 1)
    model.train()

    last = offload.swappable_blocks(model, 1)[0]
    swapped = [m for m in last.modules() if isinstance(m, offload.StreamedLinear)]
    linears = [m for m in last.modules() if isinstance(m, nn.Linear)]
    assert swapped and len(swapped) == len(linears)  # every linear of the block, targeted or not
    assert {id(m.weight) for m in swapped} == {id(w) for w in plan.weights}
    assert plan.host_bytes == sum(w.numel() * w.element_size() for w in plan.weights) > 0
    # Swapped weights on the host, everything else (their LoRA, biases, norms, other blocks) on the device.
    host = {id(w) for w in plan.weights}
    for name, p in [*model.named_parameters(), *bb.text_encoder.named_parameters()]:
        assert p.device == (torch.device("cpu") if id(p) in host else META), name
    in_last = [lay for lay in layers.values() if lay.base in swapped]
    assert in_last and all(lay.down.device == META for lay in in_last)

    _step(bb, prompt, shape)  # forward + backward: a weight met uncopied would raise a device mismatch
    for lay in layers.values():
        assert lay.up.grad is not None and lay.down.grad is not None
    assert all(w.device.type == "cpu" and w.grad is None for w in plan.weights)


def test_the_meta_check_fails_on_a_host_weight_that_is_not_streamed(tiny_wan_dir):
    """The test above can fail: a host weight used by a plain linear meets meta activations and raises."""
    bb, _plan, prompt, shape = _swapped_tiny_wan(tiny_wan_dir, 1)
    first = offload.swappable_blocks(bb.transformer, 2)[0]  # not swapped
    plain = next(m for m in first.modules() if type(m) is nn.Linear)
    plain.weight = nn.Parameter(
        torch.zeros(plain.weight.shape), requires_grad=False
    )  # host, applied by F.linear
    with pytest.raises((RuntimeError, NotImplementedError)):
        _step(bb, prompt, shape)


def test_block_swap_on_cpu_gives_the_same_prediction_and_gradients(tiny_wan_dir):
    """With a trained-looking LoRA (non-zero up and motion) in every targeted layer, the swapped DiT gives the
    plain one's prediction and the same LoRA gradients: the streamed path runs the LoRA, not only the base."""
    plain = load_backbone("wan", str(tiny_wan_dir))
    bb, plan, prompt, shape = _swapped_tiny_wan(tiny_wan_dir, 2, torch.device("cpu"))
    assert plan.blocks == 2 and len(plan.weights) > 0
    spec = L.LoraSpec(4, 4.0, "down", tuple(bb.info.lora_targets))
    both = []
    for model in (plain.transformer, bb.transformer):
        layers = L.inject(model, spec, seed=3)
        gen = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for lay in layers.values():  # up and motion start at zero: give them values
                lay.up.copy_(0.5 * torch.randn(lay.up.shape, generator=gen))
                lay.motion.copy_(0.5 * torch.randn(lay.motion.shape, generator=gen))
        L.set_stage(model, 1)
        both.append(layers)
    streamed = [lay for lay in both[1].values() if isinstance(lay.base, offload.StreamedLinear)]
    assert streamed  # the swapped blocks carry LoRA layers
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    sig = torch.tensor([0.3, 0.8])
    batch = type(prompt)(prompt.embeds.expand(2, -1, -1), prompt.mask.expand(2, -1), None)
    out = [b.predict(x, sig, batch) for b in (plain, bb)]
    assert_close_to_scale(out[1], out[0], rtol=1e-3)
    with torch.no_grad():  # the LoRA moves the prediction, so the equality above is about it too
        L.set_scales(plain.transformer, 0.0, 0.0)
        base_only = plain.predict(x, sig, batch)
        L.set_scales(plain.transformer, 1.0, 1.0)
    assert (base_only - out[0]).abs().max() > 0.05 * out[0].abs().max()
    for o in out:
        o.float().square().mean().backward()
    for name, lay in both[0].items():
        assert lay.up.grad is not None and lay.up.grad.abs().max() > 0, name
        assert_close_to_scale(both[1][name].up.grad, lay.up.grad, rtol=1e-3, name=name)
        assert_close_to_scale(both[1][name].down.grad, lay.down.grad, rtol=1e-3, name=name)


def test_block_swap_count_is_checked(tiny_wan_dir):
    bb = load_backbone("wan", str(tiny_wan_dir))
    with pytest.raises(SetseqError, match="block_swap=3 but the DiT has 2 blocks"):
        offload.stream_blocks(bb.transformer, 3, torch.device("cpu"))
    from setseq.config import ModelConfig

    with pytest.raises(ValueError, match="block_swap"):
        ModelConfig(block_swap=-1)


def test_refusal_names_the_block_swap_that_fits(tiny_wan_dir, monkeypatch):
    """On a GPU-like device (meta) too small for the DiT's weights, the refusal names model.block_swap=N,
    and with those N blocks swapped the same estimate fits."""
    from setseq.config_load import resolve_config
    from setseq.data.cache import EncodedConcept
    from setseq.memory import GiB, estimate_training_memory
    from setseq.train.memory_plan import check_memory
    from setseq.train.setup import lora_spec

    flags = {"model": {"backbone": "wan", "path": str(tiny_wan_dir)}, "data": {"video": "x.mp4", "frames": 9}}
    over = ["stage1.batch_size=1", "stage2.batch_size=1", "train.gradient_checkpointing=true"]
    over += ["lora.rank=4"]
    cfg = resolve_config(None, flags, over)

    def setup(n: int):
        bb, _plan, prompt, shape = _swapped_tiny_wan(tiny_wan_dir, n)
        spec = lora_spec(cfg, bb)
        bb.transformer.enable_gradient_checkpointing()
        L.inject(bb.transformer, spec)
        data = EncodedConcept(
            torch.zeros(4, shape[0], 1, *shape[2:]), torch.zeros(1, *shape), prompt, prompt, "k"
        )
        return bb, spec, data

    def total(bb, spec, data) -> int:  # the larger of the two stages' estimates
        return max(
            estimate_training_memory(
                bb, spec, tuple(lat.shape[1:]), prompt, micro_batch=1, stage=stage, dropconnect=0.5,
                gradient_checkpointing=True,
            ).total
            for stage, lat, prompt in ((1, data.set_latents, data.static), (2, data.clip_latents, data.motion))
        )  # fmt: skip

    bb0, spec0, data0 = setup(0)
    full = total(bb0, spec0, data0)
    linear = sum(  # every block's linear weights
        m.weight.numel() * m.weight.element_size()
        for b in offload.swappable_blocks(bb0.transformer, 2)
        for m in b.modules()
        if isinstance(m, nn.Linear)
    )
    # what the refusal counts as saved: the weights less one streamed copy on the device
    assert 0 < offload.device_linear_bytes(bb0.transformer, 1, META)
    assert (
        offload.device_linear_bytes(bb0.transformer, 1, META)
        < offload.device_linear_bytes(bb0.transformer, 2, META)
        < linear
    )
    # Room for all but 80% of the linear weights: fp8 (3/4 of the targeted ones) and one block (half) are not
    # enough, both blocks are.
    monkeypatch.setenv("SETSEQ_DEVICE_MEMORY_GB", str((full - 0.8 * linear) / 0.95 / GiB))
    with pytest.raises(SetseqError, match="needs about") as err:
        check_memory(cfg, bb0, spec0, data0, False, lambda s: None)
    assert "model.block_swap=2," in str(err.value)

    bb2, spec2, data2 = setup(2)
    assert total(bb2, spec2, data2) <= full - linear + offload_transient(bb2)
    check_memory(cfg, bb2, spec2, data2, False, lambda s: None)  # now it fits: no refusal


def offload_transient(bb) -> int:
    """What the estimate adds for one streamed weight's copy on the device (and its upcast)."""
    host = [
        m.weight
        for m in bb.transformer.modules()
        if isinstance(m, nn.Linear) and m.weight.device.type == "cpu"
    ]
    return max(w.numel() * (w.element_size() + bb.dtype.itemsize) for w in host)


def test_generate_with_block_swap_gives_the_same_video(tiny_wan_dir):
    """`setseq generate --block-swap N` (Personalized.load) streams the swapped blocks and samples the same
    video as the plain model (the same ops in forward)."""
    from setseq.infer.generate import GenerateOptions, Personalized

    opts = GenerateOptions(steps=2, seed=0, frames=5, height=32, width=32)
    videos = []
    for n in (0, 2):
        pm = Personalized.load(None, model=str(tiny_wan_dir), backbone="wan", device="cpu", block_swap=n)
        swapped = [m for m in pm.backbone.transformer.modules() if isinstance(m, offload.StreamedLinear)]
        assert bool(swapped) == bool(n)
        videos.append(pm.generate("a red circle moving left", opts))
    torch.testing.assert_close(videos[1], videos[0], rtol=0, atol=0)
