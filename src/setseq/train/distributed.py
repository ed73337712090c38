"""Data-parallel training across processes (`accelerate launch` or `torchrun`), same result as one process.

Every micro-batch of a step is already a pure function of (seed, stage, step, micro): its samples, noise,
timesteps, token masks and DropConnect masks (`setseq.train.loop.step_generator`). So data parallelism needs
no sampler: with P processes, process r runs the micro-batches k of each step with k % P == r, then one
all-reduce sums the LoRA gradients (each already divided by the accumulation count) and the step's loss.
Every process then clips and steps the same gradients from the same weights, so the weights stay identical
on every process and equal to those of a one-process run with the same micro_batch, up to float summation
order. The gradients are small (the LoRA's, not the model's), so one flat all-reduce per step is all the
communication; the frozen base model is replicated, as in DDP, unless `model.fsdp=true` shards it
(`setseq.shard`).

Process 0 alone writes: the cache (the others wait and then read it), checkpoints, logs, samples and the
outputs. With one process (no launcher), everything here is a no-op.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from setseq.errors import SetseqError


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

    def sum_gradients(self, params: list[torch.nn.Parameter], loss: float) -> float:
        """Sum every parameter's gradient and `loss` over the processes, in one flat all-reduce; returns the
        summed loss. Parameters without a gradient count as zero."""
        if self.world == 1:
            return loss
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        dev = grads[0].device if grads else torch.device("cpu")
        flat = torch.cat([*(g.reshape(-1).float() for g in grads), torch.tensor([loss], device=dev)])
        torch.distributed.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(g).to(g.dtype)
            offset += n
        return float(flat[-1])


SINGLE = Processes()


def launched_world() -> int:
    """The number of processes a launcher started (1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_processes(device: str) -> Processes:
    """Join the process group a launcher set up (`accelerate launch`, `torchrun`): NCCL on GPUs, gloo on CPU.
    `device` is `model.device`; each GPU process trains on its own GPU (its local rank)."""
    if launched_world() == 1:
        return SINGLE
    from accelerate import PartialState

    cpu = device == "cpu" or not torch.cuda.is_available()
    if device.startswith("cuda:"):
        raise SetseqError(
            f"model.device={device} pins every process to one GPU",
            "use model.device=auto (each process takes the GPU of its local rank)",
        )
    state = PartialState(cpu=cpu)
    if state.num_processes != launched_world():
        raise SetseqError(
            f"the launcher started {launched_world()} processes but only {state.num_processes} joined",
            "launch with `accelerate launch --multi_gpu --num_processes N` or `torchrun --nproc_per_node N`",
        )
    return Processes(state.process_index, state.num_processes, torch.device("cpu") if cpu else state.device)


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
