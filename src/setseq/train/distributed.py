"""Data-parallel training across processes (`accelerate launch` or `torchrun`), same result as one process.

Every micro-batch of a step is already a pure function of (seed, stage, step, micro): its samples, noise,
timesteps, token masks and DropConnect masks (`setseq.train.loop.step_generator`). So data parallelism needs
no sampler: with P processes, process r runs the micro-batches k of each step with k % P == r. torch's engine
(FSDP2's `replicate`, set up by `parallelize`) sums the LoRA gradients (each already divided by the
accumulation count) in the backward of a process's last micro-batch. Every process then clips and steps the
same gradients from the same weights, so the weights stay identical on every process and equal to those of
a one-process run with the same micro_batch, up to float summation order. The frozen base model is
replicated, as in DDP, unless `model.fsdp=true` shards it with FSDP2 (`parallelize`). Besides the engine's own
communication, one float per step (the loss) is summed for logging and for stopping every process together.

Wan 2.2 A14B (two experts, each sample run by the expert of its timestep) under `model.fsdp`: every process
must run the same expert at the same time, or their all-gathers would not match and they would wait on each
other forever. Decided: per-step routing (`model.expert_routing=step`, what `auto`, the default, resolves to
under `model.fsdp`). Each optimizer step draws ONE expert for all its samples on all processes, from a
generator seeded by (seed, stage, step) alone, with probability equal to that expert's share of the
timestep distribution (for the high-noise expert, with u uniform and sigma = shift(u): 1 - unshift(boundary),
0.30 at shift 3 and boundary 0.875, 0.63 at shift 12); each sample's
timestep is then drawn within that expert's range, so the distribution of a sample's timestep is unchanged
(`setseq.train.loop.step_expert`; tested statistically). What changes: a step's batch no longer mixes
experts, so each expert's LoRA is stepped in its share of the steps, with a whole batch each time. Without
`model.fsdp`, `auto` keeps per-sample routing (A14B runs from before are unchanged; data parallel works with
either), and a one-process run compared with a sharded one must route per step too (`model.fsdp=true` or
`model.expert_routing=step` there). Each expert is an FSDP2 root of its own (its blocks the units), since
the pipeline calls each directly when it generates.

Under `model.fsdp` only process 0 reads the DiT's weights: the others build it on the meta device
(`setseq.backbones.base.dit_on_meta`), take process 0's parameter dtypes and buffers, and once sharded
receive their rows of its weights (`_as_process_0`, `_fill_from_process_0`), so a node holds one whole DiT in
host memory, not one per process.

Process 0 alone writes: the cache (the others wait and then read it), checkpoints, logs, samples and the
outputs. With one process (no launcher), everything here is a no-op, except `model.fsdp_offload`: FSDP2's
CPU offload in one process, on a one-process group (`_offload`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from setseq import lora as L
from setseq.config import ModelConfig
from setseq.errors import SetseqError
from setseq.memory import Engine, transformer_blocks
from setseq.offload import dits
from setseq.runtime import resolve_device


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None  # the device this process trains on; None: model.device decides

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mine(self, micro: int) -> bool:
        """Whether this process runs micro-batch `micro` of a step."""
        return micro % self.world == self.rank

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Process 0 runs the block first (it writes caches); the others run it after, reading them."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def sum_scalar(self, value: float) -> float:
        """`value` summed over the processes (itself in one process). For the step's loss, which is logged and
        whose NaN on any process must stop every process at the same step: control flow, not training math.
        One float per step, as torchtitan's loss logging does; the gradients are reduced by FSDP2 (`parallelize`)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return float(t[0])

    def all_true(self, flag: bool) -> bool:
        """Whether `flag` holds on every process (so that all of them stop, or go on, together)."""
        return self.sum_scalar(0.0 if flag else 1.0) == 0.0


SINGLE = Processes()


def parallelize(model: torch.nn.Module, procs: Processes, mc: ModelConfig | None = None) -> Engine:
    """Hand `model` (the DiT, LoRA injected) to torch's distributed engine; returns how it holds the DiT (what
    the memory estimate needs, `memory.Engine`). A no-op in one process.

    Without `model.fsdp`: FSDP2's `replicate` (DDP's successor) on the LoRA parameters: their gradients are
    all-reduced in backward, overlapped with it. The frozen base weights are left out (`ignored_params`):
    nothing of theirs is reduced, and they stay plain tensors.

    With `model.fsdp`: FSDP2's `fully_shard`, one unit per transformer block plus the root (embedders, heads,
    norms; Wan 2.2 A14B: each expert's blocks, and each expert a root). Every parameter is a DTensor holding 1/P of its rows on each process; a block's whole weights are
    all-gathered before it runs (prefetched `model.fsdp_prefetch` blocks ahead) and freed after
    (`model.fsdp_reshard_after_forward`). The LoRA parameters are sharded with their block rather than
    replicated: they then ride in the block's own all-gather and reduce-scatter (no second engine or
    hand-written reduction for them) and their AdamW moments are sharded too; they are small either way.
    `lora.FusedLinear` sees the block's gathered weight as a plain tensor, as without sharding.

    The engine sums instead of averaging (divide factor 1): each process's micro-batch losses are already
    divided by the stage's accumulation count, so the sum over processes is the one-process gradient.
    Gradient sync is turned off for all but a process's last micro-batch of a step (`sync_gradients`).
    Under `replicate`, parameters a process did not use in a step (a Wan 2.2 A14B expert none of its samples
    ran, with per-sample routing) count as zero.

    With `model.fsdp_offload` (one process): `fully_shard` as above on a one-process mesh, with FSDP2's
    `CPUOffloadPolicy` (`_offload`)."""
    if mc is not None and mc.fsdp_offload:
        return _offload(model, procs, mc)
    if procs.world == 1:
        return Engine()
    try:  # FSDP2's replicate and the reduction settings used here are recent (tested with torch 2.13)
        from torch.distributed._composable.replicate_with_fsdp import replicate
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule

        FSDPModule.set_reduce_scatter_unused_params  # noqa: B018  (present in the torch setseq needs)
    except (ImportError, AttributeError):
        raise SetseqError(
            f"training in several processes needs FSDP2's replicate, which torch {torch.__version__} lacks",
            "install the torch setseq is tested with (2.13), or train in one process",
        ) from None

    device = procs.device or torch.device("cpu")
    if mc is not None and mc.fsdp:
        whole, buffers = _as_process_0(model, procs)
        engine = _fully_shard(
            model, init_device_mesh(device.type, (procs.world,), mesh_dim_names=("shard",)), mc
        )
        _fill_from_process_0(model, whole, buffers, procs, device)
        return engine
    lora = {id(p) for layer in L.get_layers(model).values() for p in (layer.down, layer.up, layer.motion)}
    ignored = {p for p in model.parameters() if id(p) not in lora}
    mesh = init_device_mesh(device.type, (procs.world,), mesh_dim_names=("replicate",))
    replicate(model, mesh=mesh, ignored_params=ignored)
    _sum_reductions(model, unused_as_zero=True)
    return Engine()


def _as_process_0(
    model: torch.nn.Module, procs: Processes
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Before sharding. Process 0 loaded the DiT's weights; the others built it with parameters on the meta
    device (`setseq.backbones.base.dit_on_meta`). Process 0 sends every process its parameters' shapes and
    dtypes (under bfloat16 diffusers keeps some modules in float32) and its buffers (small; not all are in a
    state dict, e.g. Wan's rotary tables), and each gives its meta parameters those dtypes, so that every
    process shards the same tensors. Returns process 0's whole parameters (none elsewhere) and its buffers,
    for `_fill_from_process_0`."""
    sent: list = [None, None]
    if procs.is_main:
        sent = [
            {n: (tuple(p.shape), p.dtype) for n, p in model.named_parameters()},
            {n: b.detach().cpu() for n, b in model.named_buffers()},
        ]
    torch.distributed.broadcast_object_list(sent, src=0)
    shapes, buffers = sent
    if procs.is_main:
        return {n: p.detach() for n, p in model.named_parameters()}, buffers
    params = dict(model.named_parameters())
    if params.keys() != shapes.keys() or dict(model.named_buffers()).keys() != buffers.keys():
        raise SetseqError(
            f"process {procs.rank} built a DiT whose parameters are not those of process 0",
            "launch every process with the same --model, config and setseq version",
        )
    with torch.no_grad():
        for name, p in params.items():
            shape, dtype = shapes[name]
            if p.is_meta and (tuple(p.shape), p.dtype) != (shape, dtype):
                p.data = torch.empty(shape, dtype=dtype, device="meta")
    return {}, buffers


def _fill_from_process_0(
    model: torch.nn.Module,
    whole: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    procs: Processes,
    device: torch.device,
) -> None:
    """After sharding: each process's shard of each of process 0's parameters, scattered from process 0 one
    tensor at a time (torch's `distribute_tensor` from rank 0: each process receives only its rows), and process
    0's buffers. A process whose DiT was on the meta device first gets storage for its shards (`to_empty`).
    fp8 weights travel as bytes (gloo has no float8 type)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not procs.is_main and any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        model.to_empty(device=device)
    with torch.no_grad():
        if not procs.is_main:
            for name, b in model.named_buffers():
                b.data = buffers[name].to(device)
        for name, p in model.named_parameters():  # the same order on every process
            assert isinstance(p, DTensor), f"{name} is not sharded"  # fully_shard made every one a DTensor
            full = (
                whole[name].to(device)
                if procs.is_main
                else torch.empty(p.shape, dtype=p.dtype, device=device)
            )
            as_bytes = p.dtype.itemsize == 1 and p.dtype.is_floating_point
            full = full.view(torch.uint8) if as_bytes else full
            shard = distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=0).to_local()
            p.to_local().copy_(shard.view(p.dtype) if as_bytes else shard)
            del full


def _offload(model: torch.nn.Module, procs: Processes, mc: ModelConfig) -> Engine:
    """FSDP2's CPUOffloadPolicy in one process, the alternative to block swap (`setseq.offload`) for a DiT
    larger than the card: every base weight of the DiT (in the units of `model.fsdp`) stays in host memory,
    pinned on a GPU, and is copied to the device while its block runs (prefetched `model.fsdp_prefetch` blocks
    ahead) and freed after. The LoRA parameters are left out of FSDP2 (`ignored_params`) and moved to the
    device: in one process there is nothing to reduce, and their optimizer step, DropConnect masks and
    gradients stay on the device as without offload. FSDP2 needs a process group even for one process: a
    one-process group on an in-memory store (`close_processes` leaves it)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy

    assert procs.world == 1, "refused in setseq.train.setup.load_model"
    device = procs.device or resolve_device(mc.device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(store=torch.distributed.HashStore(), rank=0, world_size=1)
    lora = [p for layer in L.get_layers(model).values() for p in (layer.down, layer.up, layer.motion)]
    mesh = init_device_mesh(device.type, (1,), mesh_dim_names=("offload",))
    policy = CPUOffloadPolicy(pin_memory=device.type == "cuda")
    engine = _fully_shard(model, mesh, mc, offload_policy=policy, ignored_params=set(lora))
    with torch.no_grad():
        for p in lora:
            p.data = p.data.to(device)
    return dataclasses.replace(engine, offloaded=True)  # no base weight stays on the device


def _fully_shard(
    model: torch.nn.Module,
    mesh,
    mc: ModelConfig,
    offload_policy=None,
    ignored_params: set[torch.nn.Parameter] | None = None,
) -> Engine:
    """FSDP2 on `model`: each block of each DiT a unit, then the DiT itself; see `parallelize`.

    Wan 2.2 A14B's two experts are two DiTs, each its own FSDP2 root (the pipeline calls each directly when
    it generates the prior and sample videos; `WanExperts` calls the one a step trains). Every process must
    run the same expert at the same time, or their all-gathers would not match and they would wait forever:
    so only per-step routing (`model.expert_routing=step`, the default under model.fsdp; see
    `setseq.train.loop.step_expert`) is allowed, which gives every sample of a step, on every process, the
    same expert. An expert a step does not run then gathers nothing, and its LoRA has no gradient that step."""
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    experts = dits(model)
    if len(experts) > 1 and not mc.step_routing and mesh.size() > 1:
        raise SetseqError(
            "model.fsdp=true with model.expert_routing=sample on a model of several experts (Wan 2.2 A14B): "
            "each sample would run the expert of its timestep, so the processes would not gather the same blocks",
            "use model.expert_routing=step (or auto, the default), which trains one expert per step on every process",
        )
    dtypes = {"auto": None, "bfloat16": torch.bfloat16, "float32": torch.float32}
    policy = MixedPrecisionPolicy(
        param_dtype=dtypes[mc.fsdp_param_dtype], reduce_dtype=dtypes[mc.fsdp_reduce_dtype]
    )
    kw = {
        "mesh": mesh,
        "reshard_after_forward": mc.fsdp_reshard_after_forward,
        "mp_policy": policy,
        "offload_policy": offload_policy or OffloadPolicy(),
        "ignored_params": ignored_params,
    }
    for dit in experts:
        blocks = transformer_blocks(dit)
        for block in blocks:
            fully_shard(block, **kw)
        fully_shard(dit, **kw)
        units: list[FSDPModule] = blocks  # type: ignore[assignment]  (fully_shard made them FSDPModules)
        if mc.fsdp_prefetch:
            k = mc.fsdp_prefetch
            for i, unit in enumerate(units):
                unit.set_modules_to_forward_prefetch(units[i + 1 : i + 1 + k])
                unit.set_modules_to_backward_prefetch(units[max(0, i - k) : i][::-1])
    # A diffusers DiT returns a view (its unpatchify); FSDP2 warns that an in-place op on it would skip the
    # backward gather. The backbones use it out of place (the tests compare gradients with the plain DiT's).
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    _sum_reductions(model, unused_as_zero=False)
    return Engine(sharded=True, gathered=1 + mc.fsdp_prefetch, param_dtype=policy.param_dtype)


def describe_engine(model: torch.nn.Module, procs: Processes, mc: ModelConfig) -> str:
    """One log line: how FSDP2 holds the DiT `parallelize` handed it (sharded, or offloaded to the host)."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    units = sum(isinstance(m, FSDPModule) for m in model.modules())
    if not mc.fsdp_offload:
        return f"fsdp: the DiT is sharded across {procs.world} processes by FSDP2 ({units} units)"
    held = sum(p.to_local().nbytes for p in model.parameters() if isinstance(p, DTensor))
    return (
        f"fsdp offload: the DiT's base weights ({held / 2**30:.2f} GiB) stay in host memory; FSDP2 copies "
        f"each of its {units} units to the device while it runs"
    )


def _sum_reductions(model: torch.nn.Module, unused_as_zero: bool) -> None:
    """Every FSDP2 unit of `model` reduces gradients by a plain sum (SUM works on gloo and NCCL alike)."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)
            if unused_as_zero:
                m.set_reduce_scatter_unused_params(True, recurse=False)


def sync_gradients(model: torch.nn.Module, enabled: bool) -> None:
    """Whether the next backward reduces the gradients across processes (only a step's last micro-batch does;
    the others accumulate locally). A no-op on a model `parallelize` left alone."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():  # every unit: those of both experts of Wan 2.2 A14B (two FSDP2 roots)
        if isinstance(m, FSDPModule):
            m.set_requires_gradient_sync(enabled, recurse=False)


def launched_world() -> int:
    """The number of processes a launcher started (1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_processes(device: str) -> Processes:
    """Join the process group a launcher set up (`accelerate launch`, `torchrun`): NCCL on GPUs, gloo on CPU.
    `device` is `model.device`; each GPU process trains on its own GPU (its local rank)."""
    if launched_world() == 1:
        return SINGLE
    # (heavy to import: loaded where used)
    from accelerate import PartialState

    cpu = device == "cpu" or not torch.cuda.is_available()
    if device.startswith("cuda:"):
        raise SetseqError(
            f"model.device={device} pins every process to one GPU",
            "use model.device=auto (each process takes the GPU of its local rank)",
        )
    # How long this process waits for all the others to join (every node's processes); torch's default
    # unless SETSEQ_RENDEZVOUS_TIMEOUT_S says otherwise.
    kwargs = {}
    wait = os.environ.get("SETSEQ_RENDEZVOUS_TIMEOUT_S")
    if wait:
        kwargs["timeout"] = datetime.timedelta(seconds=float(wait))
    try:
        state = PartialState(cpu=cpu, **kwargs)
    except (RuntimeError, ValueError, OSError) as exc:  # torch's DistStoreError, DistNetworkError among them
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        raise SetseqError(
            f"process {os.environ.get('RANK', '?')} of {launched_world()} could not join the others at {where} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'})",
            "start every node with the same --num_machines, --main_process_ip/--main_process_port (torchrun: "
            "--nnodes, --rdzv-endpoint), a distinct --machine_rank, and an open port; "
            "SETSEQ_RENDEZVOUS_TIMEOUT_S sets how long to wait",
        ) from None
    if state.num_processes != launched_world():
        raise SetseqError(
            f"the launcher started {launched_world()} processes but only {state.num_processes} joined",
            "launch with `accelerate launch --multi_gpu --num_processes N` or `torchrun --nproc_per_node N`",
        )
    return Processes(state.process_index, state.num_processes, torch.device("cpu") if cpu else state.device)


def close_processes() -> None:
    """Leave the process group `init_processes` joined (nothing in one process). torch asks for this before
    exit: a group left to the interpreter's teardown can abort a process ("terminate called without an
    active exception") after its work is done."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def launcher_asks_fsdp() -> bool:
    """Whether `accelerate launch` was given an FSDP config (`distributed_type: FSDP`, e.g. the shipped
    `configs/accelerate/fsdp2-*.yaml`): that turns `model.fsdp` on. Only FSDP2 is setseq's engine; the FSDP
    settings themselves are setseq's `model.fsdp_*` fields, not the launcher's."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() != "true":
        return False
    if os.environ.get("FSDP_VERSION", "1") != "2":
        raise SetseqError(
            f"the accelerate config asks for FSDP version {os.environ.get('FSDP_VERSION', '1')}, but setseq "
            "shards with FSDP2",
            "set fsdp_config: {fsdp_version: 2} (as configs/accelerate/fsdp2-*.yaml do), or launch with "
            "--multi_gpu and model.fsdp=true",
        )
    return True


def check_split(stage: int, batch_size: int, micro_batch: int | None, world: int) -> int:
    """The micro_batch a stage uses with `world` processes: as configured when its micro-batches per step
    divide among the processes, else (micro_batch unset) batch_size / world; refused otherwise."""
    if world == 1:
        return micro_batch or batch_size
    if micro_batch is None and batch_size % world == 0:
        return batch_size // world
    micro = micro_batch or batch_size
    if (batch_size // micro) % world:
        fits = [m for m in range(micro, 0, -1) if batch_size % m == 0 and (batch_size // m) % world == 0]
        fix = (
            f"set stage{stage}.micro_batch={fits[0]}"
            if fits
            else f"set stage{stage}.batch_size to a multiple of {world}"
        )
        raise SetseqError(
            f"stage {stage} has {batch_size // micro} micro-batch(es) per step (batch_size {batch_size}, "
            f"micro_batch {micro}), which {world} processes cannot share equally",
            fix,
        )
    return micro
